"""LGVI diffusion pipeline (official ``RoviPipeline`` / ``RoviPipelineMLLM``; spec §1.1, §1.8-1.9, §2.8).

1. Frames -> VAE latents in frame chunks, ``latent_dist.sample()`` x scaling factor (0.18215).
2. Noise z_T from a seeded generator, scaled by ``init_noise_sigma``.
3. Per step of the checkpoint's scheduler (50 steps): eps_T, eps_I, eps_U as three sequential
   batch-1 passes, combined by :func:`~.guidance.combine_guidance` (3.0 / 1.5); the unconditional
   video latent is zeros. Videos longer than ``window_length`` frames are predicted in overlapping
   temporal windows (:mod:`cococo_core.windows`); one window is exactly the plain path. The U-Net's
   frame-pooled GroupNorm statistics (and temporal attention) then cover one window's frames.
4. The mask decoder runs once, in the text-conditioned pass of the last step.
5. Chunked VAE decode.

Conditioning: referring LGVI encodes the expression with the checkpoint's CLIP text encoder and
uses CLIP("") as the negative; LGVI-I passes the MLLM context and zeros of the same shape.
Official ``RoviPipeline.__call__`` arguments: batched prompts, ``num_videos_per_prompt``, a text
``negative_prompt``, starting ``latents`` and DDIM's ``eta``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import os

import torch
import torch.nn.functional as F

from .. import validation
from ..checkpoints.pretrained import load_pretrained
from ..hooks import check_cancelled, report
from ..pipeline import memory
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
    """Every generated video, prompt-major (prompt 0's ``num_videos_per_prompt`` videos first); ``frames`` and
    ``mask`` are the first video's."""

    videos: torch.Tensor  # (N, F, H, W, 3) float32 in [0, 1], CPU
    masks: torch.Tensor | None  # (N, F, H, W) float32 in [0, 1], CPU: predicted removal region

    @property
    def frames(self) -> torch.Tensor:  # (F, H, W, 3)
        return self.videos[0]

    @property
    def mask(self) -> torch.Tensor | None:  # (F, H, W)
        return None if self.masks is None else self.masks[0]


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
                _move(module, **moves)
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
        vae = load_pretrained(AutoencoderKL.from_pretrained, _subfolder(path, "vae"),
                              low_cpu_mem_usage=_accelerate_available())
        vae = _move(vae, device=device, dtype=dtype).eval()
        encoder = tokenizer = None
        if text_encoder:
            from transformers import CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

            tokenizer = CLIPTokenizer.from_pretrained(_subfolder(path, "tokenizer"))
            encoder = load_pretrained(CLIPTextModel.from_pretrained, _subfolder(path, "text_encoder"))
            encoder = encoder.to(device=device, dtype=dtype).eval()
        return cls(unet, vae, load_scheduler(path), encoder, tokenizer)

    @torch.no_grad()
    def encode_text(self, text: str | list[str]) -> torch.Tensor:
        """CLIP last hidden state of ``text`` padded to the tokenizer's 77 tokens: (prompts, 77, D)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline was loaded without a text encoder; pass context= (LGVI-I) or load with text_encoder=True")
        warn_truncated(self.tokenizer, [text] if isinstance(text, str) else list(text), self.tokenizer.model_max_length)
        ids = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def __call__(
        self,
        frames,
        text: str | list[str] | None = None,
        *,
        context: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_context: torch.Tensor | None = None,
        num_videos_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
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
        """Remove what ``text`` (LGVI: one expression or a list) or ``context`` (LGVI-I, (prompts, L, D)) refers
        to from ``frames`` ((F, H, W, 3) in [0, 1]); ``num_videos_per_prompt`` videos per prompt.

        As the official ``RoviPipeline``: ``negative_prompt`` (same type as ``text``; default "") replaces
        CLIP("") in the two unconditional passes; ``latents`` ((N, 4, F, h, w), N = prompts x videos per
        prompt, at the working size / 8) replace the seeded starting noise and are scaled by the scheduler's
        ``init_noise_sigma``; ``eta`` is DDIM's eta (used only by schedulers whose ``step`` takes it).
        ``size`` = (width, height) to work at; default: the input size rounded to multiples of 8.
        ``callback(step, total, latents)``, ``cancel() -> bool``."""
        num_inference_steps = validation.steps(num_inference_steps, "num_inference_steps")
        seed = validation.whole(seed, "seed", 0, validation.SEED_MAX)
        validation.finite(guidance_scale, "guidance_scale")
        validation.finite(image_guidance_scale, "image_guidance_scale")
        validation.finite(eta, "eta")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        context, negative = self._contexts(text, context, negative_prompt, negative_context)
        context = context.repeat_interleave(num_videos_per_prompt, dim=0)
        negative = negative.repeat_interleave(num_videos_per_prompt, dim=0)
        count = context.shape[0]
        video = as_frames(frames)
        num_frames, in_height, in_width = video.shape[:3]
        height, width = work_size(in_height, in_width, size)
        windows = plan_windows(num_frames, window_length, window_overlap)
        memory.check(memory.lgvi(num_frames, (height, width), dtype=self.dtype, vae_chunk=vae_batch_size,
                                 window=window_length, guided=guidance_enabled(guidance_scale, image_guidance_scale)),
                     self.device, options="the working size, the window or the number of frames")
        generator = torch.Generator("cpu").manual_seed(int(seed))

        condition = self.encode_video(to_model_input(video, height, width), generator, vae_batch_size, cancel)
        condition = condition.expand(count, *condition.shape[1:])
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        latents = self._initial_latents(latents, condition.shape, generator)
        step_kwargs = _step_kwargs(self.scheduler, generator, eta)
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

        out_height, out_width = (in_height, in_width) if resize_back else (height, width)
        videos = []
        for one in latents:
            images = self.decode_latents(one[None], vae_batch_size, cancel)
            videos.append(from_model_output(images, out_height, out_width).cpu())
        masks = None
        if mask is not None:
            mask_frames = mask[:, 0].reshape(-1, 1, *mask.shape[-2:]).float()  # (N*F, 1, h, w)
            masks = F.interpolate(mask_frames, size=(out_height, out_width), mode="bilinear", align_corners=False)
            masks = masks[:, 0].clamp(0, 1).reshape(count, num_frames, out_height, out_width).cpu()
        return RemovalResult(torch.stack(videos), masks)

    def _initial_latents(self, latents, shape, generator) -> torch.Tensor:
        """Seeded noise, or the caller's ``latents`` (official ``prepare_latents``), times ``init_noise_sigma``."""
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(
                f"latents must be shaped {tuple(shape)} (videos, 4, frames, height/8, width/8 of the working size), "
                f"got {tuple(latents.shape)}"
            )
        return latents.to(self.device, self.dtype) * self.scheduler.init_noise_sigma

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

    def _contexts(self, text, context, negative_prompt, negative_context):
        """(prompts, L, D) conditioning and its negative, from text (CLIP) or given contexts (LGVI-I)."""
        if (text is None) == (context is None):
            raise ValueError("give exactly one of text= (LGVI referring expression) or context= (LGVI-I conditioning)")
        if text is not None:
            prompts = [text] if isinstance(text, str) else list(text)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("text must be a string or a non-empty list of strings")
            context = self.encode_text(prompts)
            if negative_context is None:
                negative_context = self.encode_text(_negative_prompts(text, negative_prompt, len(prompts)))
        else:
            if negative_prompt is not None:
                raise ValueError("negative_prompt is text for the CLIP encoder; with context= pass negative_context=")
            if context.dim() != 3 or context.shape[1] < 1:
                raise ValueError(f"context must be shaped (prompts, tokens>=1, dim), got {tuple(context.shape)}")
            if negative_context is None:
                negative_context = torch.zeros_like(context)
        if negative_context.shape[0] == 1 and context.shape[0] > 1:
            negative_context = negative_context.expand(context.shape[0], *negative_context.shape[1:])
        if negative_context.shape[0] != context.shape[0] or negative_context.shape[-1] != context.shape[-1]:
            raise ValueError(f"negative context {tuple(negative_context.shape)} does not match context {tuple(context.shape)}")
        expected = self.unet.config.cross_attention_dim
        if context.shape[-1] != expected:
            raise ValueError(f"context width {context.shape[-1]} does not match the U-Net's cross_attention_dim {expected}")
        return context.to(self.device, self.dtype), negative_context.to(self.device, self.dtype)


def _negative_prompts(text, negative_prompt, count: int) -> list[str]:
    """Official ``_encode_prompt`` rules: default ""; same type as the prompt; a list must match its length."""
    if negative_prompt is None:
        return [""] * count
    if type(negative_prompt) is not type(text):
        raise TypeError(f"negative_prompt must have the type of text ({type(text).__name__}), got {type(negative_prompt).__name__}")
    if isinstance(negative_prompt, str):
        return [negative_prompt]
    if len(negative_prompt) != count:
        raise ValueError(f"{len(negative_prompt)} negative prompts for {count} prompts; give one per prompt")
    return list(negative_prompt)


def _accelerate_available() -> bool:
    """diffusers' fast loading needs accelerate; asking for it without accelerate only prints a warning."""
    return importlib.util.find_spec("accelerate") is not None


def _move(module, **moves):
    """``module.to(**moves)``. A diffusers model that keeps no module in float32 (the VAE) is cast by
    ``nn.Module.to``: diffusers' own ``to`` warns about float32 modules whenever a dtype is given, even when
    there are none, so the result is the same without the warning."""
    from diffusers import ModelMixin  # noqa: PLC0415

    if "dtype" in moves and isinstance(module, ModelMixin) and not getattr(module, "_keep_in_fp32_modules", None):
        return torch.nn.Module.to(module, **moves)
    return module.to(**moves)


def _subfolder(path: str, name: str) -> str:
    folder = os.path.join(path, name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path} has no {name}/ folder (expected the jianzongwu/lgvi diffusers layout)")
    return folder


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    """Official ``prepare_extra_step_kwargs``: ``eta`` and ``generator`` where ``scheduler.step`` takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = float(eta)
    elif eta:
        logger.warning("eta=%g has no effect: the checkpoint's %s takes no eta (only DDIM does; put a DDIMScheduler "
                       "config in its scheduler/ folder to use it)", eta, type(scheduler).__name__)
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
