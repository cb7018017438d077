"""LGVI diffusion pipeline (official ``RoviPipeline`` / ``RoviPipelineMLLM``; spec §1.1, §1.8-1.9, §2.8).

1. Frames -> VAE latents in frame chunks, ``latent_dist.sample()`` x scaling factor (0.18215).
2. Noise z_T from a seeded generator, scaled by ``init_noise_sigma``.
3. Per step of the checkpoint's scheduler (50 steps): eps_T, eps_I, eps_U as three sequential
   batch-1 passes, combined by :func:`~.guidance.combine_guidance` (3.0 / 1.5); the unconditional
   video latent is zeros. Videos longer than ``window_length`` frames are predicted in overlapping
   temporal windows (:mod:`cococo_core.windows`); one window is exactly the plain path.
4. The mask decoder runs once, in the text-conditioned pass of the last step.
5. Chunked VAE decode.

Conditioning: referring LGVI encodes the expression with the checkpoint's CLIP text encoder and
uses CLIP("") as the negative; LGVI-I passes the MLLM context and zeros of the same shape.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os

import torch
import torch.nn.functional as F

from .. import validation
from ..hooks import check_cancelled, report
from ..pipeline.text import warn_truncated
from ..windows import blend_windows, plan_windows
from .guidance import DEFAULT_IMAGE_GUIDANCE, DEFAULT_TEXT_GUIDANCE, combine_guidance, guidance_enabled
from .scheduler import load_scheduler
from .unet import LGVIUNet
from .unet_loading import load_lgvi_unet
from .video_tensor import as_frames, from_model_output, to_model_input, work_size

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 50
DEFAULT_WINDOW = 24  # frames per temporal window: the trained regime
DEFAULT_OVERLAP = 4


@dataclasses.dataclass
class RemovalResult:
    frames: torch.Tensor  # (F, H, W, 3) float32 in [0, 1], CPU
    mask: torch.Tensor | None  # (F, H, W) float32 in [0, 1], CPU: predicted removal region


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


class LGVIPipeline:
    def __init__(self, unet: LGVIUNet, vae, scheduler, text_encoder=None, tokenizer=None):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device=None, dtype=None) -> "LGVIPipeline":
        """Move (and cast) the U-Net, VAE and text encoder; returns self."""
        # only what was asked for: diffusers' ``to`` logs a float32 warning whenever a ``dtype`` keyword is present
        moves = {name: value for name, value in (("device", device), ("dtype", dtype)) if value is not None}
        for module in (self.unet, self.vae, self.text_encoder):
            if module is not None:
                module.to(**moves)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, device=None, dtype=None, text_encoder: bool = True, strict: bool = True
    ) -> "LGVIPipeline":
        """Load an official LGVI / LGVI-I folder (``unet/ vae/ scheduler/`` and, with ``text_encoder``,
        ``text_encoder/ tokenizer/``; LGVI-I needs no text encoder)."""
        from diffusers import AutoencoderKL  # noqa: PLC0415 - heavy imports only when loading

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"LGVI checkpoint folder not found: {path}")
        device, dtype = default_device_dtype(device, dtype)
        unet = load_lgvi_unet(path, device=device, dtype=dtype, strict=strict)
        vae = AutoencoderKL.from_pretrained(_subfolder(path, "vae")).to(device=device, dtype=dtype).eval()
        encoder = tokenizer = None
        if text_encoder:
            from transformers import CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

            tokenizer = CLIPTokenizer.from_pretrained(_subfolder(path, "tokenizer"))
            encoder = CLIPTextModel.from_pretrained(_subfolder(path, "text_encoder")).to(device=device, dtype=dtype).eval()
        return cls(unet, vae, load_scheduler(path), encoder, tokenizer)

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """CLIP last hidden state of ``text`` padded to the tokenizer's 77 tokens: (1, 77, D)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline was loaded without a text encoder; pass context= (LGVI-I) or load with text_encoder=True")
        warn_truncated(self.tokenizer, [text], self.tokenizer.model_max_length)
        ids = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def __call__(
        self,
        frames,
        text: str | None = None,
        *,
        context: torch.Tensor | None = None,
        negative_context: torch.Tensor | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_TEXT_GUIDANCE,
        image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE,
        seed: int = 0,
        size: tuple[int, int] | None = None,
        resize_back: bool = True,
        window_length: int = DEFAULT_WINDOW,
        window_overlap: int = DEFAULT_OVERLAP,
        vae_batch_size: int = 8,
        return_mask: bool = True,
        callback=None,
        cancel=None,
    ) -> RemovalResult:
        """Remove what ``text`` (LGVI) or ``context`` (LGVI-I, (1, L, D)) refers to from ``frames``
        ((F, H, W, 3) in [0, 1]). ``size`` = (width, height) to work at; default: the input size
        rounded to multiples of 8. ``callback(step, total, latents)``, ``cancel() -> bool``."""
        num_inference_steps = validation.steps(num_inference_steps, "num_inference_steps")
        seed = validation.whole(seed, "seed", 0, validation.SEED_MAX)
        validation.finite(guidance_scale, "guidance_scale")
        validation.finite(image_guidance_scale, "image_guidance_scale")
        context, negative = self._contexts(text, context, negative_context)
        video = as_frames(frames)
        num_frames, in_height, in_width = video.shape[:3]
        height, width = work_size(in_height, in_width, size)
        windows = plan_windows(num_frames, window_length, window_overlap)
        generator = torch.Generator("cpu").manual_seed(int(seed))

        condition = self.encode_video(to_model_input(video, height, width), generator, vae_batch_size, cancel)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        latents = torch.randn(condition.shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = _step_kwargs(self.scheduler, generator)
        guided = guidance_enabled(guidance_scale, image_guidance_scale)
        mask = None
        for index, t in enumerate(timesteps):
            check_cancelled(cancel)
            want_mask = return_mask and index == len(timesteps) - 1 and self.unet.mask_decoder is not None
            model_input = self.scheduler.scale_model_input(latents, t)

            def predict(frame_ids, model_input=model_input, t=t, want_mask=want_mask):
                eps, window_mask = self.predict_noise(
                    model_input[:, :, frame_ids], condition[:, :, frame_ids], t, context, negative,
                    guidance_scale if guided else None, image_guidance_scale, want_mask,
                )
                return torch.cat([eps, window_mask.to(eps.dtype)], dim=1) if want_mask else eps

            prediction = blend_windows(num_frames, windows, predict, frame_dim=2)
            eps = prediction[:, :4]
            if want_mask:
                mask = prediction[:, 4:5]
            latents = self.scheduler.step(eps, t, latents, **step_kwargs).prev_sample
            report(callback, index + 1, len(timesteps), latents)

        images = self.decode_latents(latents, vae_batch_size, cancel)
        out_height, out_width = (in_height, in_width) if resize_back else (height, width)
        result_mask = None
        if mask is not None:
            mask_frames = mask[0].transpose(0, 1).float()  # (F, 1, h, w)
            result_mask = F.interpolate(mask_frames, size=(out_height, out_width), mode="bilinear", align_corners=False)
            result_mask = result_mask[:, 0].clamp(0, 1).cpu()
        return RemovalResult(from_model_output(images, out_height, out_width).cpu(), result_mask)

    def predict_noise(self, latents, condition, t, context, negative, text_scale, image_scale, want_mask):
        """Guided eps for one window: three sequential batch-1 passes (official memory layout)."""
        eps_text, mask = self.unet(latents, t, context, condition, return_mask=want_mask)
        if text_scale is None:
            return eps_text, mask
        eps_image, _ = self.unet(latents, t, negative, condition)
        eps_uncond, _ = self.unet(latents, t, negative, torch.zeros_like(condition))
        return combine_guidance(eps_text, eps_image, eps_uncond, text_scale, image_scale), mask

    def encode_video(self, pixels: torch.Tensor, generator, batch_size: int, cancel=None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> (1, 4, F, H/8, W/8) latents, VAE ``.sample()`` per chunk of frames."""
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        chunks = []
        for start in range(0, pixels.shape[0], max(1, batch_size)):
            check_cancelled(cancel)
            chunk = pixels[start : start + max(1, batch_size)].to(self.device, self.vae.dtype)
            chunks.append(self.vae.encode(chunk).latent_dist.sample(generator=generator) * scale)
        return torch.cat(chunks).transpose(0, 1).unsqueeze(0).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor, batch_size: int, cancel=None) -> torch.Tensor:
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        frames = latents[0].transpose(0, 1) / scale
        out = []
        for start in range(0, frames.shape[0], max(1, batch_size)):
            check_cancelled(cancel)
            out.append(self.vae.decode(frames[start : start + max(1, batch_size)].to(self.vae.dtype)).sample.float().cpu())
        return torch.cat(out)

    def _contexts(self, text, context, negative):
        if (text is None) == (context is None):
            raise ValueError("give exactly one of text= (LGVI referring expression) or context= (LGVI-I conditioning)")
        if text is not None:
            context = self.encode_text(text)
            if negative is None:
                negative = self.encode_text("")
        else:
            if context.dim() != 3 or context.shape[0] != 1 or context.shape[1] < 1:
                raise ValueError(f"context must be shaped (1, tokens>=1, dim), got {tuple(context.shape)}")
            if negative is None:
                negative = torch.zeros_like(context)
        expected = self.unet.config.cross_attention_dim
        if context.shape[-1] != expected:
            raise ValueError(f"context width {context.shape[-1]} does not match the U-Net's cross_attention_dim {expected}")
        return context.to(self.device, self.dtype), negative.to(self.device, self.dtype)


def _subfolder(path: str, name: str) -> str:
    folder = os.path.join(path, name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path} has no {name}/ folder (expected the jianzongwu/lgvi diffusers layout)")
    return folder


def _step_kwargs(scheduler, generator) -> dict:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
