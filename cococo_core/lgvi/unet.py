"""The LGVI / LGVI-I video U-Net (official ``RoviModel``; spec §1.1-1.7), key-compatible with the
Hugging Face ``jianzongwu/lgvi`` and ``jianzongwu/lgvi-i`` ``unet/`` folders.

SD-1.x topology on frames batched as (B*F, C, H, W): convolutions, spatial and cross attention run per
frame, while the ResNet GroupNorms and ``conv_norm_out`` pool their statistics over all frames of each
video (official ``nn.GroupNorm`` on 5-D tensors; :mod:`.video_norm`). Temporal self-attention follows
cross-attention in every transformer block; the removal-mask decoder is fed by the three
cross-attention up blocks. Video conditioning:

* ``in_channels == 8``: ``conv_in(cat[z_t, c])`` (InstructPix2Pix / MagicBrush style);
* ``in_channels == 4``: ``conv_in(z_t) + condition_conv_in(c)`` (paper eq. 2; zero-initialised).

Down/up-samplers and the timestep embedding are diffusers' own 2-D modules (the official
``InflatedConv3d`` is a per-frame ``Conv2d`` with the same keys); the ResNet block is :mod:`.resnet`.
"""
from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..models.chunking import chunk_layers
from .layers import VideoTransformer
from .mask_decoder import MaskDecoder
from .resnet import VideoResnetBlock
from .unet_config import LGVIUNetConfig
from .video_norm import FramePooledGroupNorm


def _resnet(config: LGVIUNetConfig, channels_in: int, channels_out: int, scale: float = 1.0) -> VideoResnetBlock:
    return VideoResnetBlock(
        channels_in, channels_out, config.block_out_channels[0] * 4, config.norm_num_groups, config.norm_eps, scale
    )


def _transformer(config: LGVIUNetConfig, channels: int, heads: int) -> VideoTransformer:
    return VideoTransformer(
        channels, heads, config.cross_attention_dim, config.norm_num_groups, config.temp_attn, config.upcast_attention
    )


class DownBlock(nn.Module):
    def __init__(self, config, channels_in, channels_out, heads, cross_attention: bool, downsample: bool):
        super().__init__()
        layers = config.layers_per_block
        self.resnets = nn.ModuleList(_resnet(config, channels_in if i == 0 else channels_out, channels_out) for i in range(layers))
        if cross_attention:
            self.attentions = nn.ModuleList(_transformer(config, channels_out, heads) for _ in range(layers))
        else:
            self.attentions = None
        if downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(channels_out, use_conv=True, out_channels=channels_out, padding=config.downsample_padding, name="op")]
            )
        else:
            self.downsamplers = None

    def forward(self, x, temb, context, num_frames):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, config, channels, heads):
        super().__init__()
        scale = config.mid_block_scale_factor
        self.resnets = nn.ModuleList([_resnet(config, channels, channels, scale), _resnet(config, channels, channels, scale)])
        self.attentions = nn.ModuleList([_transformer(config, channels, heads)])

    def forward(self, x, temb, context, num_frames):
        x = self.resnets[0](x, temb, num_frames)
        x = self.attentions[0](x, context, num_frames)
        return self.resnets[1](x, temb, num_frames)


class UpBlock(nn.Module):
    def __init__(self, config, channels_in, channels_out, channels_prev, heads, cross_attention: bool, upsample: bool):
        super().__init__()
        layers = config.layers_per_block + 1
        self.resnets = nn.ModuleList(
            _resnet(
                config,
                (channels_prev if i == 0 else channels_out) + (channels_in if i == layers - 1 else channels_out),
                channels_out,
            )
            for i in range(layers)
        )
        if cross_attention:
            self.attentions = nn.ModuleList(_transformer(config, channels_out, heads) for _ in range(layers))
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(channels_out, use_conv=True, out_channels=channels_out)]) if upsample else None

    def forward(self, x, skips, temb, context, num_frames, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb, num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class LGVIUNet(nn.Module):
    """eps-prediction video U-Net: ``forward(z_t, t, context, condition) -> (eps, mask or None)``."""

    def __init__(self, config: LGVIUNetConfig):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        heads = config.heads()
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        if config.in_channels == 4:
            self.condition_conv_in = nn.Conv2d(4, channels[0], 3, padding=1)
            nn.init.zeros_(self.condition_conv_in.weight)
            nn.init.zeros_(self.condition_conv_in.bias)
        else:
            self.condition_conv_in = None
        self.time_proj = Timesteps(channels[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], channels[0] * 4)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(config.down_block_types):
            self.down_blocks.append(
                DownBlock(
                    config, channels[max(i - 1, 0)], channels[i], heads[i],
                    cross_attention=kind.startswith("CrossAttn"), downsample=i < len(channels) - 1,
                )
            )
        self.mid_block = MidBlock(config, channels[-1], heads[-1])
        reversed_channels, reversed_heads = channels[::-1], heads[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(config.up_block_types):
            self.up_blocks.append(
                UpBlock(
                    config,
                    channels_in=reversed_channels[min(i + 1, len(channels) - 1)],
                    channels_out=reversed_channels[i],
                    channels_prev=reversed_channels[max(i - 1, 0)],
                    heads=reversed_heads[i],
                    cross_attention=kind.startswith("CrossAttn"),
                    upsample=i < len(channels) - 1,
                )
            )
        self.conv_norm_out = FramePooledGroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)
        if config.mask_decoder_type == "MaskDecoder":
            self.mask_decoder = MaskDecoder(list(reversed_channels[1:]))
        else:
            self.mask_decoder = None

    @property
    def frame_chunk(self) -> int | None:
        """Frames (of the B·F in a call) that the per-frame attention and feed-forward layers process at a
        time; None (default): all at once. Only the transformer blocks' spatial self-attention,
        cross-attention and GEGLU feed-forward are chunked: the resnets pool their GroupNorm statistics
        over all frames and the temporal attention mixes them, so they always see the whole call. The
        result is the same (:mod:`cococo_core.models.chunking`)."""
        return getattr(self, "_frame_chunk", None)

    @frame_chunk.setter
    def frame_chunk(self, chunk: int | None) -> None:
        chunk_layers(self.per_frame_layers(), chunk)
        self._frame_chunk = chunk

    def per_frame_layers(self) -> list[nn.Module]:
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        transformers = [t for block in blocks for t in (getattr(block, "attentions", None) or [])]
        return [layer for t in transformers for b in t.transformer_blocks for layer in (b.attn1, b.attn2, b.ff)]

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor,
        condition: torch.Tensor,
        *,
        return_mask: bool = False,
        mask_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sample, condition: (B, 4, F, h, w) latents; context: (B, L, D). Returns eps (B, 4, F, h, w)
        and, with ``return_mask`` (and a mask decoder), the removal-mask probabilities (B, 1, F, h, w)
        (their logits with ``mask_logits``)."""
        batch, _, num_frames, height, width = sample.shape
        x = _frames_to_batch(sample)
        c = _frames_to_batch(condition.to(sample.dtype))
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        if self.condition_conv_in is None:
            x = self.conv_in(torch.cat([x, c], dim=1))
        else:
            x = self.conv_in(x) + self.condition_conv_in(c)

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        temb = self.time_embedding(self.time_proj(t).to(self.dtype)).repeat_interleave(num_frames, dim=0)
        context = context.to(self.dtype).repeat_interleave(num_frames, dim=0)

        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, num_frames)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, context, num_frames)
        up_features = []
        for block in self.up_blocks:
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            upsample_size = skips[-1].shape[-2:] if skips and block.upsamplers is not None else None
            x = block(x, block_skips, temb, context, num_frames, upsample_size)
            if block.attentions is not None:
                up_features.append(x)
        eps = self.conv_out(self.conv_act(self.conv_norm_out(x, num_frames)))
        mask = None
        if return_mask and self.mask_decoder is not None:
            features = [f.to(self.mask_decoder.final_conv.weight.dtype) for f in up_features]
            mask = self.mask_decoder(features, num_frames, logits=mask_logits)
            mask = _batch_to_frames(mask, batch)
        return _batch_to_frames(eps, batch), mask


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    batch, channels, frames, height, width = x.shape
    return x.transpose(1, 2).reshape(batch * frames, channels, height, width)


def _batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    frames_batch, channels, height, width = x.shape
    return x.reshape(batch, frames_batch // batch, channels, height, width).transpose(1, 2)
