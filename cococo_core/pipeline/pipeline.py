"""``CoCoCoPipeline``: text-guided video inpainting from frames + masks to frames.

Flow of ``__call__`` (cococo-official.md §3): check inputs -> working size (resize / reflect-pad to a
multiple of 64) -> masked image (1 - m)·x -> VAE latents x 0.18215 (posterior sample from the seed) and
nearest latent mask -> :func:`~cococo_core.pipeline.sampler.denoise` (DDIM + CFG, context windows for
long videos) -> VAE decode -> back to the input size -> optional paste-back of the original pixels.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from .. import validation
from ..hooks import CancelCheck, StepCallback, check_cancelled
from . import memory
from .conditioning import decode_latents, encode_images, latent_mask, masked_image, module_device_dtype
from .conditioning import tiling_wanted
from .conditioning import vae_tiling as tiled_vae
from .ddim import NUM_TRAIN_TIMESTEPS
from ..masks.morphology import grow
from .frames import as_mask, as_video, from_working, plan_geometry, to_working, video_to_float
from .paste import paste_back as paste_original
from .paste import paste_weights
from .sampler import denoise
from .text import LONG_PROMPTS, encode_prompts

logger = logging.getLogger(__name__)

OUTPUTS = ("float", "uint8")
POSTERIORS = ("sample", "mean")


class CoCoCoPipeline:
    """CoCoCo from already-loaded parts: an SD-1.x VAE, CLIP text encoder and tokenizer, and the video
    U-Net (``unet(sample (N, 9, F, h, w), timestep, encoder_hidden_states) -> (N, 4, F, h, w)``).

    ``device`` is where the U-Net runs (default: where its weights are). With ``offload=True`` the
    text encoder and the VAE wait on the CPU and visit ``device`` only while they work, so the
    accelerator holds just the U-Net during sampling. ``vae_chunk`` frames go through the VAE per call.
    ``compile_unet=True`` compiles the U-Net with ``torch.compile`` (opt-in, see :meth:`compile_unet`).
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, *, device=None, offload: bool = False, vae_chunk: int = 8,
                 compile_unet: bool = False):
        if vae_chunk < 1:
            raise ValueError(f"vae_chunk must be >= 1 frame, got {vae_chunk}")
        self.vae, self.text_encoder, self.tokenizer, self.unet = vae, text_encoder, tokenizer, unet
        self.offload = offload
        self.vae_chunk = vae_chunk
        self.to(device if device is not None else module_device_dtype(unet)[0])
        if compile_unet:
            self.compile_unet()

    def compile_unet(self, **options) -> bool:
        """Compile the U-Net in place with ``torch.compile`` (``options`` are passed on). The first step of
        each new latent shape then compiles (minutes on a CPU, not cancellable); later steps run the compiled
        code, and progress and cancel work as before. Where torch.compile cannot work (no C++ compiler, no
        Triton, unsupported platform) a warning says why and the U-Net stays eager. Returns whether it compiled.
        Call after :meth:`to` (a compiled model is specialised to its device)."""
        from ..models.compilation import compile_unet  # noqa: PLC0415

        return compile_unet(self.unet, **options)

    def to(self, device) -> "CoCoCoPipeline":
        """Run on ``device`` from now on: the U-Net moves there, and so do the VAE and text encoder unless
        offloading (they then wait on the CPU and visit ``device`` only while they work). Returns self."""
        self.device = torch.device(device)
        self.unet.to(self.device)
        storage = torch.device("cpu") if self.offload else self.device
        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.to(storage)
        return self

    @classmethod
    def from_pretrained(cls, base, motion, *, tokenizer=None, device=None, dtype=None, vae_dtype=None,
                        offload: bool = False, vae_chunk: int = 8, compile_unet: bool = False) -> "CoCoCoPipeline":
        """Load SD-1.x-inpainting parts from ``base`` (diffusers folder or single file) and the motion
        modules from ``motion`` (official ``model_*.pth`` files / converted safetensors).
        ``vae_dtype`` defaults to ``dtype``; fp32 avoids the SD VAE's rare fp16 overflow."""
        from ..checkpoints.base import load_sd_components  # noqa: PLC0415 - heavy, only when loading
        from ..models import video_unet_from_unet2d  # noqa: PLC0415

        parts = load_sd_components(base, tokenizer=tokenizer, device="cpu" if offload else device, dtype=dtype)
        if vae_dtype is not None:
            parts.vae.to(vae_dtype)
        unet = video_unet_from_unet2d(parts.unet, motion, device=device)  # already in dtype
        return cls(parts.vae, parts.text_encoder, parts.tokenizer, unet, device=device, offload=offload,
                   vae_chunk=vae_chunk, compile_unet=compile_unet)

    @contextlib.contextmanager
    def _visiting(self, module):
        """Keep ``module`` on the execution device for the block, back on the CPU after it if offloading."""
        module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")

    def encode_prompt(self, prompt: str, negative_prompt: str = "", *, guidance_scale: float = 14.0,
                      long_prompts: str = "truncate"):
        """(prompt_embeds, negative_prompt_embeds or None when g <= 1), each (1, 77, hidden) (77 per chunk with
        ``long_prompts="chunks"``, see :mod:`cococo_core.pipeline.text`)."""
        prompts = [negative_prompt, prompt] if guidance_scale > 1 else [prompt]
        with self._visiting(self.text_encoder) as text_encoder:
            embeds = encode_prompts(self.tokenizer, text_encoder, prompts, long_prompts).to(self.device)
        return (embeds[1:2], embeds[0:1]) if guidance_scale > 1 else (embeds[0:1], None)

    def denoise(self, noise, masked_latents, mask, prompt_embeds, negative_prompt_embeds, num_inference_steps=50,
                guidance_scale=14.0, *, context_length=None, context_overlap=None, split_cfg=False,
                callback: StepCallback | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """The sampler alone (see :func:`cococo_core.pipeline.sampler.denoise`): latents in, latents out."""
        return denoise(self.unet, noise, masked_latents, mask, prompt_embeds, negative_prompt_embeds,
                       num_inference_steps, guidance_scale, context_length=context_length,
                       context_overlap=context_overlap, split_cfg=split_cfg, callback=callback, cancel=cancel)

    @torch.no_grad()
    def __call__(self, video, mask, prompt: str, negative_prompt: str = "", num_inference_steps: int = 50,
                 guidance_scale: float = 14.0, seed: int | None = 0, *, width: int | None = None,
                 height: int | None = None, size_multiple: int = 64, context_length: int | None = None,
                 context_overlap: int | None = None, posterior: str = "sample", split_cfg: bool = False,
                 mask_dilate: int = 0, paste_back: bool = True, paste_dilate: int = 8, paste_feather: int = 8,
                 vae_tiling: bool | None = None, noise_device: str = "cpu", output: str = "float",
                 long_prompts: str = "truncate", callback: StepCallback | None = None,
                 cancel: CancelCheck | None = None) -> torch.Tensor:
        """Inpaint ``video`` (F, H, W, 3; uint8 or float in [0, 1]) where ``mask`` (F, H, W; 1 = fill) is set.

        Returns (F, H, W, 3) on the CPU: float32 in [0, 1] (``output="float"``) or uint8 (rounded).
        ``seed`` fixes the initial noise and the VAE posterior sample, both drawn on ``noise_device``
        ("cpu" by default, so a seed gives the same video on every device); None draws a random seed.
        ``width``/``height`` set a working resolution (the result comes back at the input size).
        ``context_length``/``context_overlap`` set temporal windows (default: automatic, see sampler).
        ``posterior="mean"`` encodes with the VAE posterior mean instead of a sample.
        ``mask_dilate`` grows the mask by that many pixels before inpainting (the official demo used 12).
        ``paste_back`` returns the original pixels outside the mask grown by ``paste_dilate`` pixels and
        feathered over ``paste_feather`` pixels; ``paste_back=False`` returns the decoded frames as they are.
        ``long_prompts``: "truncate" (official: 77 tokens, the dropped words are logged) or "chunks" (75-token
        chunks encoded separately and concatenated, as ComfyUI / A1111).
        ``callback(step, total, latents)`` runs after each denoising step; ``cancel()`` is polled throughout.
        An empty mask returns the input as it is, without running any model.
        """
        _check_options(prompt, negative_prompt, num_inference_steps, guidance_scale, seed, output, posterior,
                       long_prompts, mask_dilate=mask_dilate, paste_dilate=paste_dilate, paste_feather=paste_feather)
        original = as_video(video)
        num_frames, in_h, in_w, _ = original.shape
        holes = as_mask(mask, num_frames, in_h, in_w)
        if not holes.any():
            logger.info("the mask is empty: returning the input video unchanged")
            return _convert(original, output)
        holes = grow(holes, mask_dilate)  # mask_dilate >= 0 (checked): a dilation
        geometry = plan_geometry(in_h, in_w, work_width=width, work_height=height, size_multiple=size_multiple)
        tiled = tiling_wanted(geometry.padded_hw, vae_tiling)
        memory.check(memory.cococo(num_frames, geometry.padded_hw, dtype=module_device_dtype(self.unet)[1],
                                   vae_dtype=module_device_dtype(self.vae)[1], vae_chunk=self.vae_chunk,
                                   vae_tiled=tiled, context_length=context_length, split_cfg=split_cfg,
                                   guidance_scale=guidance_scale),
                     self.device, options="width/height, context_length or the number of frames")
        frames = to_working(video_to_float(original).permute(0, 3, 1, 2), geometry)
        holes_work = to_working(holes[:, None], geometry, binary=bool(((holes == 0) | (holes == 1)).all()))
        latent_hw = geometry.latent_hw

        noise, posterior_noise = draw_noise(seed, num_frames, latent_hw, sample_posterior=posterior == "sample",
                                            device=noise_device)
        check_cancelled(cancel)
        prompt_embeds, negative_embeds = self.encode_prompt(prompt, negative_prompt, guidance_scale=guidance_scale,
                                                            long_prompts=long_prompts)
        with self._visiting(self.vae) as vae, tiled_vae(vae, tiled):
            conditioning = encode_images(vae, masked_image(frames, holes_work), noise=posterior_noise,
                                         chunk=self.vae_chunk, cancel=cancel)
        latents = self.denoise(
            noise, _to_video_latents(conditioning), _to_video_latents(latent_mask(holes_work, latent_hw)),
            prompt_embeds, negative_embeds, num_inference_steps, guidance_scale, context_length=context_length,
            context_overlap=context_overlap, split_cfg=split_cfg, callback=callback, cancel=cancel)
        with self._visiting(self.vae) as vae, tiled_vae(vae, tiled):
            decoded = decode_latents(vae, latents[0].permute(1, 0, 2, 3), chunk=self.vae_chunk, cancel=cancel)
        result = _convert(from_working(decoded, geometry).permute(0, 2, 3, 1).contiguous(), output)
        if not paste_back:
            return result
        weights = paste_weights(holes, dilate=paste_dilate, feather=paste_feather)
        return paste_original(_convert(original, output), result, weights)


def _check_options(prompt, negative_prompt, num_inference_steps, guidance_scale, seed, output, posterior,
                   long_prompts="truncate", **pixels):
    if long_prompts not in LONG_PROMPTS:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPTS}, got {long_prompts!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise ValueError("prompt and negative_prompt must be strings")
    validation.steps(num_inference_steps, "num_inference_steps", NUM_TRAIN_TIMESTEPS)
    validation.seed(seed)
    validation.finite(guidance_scale, "guidance_scale")
    for name, value in pixels.items():
        validation.whole(value, f"{name} (pixels)")


def draw_noise(seed: int | None, num_frames: int, latent_hw: tuple[int, int], *, sample_posterior: bool = True,
               device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(initial noise (1, 4, F, h, w), VAE posterior noise (F, 4, h, w) or None), in that order from one
    generator seeded with ``seed`` on ``device`` (None: a random seed)."""
    generator = torch.Generator(device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**63 - 1, ()).item()))
    noise = torch.randn((1, 4, num_frames) + tuple(latent_hw), generator=generator, device=device)
    if not sample_posterior:
        return noise, None
    return noise, torch.randn((num_frames, 4) + tuple(latent_hw), generator=generator, device=device)


def _to_video_latents(per_frame: torch.Tensor) -> torch.Tensor:
    """(F, C, h, w) -> (1, C, F, h, w)."""
    return per_frame.permute(1, 0, 2, 3)[None]


def _convert(frames: torch.Tensor, output: str) -> torch.Tensor:
    """(F, H, W, 3) uint8 or float -> the requested output dtype (uint8 rounds; uint8 input is kept as is)."""
    if output == "uint8":
        return frames if frames.dtype == torch.uint8 else (frames.to(torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
    return video_to_float(frames)
