"""The native path's door to ComfyUI: CoCoCo on ComfyUI's own MODEL, CONDITIONING and LATENT.

Everything here goes through ComfyUI's extension points; no ComfyUI function or global is replaced:

* **Motion modules** (:func:`apply_motion`): a :class:`cococo_core.models.MotionModuleSet` wrapped in its own
  ``ModelPatcher`` and attached with ``set_additional_models``, so ComfyUI's model management loads it to the
  GPU with the U-Net before sampling and offloads it after, like a ControlNet. They run through a
  ``forward_timestep_embed_patch`` (a ``transformer_options`` patch of the LDM ``UNetModel``) registered for
  the resnet and spatial-transformer layers: the layer runs as ComfyUI runs it, and where a CoCoCo motion
  module ends that LDM block (``transformer_options["block"]``), the module runs on its output, before the
  block's sampler and before ControlNet residuals, as in the official 3-D U-Net. Per call, the batch holds
  ``len(cond_or_uncond)`` videos (ComfyUI's batched CFG) of ``batch // len(cond_or_uncond)`` frames (the whole
  latent batch, or one context window), and the video-level prompt for the text cross-attention is the
  cross-attention context of each video's first frame (ComfyUI repeats one prompt over a video's frames).
* **β schedule** (:func:`beta_schedule_sampling`): an object patch of ``model_sampling`` with a
  ``ModelSamplingDiscrete`` built for the chosen schedule (CoCoCo: ``sqrt_linear``, diffusers' "linear").
* **Conditioning** (:func:`video_inpaint_conditioning`): the official inputs as ComfyUI's inpainting concat
  (``concat_latent_image`` / ``concat_mask``).
* **Task vectors** (:func:`task_vector_model`): ``add_patches`` with the other models' key patches (as
  ComfyUI's model-merging nodes do), so LoRAs applied to those models by ComfyUI's loaders are part of τ_p
  and no merged copy of the weights is made.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MOTION_KEY = "cococo_motion"
INPAINT_CHANNELS = 9
BETA_SCHEDULES = ("sqrt_linear", "linear", "use existing")
OFFICIAL_BETA = dict(linear_start=0.00085, linear_end=0.012, timesteps=1000)
DIFFUSION_PREFIX = "diffusion_model."


# --- the LDM U-Net --------------------------------------------------------------------------------------

def _ldm():
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

    return ResBlock, SpatialTransformer, UNetModel


def inpaint_unet_config(model) -> dict:
    """The LDM config of a ComfyUI SD-1.x inpainting MODEL; a clear error for anything else."""
    _, _, unet_model = _ldm()
    diffusion = model.get_model_object("diffusion_model")
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None)
    if not isinstance(diffusion, unet_model) or not config:
        raise ValueError(f"CoCoCo needs an SD-1.x inpainting MODEL (LDM UNetModel); got {type(diffusion).__name__}")
    if config.get("in_channels") != INPAINT_CHANNELS:
        raise ValueError(
            f"CoCoCo needs an SD-1.5 *inpainting* model with {INPAINT_CHANNELS} input channels (4 noisy latents, 1 mask, "
            f"4 masked-image latents); this MODEL has {config.get('in_channels')}. Load sd-v1-5-inpainting (or a "
            "personalized one made by CoCoCo Task Vector) with Load Checkpoint.")
    if not isinstance(config.get("context_dim"), int) or config.get("use_temporal_attention"):
        raise ValueError("CoCoCo needs an SD-1.x U-Net (one cross-attention width, no temporal layers)")
    return config


def motion_layout(model):
    from cococo_core.models import ldm_motion_layout

    config = inpaint_unet_config(model)
    return ldm_motion_layout(config["model_channels"], config["channel_mult"], config["num_res_blocks"]), config


def compute_dtype(model) -> torch.dtype:
    """The dtype the U-Net computes in (its manual-cast dtype for fp8 / cast weights)."""
    dtype = getattr(model.model, "manual_cast_dtype", None) or model.model.get_dtype()
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


class CoCoCoMotionPatch:
    """``forward_timestep_embed_patch`` handler: runs the layer as ComfyUI does, then the motion module that
    ends this block (if this layer is the one it follows)."""

    def __init__(self, motion_set, after_transformer: dict[tuple[str, int], bool]):
        self.motion_set = motion_set
        self.modules = motion_set.by_block()
        self.after_transformer = after_transformer

    def __call__(self, layer, x, emb, context, transformer_options, output_shape=None, time_context=None,
                 num_video_frames=None, image_only_indicator=None):
        _, spatial_transformer, _ = _ldm()
        is_transformer = isinstance(layer, spatial_transformer)
        if is_transformer:
            x = layer(x, context, transformer_options)
            if "transformer_index" in transformer_options:
                transformer_options["transformer_index"] += 1
        else:
            x = layer(x, emb)
        block = transformer_options.get("block")
        if block not in self.modules or self.after_transformer[block] != is_transformer:
            return x
        return self.run(self.modules[block], x, context, transformer_options)

    @staticmethod
    def run(module, x, context, transformer_options):
        videos = len(transformer_options.get("cond_or_uncond") or [0])
        if x.shape[0] % videos:
            raise ValueError(f"a batch of {x.shape[0]} latents does not split into {videos} videos (cond/uncond); "
                             "CoCoCo treats the latent batch as the frames of one video")
        frames = x.shape[0] // videos
        if context is None:
            raise ValueError("CoCoCo's motion modules need the prompt (CLIP Text Encode) as cross-attention context")
        weight = next(module.parameters())
        if weight.device != x.device:
            raise RuntimeError(f"the CoCoCo motion modules are on {weight.device} but the U-Net runs on {x.device}; "
                               "sample the MODEL with a ComfyUI sampler node (it loads the motion modules)")
        text = context[::frames].to(weight.dtype)  # one prompt per video: its first frame's context
        out = module(x.to(weight.dtype), frames=frames, text=text)
        return out.to(x.dtype)


def _after_transformer(model, sites) -> dict[tuple[str, int], bool]:
    """For each motion site, whether its block's motion follows a spatial transformer (else a resnet)."""
    res_block, spatial_transformer, _ = _ldm()
    diffusion = model.get_model_object("diffusion_model")
    found = {}
    for site in sites:
        kind, index = site.block
        block = {"input": diffusion.input_blocks, "output": diffusion.output_blocks}[kind][index] \
            if kind != "middle" else diffusion.middle_block
        layers = list(block)
        has_transformer = any(isinstance(layer, spatial_transformer) for layer in layers)
        has_resnet = any(isinstance(layer, res_block) for layer in layers)
        if not has_resnet:
            raise ValueError(f"LDM block {site.block} has no resnet; this U-Net does not have the SD-1.x layout")
        found[site.block] = has_transformer
    return found


def build_motion_set(model, state: dict):
    """A :class:`MotionModuleSet` for this MODEL's layout, loaded from normalised official weights, in the
    U-Net's compute dtype, on its offload device."""
    from cococo_core.models import MotionModuleSet

    sites, config = motion_layout(model)
    motion = MotionModuleSet(sites, config["context_dim"], device="meta")
    motion.to_empty(device=model.offload_device)
    motion.load_official(state)
    return motion.to(compute_dtype(model)).eval().requires_grad_(False)


def motion_patcher(model, motion_set):
    """The ``ModelPatcher`` through which ComfyUI's model management loads and offloads ``motion_set`` (create
    one per motion set and hand out clones, so ComfyUI sees every use as the same weights)."""
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(motion_set, load_device=model.load_device,
                                            offload_device=model.offload_device)


def apply_motion(model, motion, beta_schedule: str = "sqrt_linear"):
    """A clone of ``model`` carrying the CoCoCo motion modules and the β schedule (see the module doc).
    ``motion``: a :func:`motion_patcher` (a clone of it is attached) or a ``MotionModuleSet``."""
    import comfy.model_patcher

    res_block, spatial_transformer, _ = _ldm()
    sites, _ = motion_layout(model)
    if model.get_additional_models_with_key(MOTION_KEY):
        raise ValueError("this MODEL already carries CoCoCo motion modules; apply them once")
    patcher = motion.clone() if isinstance(motion, comfy.model_patcher.ModelPatcher) else motion_patcher(model, motion)
    patched = model.clone()
    patched.set_additional_models(MOTION_KEY, [patcher])
    handler = CoCoCoMotionPatch(patcher.model, _after_transformer(model, sites))
    patched.set_model_forward_timestep_embed_patch((res_block, handler))
    patched.set_model_forward_timestep_embed_patch((spatial_transformer, handler))
    sampling = beta_schedule_sampling(model, beta_schedule)
    if sampling is not None:
        patched.add_object_patch("model_sampling", sampling)
    return patched


# --- β schedule --------------------------------------------------------------------------------------------

@functools.cache
def _eps_discrete():
    import comfy.model_sampling

    class CoCoCoModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        """ε-prediction on a discrete β schedule."""

    return CoCoCoModelSampling


class _ScheduleSettings:
    """What ``ModelSamplingDiscrete`` reads from a model config."""

    def __init__(self, beta_schedule: str):
        self.sampling_settings = dict(OFFICIAL_BETA, beta_schedule=beta_schedule)


def beta_schedule_sampling(model, beta_schedule: str):
    """A ``model_sampling`` object for ``beta_schedule`` (ComfyUI's names: ``sqrt_linear`` is linear in β, the
    CoCoCo / AnimateDiff schedule; ``linear`` is SD's scaled_linear), or None for "use existing"."""
    import comfy.model_sampling

    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")
    if beta_schedule == "use existing":
        return None
    current = model.get_model_object("model_sampling")
    if not isinstance(current, comfy.model_sampling.EPS) or isinstance(current, comfy.model_sampling.V_PREDICTION):
        raise ValueError("CoCoCo predicts noise (ε); this MODEL's sampling is not ε-prediction. Use 'use existing' "
                         "only if you know the model was trained for it")
    return _eps_discrete()(_ScheduleSettings(beta_schedule))


# --- conditioning ------------------------------------------------------------------------------------------

def _frames_and_masks(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, H, W, 3) frames and (F, H, W) masks, cropped to a multiple of 8 (centred, as ComfyUI's inpaint
    conditioning does); one mask is used for every frame."""
    if pixels.dim() != 4 or pixels.shape[-1] < 3:
        raise ValueError(f"IMAGE must be (frames, height, width, 3), got {tuple(pixels.shape)}")
    frames, height, width = pixels.shape[:3]
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise ValueError(f"MASK must be (frames, height, width), got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, frames):
        raise ValueError(f"{mask.shape[0]} masks for {frames} frames; give one mask per frame, or one for all")
    if tuple(mask.shape[1:]) != (height, width):
        raise ValueError(f"the mask is {mask.shape[2]}x{mask.shape[1]} but the frames are {width}x{height}; "
                         "resize it first (e.g. with Upscale Image on a mask converted to an image)")
    mask = mask.expand(frames, -1, -1).to(torch.float32)
    crop_h, crop_w = height // 8 * 8, width // 8 * 8
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"frames of {width}x{height} are smaller than one 8x8 latent cell")
    top, left = (height % 8) // 2, (width % 8) // 2
    pixels = pixels[:, top:top + crop_h, left:left + crop_w, :3]
    return pixels, mask[:, top:top + crop_h, left:left + crop_w]


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 − m)·x in [−1, 1] (cococo-official §3.2) expressed in ComfyUI's [0, 1] IMAGE range: x·(1 − m) + ½·m."""
    m = mask[..., None].to(pixels.dtype)
    return pixels * (1.0 - m) + 0.5 * m


def video_inpaint_conditioning(positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor):
    """(positive, negative, latent) for CoCoCo: every frame's masked-image latents (VAE posterior mean) and
    its nearest-downsampled mask as the inpainting concat; the LATENT is zeros, one latent per frame, so
    sampling starts from pure noise with no known-region blending (official)."""
    import node_helpers

    pixels, mask = _frames_and_masks(pixels, mask)
    latents = vae.encode(masked_pixels(pixels, mask))
    latent_hw = tuple(latents.shape[-2:])
    latent_mask = F.interpolate(mask[:, None], size=latent_hw, mode="nearest")
    values = {"concat_latent_image": latents, "concat_mask": latent_mask}
    positive = node_helpers.conditioning_set_values(positive, values)
    negative = node_helpers.conditioning_set_values(negative, values)
    return positive, negative, {"samples": torch.zeros_like(latents)}


# --- task vectors --------------------------------------------------------------------------------------------

def _evaluate(key_patches: list, key: str) -> torch.Tensor:
    """The weight a model's key patches describe (its weight with its own patches, e.g. LoRAs, applied)."""
    import comfy.lora

    weight, convert = key_patches[0]
    value = convert(weight.to(torch.float32, copy=True), inplace=True)
    return comfy.lora.calculate_weight(key_patches[1:], value, key)


def _same_weight(a: list, b: list) -> bool:
    """Whether two key-patch lists describe the very same weight (same tensor, same patches): the
    personalization task vector is then exactly zero on that key."""
    return len(a) == len(b) and a[0][0] is b[0][0] and all(x is y for x, y in zip(a[1:], b[1:]))


def task_vector_model(inpaint, sd15, personal, alpha: float, beta: float):
    """θ = lerp(pad(θ_SD1.5), θ_inpaint, α) + β·pad(θ_personal − θ_SD1.5) on the U-Net (CoCoCo §3.4, the
    rule of :mod:`cococo_core.personalize.plan`), as patches on a clone of ``inpaint``:

    * every weight of equal shape: ``strength_model = α`` on the inpainting weight, ``1 − α − β`` × SD-1.5 and
      ``β`` × personal, each given as the other model's key patches (its LoRAs included, computed when
      ComfyUI patches the weights);
    * ``conv_in`` (4 → 9 input channels): one difference patch, zero on channels 4-8 (mask, masked-image
      latents), computed here (it is 320·4·3·3 numbers);
    * keys where personal is SD-1.5 itself (a LoRA left them alone) get no τ_p patch, and none at all at α = 1,
      so only the weights a LoRA touches are recomputed when ComfyUI patches the model.
    """
    inpaint_unet_config(inpaint)
    patched = inpaint.clone()
    target = {k: tuple(v.shape) for k, v in inpaint.model_state_dict(DIFFUSION_PREFIX).items()}
    base_patches = sd15.get_key_patches(DIFFUSION_PREFIX)
    personal_patches = personal.get_key_patches(DIFFUSION_PREFIX)
    padded, missing = [], []
    for key, shape in target.items():
        if key not in base_patches or key not in personal_patches:
            missing.append(key)
            continue
        base_shape = tuple(base_patches[key][0][0].shape)
        personal_shape = tuple(personal_patches[key][0][0].shape)
        if personal_shape != base_shape:
            raise ValueError(f"{key}: the personal model's weight is {personal_shape} but SD-1.5's is {base_shape}; "
                             "both must be plain SD-1.5 text-to-image models (4 input channels)")
        no_tau = _same_weight(base_patches[key], personal_patches[key])  # e.g. SD-1.5 and SD-1.5 + LoRA
        if no_tau and alpha == 1.0:
            continue  # θ_inpaint exactly
        if base_shape == shape:
            patched.add_patches({key: base_patches[key]}, (1.0 - alpha) if no_tau else (1.0 - alpha - beta), alpha)
            if not no_tau:
                patched.add_patches({key: personal_patches[key]}, beta)
        elif len(shape) == 4 and base_shape[0] == shape[0] and base_shape[2:] == shape[2:] and base_shape[1] < shape[1]:
            base = _evaluate(base_patches[key], key)
            tau = 0.0 if no_tau else _evaluate(personal_patches[key], key) - base
            delta = torch.zeros(shape, dtype=torch.float32)
            delta[:, : base_shape[1]] = (1.0 - alpha) * base + beta * tau
            patched.add_patches({key: (delta,)}, 1.0, alpha)
            padded.append(key)
        else:
            raise ValueError(f"{key}: SD-1.5 weight {base_shape} does not fit the inpainting weight {shape}; "
                             "sd15 and personal must be SD-1.5 models, inpaint an SD-1.5 inpainting model")
    if len(missing) == len(target):
        raise ValueError("the SD-1.5 and personal MODELs share no U-Net weights with the inpainting MODEL")
    if missing:
        logger.warning("CoCoCo Task Vector: %d inpainting weights have no SD-1.5/personal counterpart and stay as "
                       "they are (e.g. %s)", len(missing), ", ".join(missing[:4]))
    return patched, {"patched": len(target) - len(missing), "zero_padded": padded, "missing": missing}
