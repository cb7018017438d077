"""The CoCoCo recipe for the shared loop: train the 21 motion modules on SD-1.5-inpainting (paper Eq. 6).

    L = E ||ε - ε_θ([z_t, m̄, z̄_0], t, c_θ(y))||²,   z_t = sqrt(ᾱ_t)·z_0 + sqrt(1 - ᾱ_t)·ε,  t ~ U{0..999}

``ᾱ`` is the linear β schedule in [0.00085, 0.012] over 1000 steps that the pack's DDIM sampler uses
(:func:`cococo_core.pipeline.ddim.linear_alphas_cumprod`). ``z_0`` / ``z̄_0`` are 0.18215 × VAE posterior
*samples* of the clip and of the masked clip ((1 - m)·x, x in [-1, 1]), ``m̄`` the mask resized to the latents
by nearest, ``y`` the sample's prompt (CLIP last hidden state) - the official conditioning
(:mod:`cococo_core.pipeline.conditioning`). Everything but the motion modules is frozen. Timestep, diffusion
noise and posterior noise are drawn per sample from ``batch["sample_seeds"]``.

Options (``TrainConfig.options``):

* ``base``: SD-1.5-inpainting (diffusers folder or single file; ``tokenizer`` folder for single files);
* ``init_motion``: CoCoCo motion weights to fine-tune (official folder or .safetensors); otherwise
  ``animatediff``: ``mm_sd_v15_v2.ckpt`` for the temporal layers (the paper's initialisation), with DGA and text
  cross-attention Kaiming-initialised (:mod:`.motion_init`); with neither, the official constructor's init;
* ``data`` (prepared shards), ``validation_data`` (optional), ``frames`` (16), ``height`` (256), ``width`` (384),
  ``mask_mix`` (``{instance: 0.7, random: 0.2, unconditional: 0.1, ...}``, see :class:`.masks.MaskMix`);
* ``vae_chunk`` (frames per VAE call), ``save_dtype`` (``fp32``/``fp16``/``bf16``, default fp32),
  ``validation_steps`` (DDIM steps, 25), ``validation_guidance`` (14).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...models.video_unet import MOTION_MARKER
from ...pipeline.conditioning import LATENT_SCALE, latent_mask, masked_image
from ...pipeline.ddim import NUM_TRAIN_TIMESTEPS, linear_alphas_cumprod

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "no": None}
NOISE_SALT = 0x5EED_C0C0


class CoCoCoTrainModel(nn.Module):
    """Frozen VAE + CLIP text encoder + the video U-Net; ``forward`` returns the predicted noise (B, 4, F, h, w)."""

    def __init__(self, unet, vae, text_encoder, vae_chunk: int = 8):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.vae_chunk = vae_chunk
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(), persistent=False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> 0.18215 · (mean + std · noise), float32, ``vae_chunk`` frames per call."""
        dtype = next(self.vae.parameters()).dtype
        out = []
        for start in range(0, images.shape[0], self.vae_chunk):
            dist = self.vae.encode(images[start:start + self.vae_chunk].to(dtype)).latent_dist
            eps = noise[start:start + self.vae_chunk]
            out.append((dist.mean.float() + dist.std.float() * eps.float()) * LATENT_SCALE)
        return torch.cat(out)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor, timesteps: torch.Tensor,
                noise: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """``pixels`` (B, F, 3, H, W) in [0, 1], ``mask`` (B, F, 1, H, W), ``input_ids`` (B, 77), ``timesteps`` (B,),
        ``noise`` (B, 4, F, h, w), ``posterior_noise`` (B, 2, F, 4, h, w) for the clip and the masked clip."""
        batch, frames = pixels.shape[:2]
        h, w = noise.shape[-2:]
        flat = pixels.flatten(0, 1).float()
        flat_mask = mask.flatten(0, 1).float()
        with torch.no_grad():
            latents = self.encode(flat * 2.0 - 1.0, posterior_noise[:, 0].flatten(0, 1))
            masked = self.encode(masked_image(flat, flat_mask), posterior_noise[:, 1].flatten(0, 1))
            small_mask = latent_mask(flat_mask, (h, w))
            text = self.text_encoder(input_ids)[0]

        def video(x):  # (B·F, C, h, w) -> (B, C, F, h, w)
            return x.view(batch, frames, -1, h, w).transpose(1, 2)

        alpha = self.alphas_cumprod[timesteps].view(batch, 1, 1, 1, 1)
        noisy = alpha.sqrt() * video(latents) + (1 - alpha).sqrt() * noise.float()
        sample = torch.cat([noisy, video(small_mask), video(masked)], dim=1)
        return self.unet(sample, timesteps, text)


def motion_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if MOTION_MARKER in n]


def freeze_all_but_motion(model: CoCoCoTrainModel) -> int:
    """requires_grad only on motion-module parameters; returns how many tensors train."""
    model.requires_grad_(False)
    trained = motion_parameters(model)
    for _, param in trained:
        param.requires_grad_(True)
    return len(trained)


def store_frozen_in(model: CoCoCoTrainModel, dtype: torch.dtype) -> None:
    """Under mixed precision the frozen weights (VAE, text encoder, spatial U-Net) are stored in the compute dtype
    (half the memory; they get no gradients and autocast runs them in that dtype anyway); the trained motion
    modules stay float32 (the optimizer updates float32 master weights)."""
    model.vae.to(dtype)
    model.text_encoder.to(dtype)
    model.unet.unet.to(dtype)
    for _, module in model.unet.motion_modules:
        module.float()


def _checkpointed_block(block, video_unet, *args, **kwargs):
    """Run a U-Net block (its resnets, spatial transformers and motion modules) under activation checkpointing.

    The motion modules read the frame count and the video-level text from the VideoUNet's per-call context, which
    is gone when the backward pass recomputes the block; the recomputation therefore restores the context that
    was current during the forward pass."""
    from torch.utils.checkpoint import checkpoint

    forward = type(block).forward
    if not torch.is_grad_enabled():
        return forward(block, *args, **kwargs)
    call = video_unet._call
    frames, text = call.frames, call.text

    def run(*a, **k):
        saved = call.frames, call.text
        call.frames, call.text = frames, text
        try:
            return forward(block, *a, **k)
        finally:
            call.frames, call.text = saved

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


class CoCoCoRecipe:
    """CoCoCo motion-module training (see the module docstring)."""

    name = "cococo"

    def __init__(self):
        self.tokenizer = None
        self.config: dict[str, Any] = {}

    # model -----------------------------------------------------------------------------------------------------
    def build_model(self, config: Mapping[str, Any]) -> nn.Module:
        from ...checkpoints.base import load_sd_components
        from ...checkpoints.safe_load import load_state_dict
        from ...models.loading import video_unet_from_unet2d
        from ...models.video_unet import VideoUNet
        from .motion_init import kaiming_init_new_layers, load_animatediff

        self.config = dict(config)
        if not config.get("base"):
            raise ValueError("options.base: the SD-1.5-inpainting model to train on (diffusers folder or single file)")
        parts = load_sd_components(config["base"], components=("unet", "vae", "text_encoder", "tokenizer"),
                                   tokenizer=config.get("tokenizer"), dtype=torch.float32)
        self.tokenizer = parts.tokenizer
        if config.get("init_motion"):
            unet = video_unet_from_unet2d(parts.unet, config["init_motion"])
            log.info("fine-tuning the motion modules of %s", config["init_motion"])
        else:
            unet = VideoUNet(parts.unet)
            if config.get("animatediff"):
                loaded = load_animatediff(unet, load_state_dict(config["animatediff"]))
                log.info("temporal layers from %s (%d tensors)", config["animatediff"], len(loaded["loaded"]))
            generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
            kaiming_init_new_layers(unet, generator)
        model = CoCoCoTrainModel(unet, parts.vae, parts.text_encoder, int(config.get("vae_chunk", 8)))
        frozen_dtype = DTYPES.get(str(config.get("mixed_precision", "no")))
        if frozen_dtype is not None:
            store_frozen_in(model, frozen_dtype)
        count = freeze_all_but_motion(model)
        log.info("training %d motion-module tensors (%.1f M parameters); everything else frozen", count,
                 sum(p.numel() for _, p in motion_parameters(model)) / 1e6)
        return model

    def enable_gradient_checkpointing(self, model: CoCoCoTrainModel) -> None:
        """Recompute every U-Net block (spatial layers and the motion modules in it) in the backward pass."""
        from ...models.video_unet import motion_sites

        for site in motion_sites(model.unet.unet):
            site.block.forward = functools.partial(_checkpointed_block, site.block, model.unet)

    def parameter_groups(self, model: nn.Module, config: Mapping[str, Any]) -> list[dict]:
        params = [p for _, p in motion_parameters(model)]
        return [{"params": params, "lr": float(config.get("motion_lr", config.get("learning_rate", 1e-4))),
                 "name": "motion_modules"}]

    # data ------------------------------------------------------------------------------------------------------
    def build_dataset(self, config: Mapping[str, Any], split: str = "train") -> torch.utils.data.Dataset:
        from .dataset import CoCoCoClipDataset
        from .masks import MaskMix

        source = config.get("data") if split == "train" else config.get("validation_data")
        if not source:
            raise FileNotFoundError(f"no {'options.data' if split == 'train' else 'options.validation_data'} shards")
        mix = MaskMix(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in (config.get("mask_mix") or {}).items()})
        return CoCoCoClipDataset(source, frames=int(config.get("frames", 16)), height=int(config.get("height", 256)),
                                 width=int(config.get("width", 384)), mix=mix, seed=int(config.get("seed", 0)))

    def collate(self, samples: list) -> dict:
        from .dataset import collate_clips

        return collate_clips(samples)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("build_model must run before the recipe tokenizes prompts")
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    # loss ------------------------------------------------------------------------------------------------------
    @staticmethod
    def draw(seeds: torch.Tensor, frames: int, latent_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Per-sample (timestep, noise (4, F, h, w), posterior noise (2, F, 4, h, w)) from each sample's seed."""
        steps, noise, posterior = [], [], []
        h, w = latent_hw
        for seed in seeds.tolist():
            g = torch.Generator().manual_seed(int(seed) ^ NOISE_SALT)
            steps.append(torch.randint(0, NUM_TRAIN_TIMESTEPS, (), generator=g))
            noise.append(torch.randn(4, frames, h, w, generator=g))
            posterior.append(torch.randn(2, frames, 4, h, w, generator=g))
        return torch.stack(steps), torch.stack(noise), torch.stack(posterior)

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        pixels = batch["pixels"]
        frames, height, width = pixels.shape[1], pixels.shape[3], pixels.shape[4]
        steps, noise, posterior = self.draw(batch["sample_seeds"].cpu(), frames, (height // 8, width // 8))
        device = pixels.device
        ids = self.tokenize(list(batch["prompt"])).to(device)
        prediction = model(pixels, batch["mask"], ids, steps.to(device), noise.to(device), posterior.to(device))
        loss = F.mse_loss(prediction.float(), noise.to(device).float())
        return loss, {"timestep": steps.float().mean()}

    # output ----------------------------------------------------------------------------------------------------
    def save_pretrained(self, model: nn.Module, directory: Path) -> list[Path]:
        from .export import save_both

        state = model.unet.motion_state_dict()
        return save_both(state, Path(directory), dtype=DTYPES[str(self.config.get("save_dtype", "fp32"))])

    @torch.no_grad()
    def validate(self, model: nn.Module, batch: dict, directory: Path, step: int) -> list[Path]:
        """DDIM samples of the validation clips (the pack's sampler), written as [input | masked | output] videos."""
        from ...pipeline.conditioning import decode_latents
        from ...pipeline.sampler import denoise
        from ...output_files import write_text
        from ...video_io import write_video

        pixels, mask = batch["pixels"].float(), batch["mask"].float()
        batch_size, frames, _, height, width = pixels.shape
        h, w = height // 8, width // 8
        ids = self.tokenize(list(batch["prompt"]) + [""]).to(pixels.device)
        text = model.text_encoder(ids)[0].float()
        files = []
        for b in range(batch_size):
            flat, flat_mask = pixels[b], mask[b]
            zero = torch.zeros(frames, 4, h, w, device=pixels.device)
            masked = model.encode(masked_image(flat, flat_mask), zero)
            condition_mask = latent_mask(flat_mask, (h, w))
            g = torch.Generator().manual_seed(int(batch["sample_seeds"][b]))
            noise = torch.randn(1, 4, frames, h, w, generator=g).to(pixels.device)
            latents = denoise(model.unet, noise, masked.transpose(0, 1)[None], condition_mask.transpose(0, 1)[None],
                              text[b:b + 1], text[-1:], int(self.config.get("validation_steps", 25)),
                              float(self.config.get("validation_guidance", 14.0)))
            out = decode_latents(model.vae, latents[0].transpose(0, 1).float())
            panel = torch.cat([flat.cpu(), (flat * (1 - flat_mask)).cpu(), out], dim=3)
            path = Path(directory) / f"step{step:08d}-{b}.mp4"
            write_video(path, panel.permute(0, 2, 3, 1), 8.0)
            write_text(Path(directory) / f"step{step:08d}-{b}.txt", batch["prompt"][b] + "\n", overwrite=True)
            files.append(path)
        return files
