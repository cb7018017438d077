"""The CoCoCo video U-Net: SD-1.x-inpainting ``UNet2DConditionModel`` on B·F frames + motion modules.

Outside the motion modules the official 3-D U-Net is exactly the 2-D SD-inpainting U-Net run on a batch of
B·F frames (inflated convs and per-frame GroupNorms, text repeated per frame; spec §1.1), so the diffusers
model is reused as is. Motion modules (spec §1.2) are attached to its blocks as ``motion_modules``
ModuleLists, which makes the state-dict keys the official ones (``down_blocks.0.motion_modules.1.
temporal_transformer...``), and run by forward hooks:

* down/up blocks with spatial transformers: after each ``attentions[i]`` (resnet -> transformer -> motion);
* down/up blocks without: after each ``resnets[i]``;
* mid block: after ``attentions[0]`` (resnet0 -> attn -> motion -> resnet1).

The hook's output replaces the layer's output, so the motion output is what feeds the skips, and the
samplers (which run after all layers of a block) see it too. The count follows ``layers_per_block``
(2 down, 3 up, 1 mid: 21 for SD1.5). The frame count and the video-level text reach the hooks through a
per-call context set by :meth:`VideoUNet.forward`; the hooks refuse to run outside it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .chunking import set_frame_chunk
from .motion_module import MotionModule

INPAINT_CHANNELS = 9  # [4 noisy latents | 1 mask | 4 masked-image latents]
MOTION_MARKER = ".motion_modules."


@dataclass
class _VideoCall:
    frames: int | None = None
    text: torch.Tensor | None = None


@dataclass(frozen=True)
class MotionSite:
    """Where one block's motion modules go: ``prefix`` of its keys, the layers they follow, their widths."""

    prefix: str
    block: nn.Module
    layers: tuple[nn.Module, ...]
    channels: tuple[int, ...]


def motion_sites(unet: nn.Module) -> list[MotionSite]:
    """The blocks of a diffusers ``UNet2DConditionModel`` that get motion modules, in official order."""
    sites = []
    named = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    named.append(("mid_block", unet.mid_block))
    named += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    for prefix, block in named:
        attentions = getattr(block, "attentions", None) or []
        resnets = block.resnets
        if prefix == "mid_block":
            if len(attentions) != 1:
                raise ValueError(
                    f"the U-Net's mid block is {type(block).__name__} with {len(attentions)} attention layers; "
                    "CoCoCo needs the SD-1.x mid block (resnet, cross-attention, resnet)"
                )
            layers, widths = tuple(attentions), (resnets[0].out_channels,)
        else:
            layers = tuple(attentions) if len(attentions) else tuple(resnets)
            widths = tuple(r.out_channels for r in resnets)
        sites.append(MotionSite(prefix, block, layers, widths))
    return sites


def _replace_output(output, fn):
    """Apply ``fn`` to the hidden states inside a layer's output (tensor, tuple, or diffusers output)."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    if hasattr(output, "sample"):
        output.sample = fn(output.sample)
        return output
    raise TypeError(f"cannot insert a motion module after a layer returning {type(output).__name__}")


def _motion_hook(motion: MotionModule, call: _VideoCall, layer, args, output):
    if call.frames is None:
        raise RuntimeError(
            "this U-Net carries CoCoCo motion modules and must be called through its VideoUNet "
            "(sample of shape (B, 9, F, h, w)); calling the inner 2-D U-Net directly is not supported"
        )
    return _replace_output(output, lambda hidden: motion(hidden, frames=call.frames, text=call.text))


class VideoUNet(nn.Module):
    """CoCoCo 3-D U-Net: ``unet(sample, timestep, encoder_hidden_states) -> noise prediction``.

    ``sample`` (B, 9, F, h, w) in the official channel order [4 noisy | 1 mask | 4 masked-image latents],
    ``timestep`` a number, a 0-d tensor or a (B,) tensor, ``encoder_hidden_states`` (B, 77, D) CLIP last hidden
    states (one prompt per video). Returns (B, 4, F, h, w).

    Wraps (and takes over) a diffusers ``UNet2DConditionModel`` with 9 input channels: the motion modules are
    attached to its blocks, so ``video_unet.unet.state_dict()`` has the official key layout (the 2-D U-Net's keys
    plus 40 per motion module). ``motion_init="official"`` builds them as the official constructor does
    (default Linear init, zero ``proj_out``: each module starts as the identity); ``"empty"`` allocates nothing
    (meta tensors) for a caller that loads every motion tensor next (see :func:`load_motion_weights`).
    """

    def __init__(self, unet: nn.Module, *, motion_init: str = "official"):
        super().__init__()
        config = unet.config
        if config.in_channels != INPAINT_CHANNELS:
            raise ValueError(
                f"CoCoCo needs an SD-1.x *inpainting* U-Net with {INPAINT_CHANNELS} input channels "
                f"(4 noisy latents, 1 mask, 4 masked-image latents); this U-Net has {config.in_channels}. "
                "Load an inpainting checkpoint (e.g. stable-diffusion-v1-5-inpainting) as the base."
            )
        if motion_init not in ("official", "empty"):
            raise ValueError(f"motion_init must be 'official' or 'empty', got {motion_init!r}")
        text_dim = config.cross_attention_dim
        if not isinstance(text_dim, int):
            raise ValueError(f"per-block cross_attention_dim {text_dim!r} is not supported; SD-1.x uses one width")
        self.unet = unet
        self._frame_chunk = None
        self._call = _VideoCall()
        self._hooks = []
        first = next(unet.parameters())
        device = torch.device("meta") if motion_init == "empty" else first.device
        sites = motion_sites(unet)
        taken = [site.prefix for site in sites if hasattr(site.block, "motion_modules")]
        if taken:
            raise ValueError(f"{', '.join(taken)} already carry motion modules; wrap a plain UNet2DConditionModel")
        for site in sites:
            with torch.device(device):
                modules = nn.ModuleList([MotionModule(width, text_dim) for width in site.channels])
            site.block.motion_modules = modules.to(dtype=first.dtype)
            for layer, motion in zip(site.layers, modules):
                self._hooks.append(layer.register_forward_hook(functools.partial(_motion_hook, motion, self._call)))

    def release(self) -> nn.Module:
        """Detach the motion modules and hooks and give back the plain 2-D U-Net (this wrapper is then unusable)."""
        self.frame_chunk = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for site in motion_sites(self.unet):
            if hasattr(site.block, "motion_modules"):
                del site.block.motion_modules
        return self.unet

    @property
    def frame_chunk(self) -> int | None:
        """Frames (of the B·F in a call) that the per-frame layers process at a time; None (default): all at
        once. Smaller chunks bound the working memory of the 2-D blocks and the CFG halves; the result is the
        same (see :mod:`cococo_core.models.chunking`)."""
        return self._frame_chunk

    @frame_chunk.setter
    def frame_chunk(self, chunk: int | None) -> None:
        set_frame_chunk(self.unet, chunk)
        self._frame_chunk = chunk

    # -- description -------------------------------------------------------------------------------------
    @property
    def config(self):
        """The 2-D U-Net's diffusers config (``in_channels``, ``sample_size``, ``cross_attention_dim``, ...)."""
        return self.unet.config

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    @property
    def motion_modules(self) -> list[tuple[str, MotionModule]]:
        """``(key prefix, module)`` pairs in official order, e.g. ``("mid_block.motion_modules.0", m)``."""
        return [
            (f"{site.prefix}.motion_modules.{i}", module)
            for site in motion_sites(self.unet)
            for i, module in enumerate(site.block.motion_modules)
        ]

    @property
    def num_motion_modules(self) -> int:
        return len(self.motion_modules)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def motion_state_dict(self) -> dict[str, torch.Tensor]:
        """The motion-module tensors under their official names (840 for SD1.5)."""
        return {k: v for k, v in self.unet.state_dict().items() if MOTION_MARKER in k}

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if sample.dim() != 5 or sample.shape[1] != self.in_channels:
            raise ValueError(
                f"sample must be (batch, {self.in_channels}, frames, height, width) latents, got {tuple(sample.shape)}"
            )
        batch, channels, frames, height, width = sample.shape
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states must be (batch={batch}, tokens, {self.cross_attention_dim}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if any(p.is_meta for p in self.unet.parameters()):
            raise RuntimeError("the motion modules were never loaded (built with motion_init='empty')")
        frames_in = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        text = encoder_hidden_states.to(self.dtype)
        per_frame_text = text.repeat_interleave(frames, dim=0)
        timestep = _per_frame_timestep(timestep, batch, frames, sample.device)
        self._call.frames, self._call.text = frames, text
        try:
            out = self.unet(frames_in.to(self.dtype), timestep, per_frame_text, return_dict=False)[0]
        finally:
            self._call.frames, self._call.text = None, None
        return out.view(batch, frames, -1, height, width).transpose(1, 2).contiguous()


def _per_frame_timestep(timestep, batch: int, frames: int, device) -> torch.Tensor:
    """A (B·F,) timestep tensor from a number, a 0-d tensor or a (B,) tensor (each video's t on its frames)."""
    t = torch.as_tensor(timestep)
    if t.dtype == torch.float64:  # MPS has no float64; diffusers embeds timesteps in float32 anyway
        t = t.float()
    t = t.to(device)
    if t.dim() == 0:
        return t.expand(batch * frames)
    if t.shape != (batch,):
        raise ValueError(f"timestep must be a number or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t.repeat_interleave(frames)
