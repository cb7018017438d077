"""CoCoCo model loader and video-inpainting sampler nodes (thin adapters over ``cococo_core.pipeline``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import comfy_adapter as comfy
from . import memory_estimate, memory_options, model_filters
from .common import (CATEGORY, COCOCO_PIPE, check_model, files_changed, frames_in, frames_out, mask_for_video,
                     model_input, on_execution_device, precision_input, progress, resize_mask_input, seed_input,
                     text_input)

BASE_KEYS = ("checkpoints", "diffusers")


@dataclass
class CoCoCoModel:
    """What travels as COCOCO_PIPE: the pipeline plus where it came from, so personalization can be
    recomputed from the files and saved (``recipe`` is the task-vector merge applied, if any)."""

    pipeline: object
    base: Path
    motion: Path
    recipe: object = None
    report: str = ""
    lineage: tuple = field(default=())

    @property
    def patcher(self):
        """The U-Net's ComfyUI ModelPatcher (ComfyUI's RAM-pressure node cache recognises models by it)."""
        return getattr(self.pipeline, "patcher", None)


def base_model_names() -> list[str]:
    """Inpainting bases: single files from models/checkpoints and folders from models/diffusers, as ``<key>/<name>``."""
    return [f"{key}/{name}" for key in BASE_KEYS for name in comfy.list_models(key, model_filters.inpainting_base)]


def split_base_name(base_model: str) -> tuple[str, str]:
    key, _, name = str(base_model).replace("\\", "/").partition("/")
    if key not in BASE_KEYS or not name:
        raise ValueError(f"base model {base_model!r} must start with 'checkpoints/' (a single file) or 'diffusers/' "
                         "(a diffusers folder)")
    return key, name


def resolve_base(base_model: str) -> tuple[Path, Path | None]:
    """(path, CLIP tokenizer folder or None); single files need a tokenizer from outside the file."""
    key, name = split_base_name(base_model)
    path = comfy.resolve_model(key, name)
    if key == "diffusers":
        return path, None
    tokenizer = comfy.clip_tokenizer_dir()
    if tokenizer is None:
        raise FileNotFoundError(comfy.missing_tokenizer_message())
    return path, tokenizer


def manage_pipeline(pipeline):
    """Hand a ``CoCoCoPipeline``'s modules to ComfyUI's model management: the U-Net, and the VAE and text encoder
    unless the pipeline offloads them itself (then they visit the device only while they run, and their bytes
    count as the run's working memory, see :func:`run_memory`). Once per pipeline; returns it."""
    parts = {"unet": pipeline.unet}
    if not pipeline.offload:
        parts.update(vae=pipeline.vae, text_encoder=pipeline.text_encoder)
    return comfy.manage(pipeline, parts, name="CoCoCo")


def load_pipeline(base_model: str, motion_model: str, precision: str, offload: bool):
    """A :class:`CoCoCoModel` around a cached ``CoCoCoPipeline``, loaded on ComfyUI's offload device and handed to
    its model management (:func:`manage_pipeline`), in the dtypes ComfyUI picks for a U-Net and a VAE on its
    device unless ``precision`` says otherwise."""
    base, tokenizer = resolve_base(base_model)
    motion = comfy.resolve_model("cococo", motion_model)
    device = comfy.torch_device()
    dtype = comfy.model_dtype(precision, device)
    vae_dtype = comfy.model_dtype(precision, device, kind="vae")
    key = (comfy.file_signature(base), comfy.file_signature(motion), str(dtype), str(vae_dtype), bool(offload))

    def load():
        from cococo_core.pipeline import CoCoCoPipeline

        return manage_pipeline(CoCoCoPipeline.from_pretrained(
            str(base), str(motion), tokenizer=tokenizer and str(tokenizer), device=comfy.offload_device(),
            dtype=dtype, vae_dtype=vae_dtype, offload=offload))

    pipeline = comfy.MODEL_CACHE.get_or_load("cococo_pipe", key, load)
    return CoCoCoModel(pipeline, base, motion, lineage=key)


def _bytes(module) -> int:
    return 0 if module is None else sum(t.nbytes for t in module.state_dict().values())


def run_memory(pipeline, images, *, width: int = 0, height: int = 0, cfg: float = 14.0, context_length: int = 0,
               split_cfg: bool = False, frame_chunk: int | None = None) -> int:
    """Bytes of working memory a CoCoCo run of ``images`` needs besides the loaded weights
    (:func:`memory_estimate.cococo_run_bytes` at the working size), plus the VAE and text encoder when the
    pipeline offloads them (they then visit the device during the run)."""
    from cococo_core.pipeline.frames import plan_geometry

    frames, in_h, in_w = images.shape[:3]
    geometry = plan_geometry(in_h, in_w, work_width=width or None, work_height=height or None)
    work_h, work_w = geometry.padded_hw
    unet_dtype = next(pipeline.unet.parameters()).dtype
    vae_dtype = next(pipeline.vae.parameters()).dtype
    need = memory_estimate.cococo_run_bytes(
        work_w, work_h, frames, frame_chunk=frame_chunk or pipeline.unet.frame_chunk, split_cfg=split_cfg,
        guidance=cfg > 1, context_length=context_length or None, dtype=unet_dtype, vae_dtype=vae_dtype,
        vae_frames=pipeline.vae_chunk)
    if pipeline.offload:
        need += max(_bytes(pipeline.vae), _bytes(pipeline.text_encoder))
    return need


class CoCoCoModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base_model": (base_model_names(), {"tooltip": "SD-1.5-inpainting base (9 input channels): a single "
                               "file from models/checkpoints/ or a diffusers folder from models/diffusers/."}),
                "motion_model": model_input("cococo", "CoCoCo motion weights: the official folder with model_0.pth"
                                            " ... model_3.pth, or one converted .safetensors."),
                "precision": precision_input(),
                "offload": ("BOOLEAN", {"default": False, "tooltip": "Keep the text encoder and the VAE on the CPU; "
                            "they visit the GPU only while encoding/decoding (less VRAM, a bit slower)."}),
            }
        }

    RETURN_TYPES = (COCOCO_PIPE,)
    RETURN_NAMES = ("cococo_pipe",)
    OUTPUT_TOOLTIPS = ("The CoCoCo video-inpainting model (SD-1.5-inpainting + 21 motion modules).",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"
    DESCRIPTION = ("Loads CoCoCo: an SD-1.5-inpainting U-Net, VAE and CLIP text encoder plus the CoCoCo motion modules "
                   "(damped global attention). The loaded model is kept in memory for the next runs.")

    # ComfyUI attaches a VALIDATE_INPUTS message to every input the method names: name only the motion model
    # (whose message says where to get it); base_model gets ComfyUI's own per-input list check.
    @classmethod
    def VALIDATE_INPUTS(cls, motion_model):
        return check_model("cococo", motion_model)

    @classmethod
    def IS_CHANGED(cls, base_model, motion_model, **_):
        try:
            base = split_base_name(base_model)
        except ValueError:
            return ""
        return files_changed(base, ("cococo", motion_model))

    def load(self, base_model, motion_model, precision, offload):
        return (load_pipeline(base_model, motion_model, precision, offload),)


class CoCoCoSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cococo_pipe": (COCOCO_PIPE, {"tooltip": "The model from CoCoCo Model Loader (or CoCoCo Personalize)."}),
                "images": ("IMAGE", {"tooltip": "The video frames to inpaint, one IMAGE per frame."}),
                "mask": ("MASK", {"tooltip": "Where to inpaint (1 = fill): one mask per frame, or a single mask "
                         "used for every frame. Same size as the frames (or turn on resize_mask)."}),
                "prompt": text_input("What should appear in the masked region."),
                "negative_prompt": text_input("What should not appear (the unconditional side of guidance)."),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "DDIM denoising steps (CoCoCo: 50)."}),
                "cfg": ("FLOAT", {"default": 14.0, "min": 1.0, "max": 100.0, "step": 0.1, "round": 0.01,
                        "tooltip": "Classifier-free guidance scale (CoCoCo demo: 14; 1 disables guidance)."}),
                "seed": seed_input(),
                "context_length": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Frames per temporal window. "
                                   "0: the whole video if the motion modules support it, else the longest window that "
                                   "fits."}),
                "context_overlap": ("INT", {"default": -1, "min": -1, "max": 63, "tooltip": "Frames shared by "
                                    "neighbouring windows (blended). -1: a quarter of the window length."}),
                "mask_dilate": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Grow the mask by this many "
                                "pixels before inpainting (the official demo used 12)."}),
                "paste_back": ("BOOLEAN", {"default": True, "tooltip": "Return the original pixels outside the "
                               "(grown, feathered) mask, so the background stays untouched."}),
                "paste_dilate": ("INT", {"default": 8, "min": 0, "max": 256, "tooltip": "Paste-back: generated "
                                 "pixels are kept this many pixels beyond the mask."}),
                "paste_feather": ("INT", {"default": 8, "min": 0, "max": 256, "tooltip": "Paste-back: width in "
                                  "pixels of the blend between generated and original pixels."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working width in "
                          "pixels (0: the frames' own; set one of width/height to keep the aspect). The result comes "
                          "back at the input size."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working height in "
                           "pixels (0: the frames' own)."}),
            },
            "optional": {
                "long_prompt": (["truncate", "chunks"], {"default": "truncate", "tooltip": "Prompts over 77 tokens: "
                                "truncate (as the official code; the dropped words are logged) or chunks (75-token "
                                "chunks encoded separately and concatenated, as ComfyUI and A1111 do)."}),
                "frame_chunk": memory_options.frame_chunk_input(),
                "split_cfg": memory_options.split_cfg_input(),
                "resize_mask": resize_mask_input(),
            },
        }

    SEARCH_ALIASES = ["video inpaint", "inpaint video", "replace object in video", "text-guided video inpainting"]
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The inpainted frames, same count and size as the input.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Text-guided video inpainting with CoCoCo: DDIM with classifier-free guidance over all frames "
                   "at once (or overlapping temporal windows for long videos), then paste-back of the background.")

    def sample(self, cococo_pipe, images, mask, prompt, negative_prompt, steps, cfg, seed, context_length,
               context_overlap, mask_dilate, paste_back, paste_dilate, paste_feather, width, height,
               long_prompt="truncate", frame_chunk=0, split_cfg="auto", resize_mask=False):
        from cococo_core.pipeline import resolve_context
        from cococo_core.pipeline.frames import plan_geometry

        video, holes = frames_in(images), mask_for_video(mask, images, resize_mask)
        memory_options.widget_values(frame_chunk, split_cfg)  # a bad value fails before the model moves
        geometry = plan_geometry(video.shape[1], video.shape[2], work_width=width or None, work_height=height or None)
        context_length = context_length or None
        context_overlap = None if context_overlap < 0 else context_overlap
        window, _ = resolve_context(video.shape[0], *geometry.latent_hw, context_length, context_overlap)
        pipe = manage_pipeline(cococo_pipe.pipeline)
        # ComfyUI makes room for the least restrictive plan the widgets allow; the plan then fits what is free
        memory = run_memory(pipe, images, width=width, height=height, cfg=cfg, context_length=context_length or 0,
                            split_cfg=split_cfg == "split", frame_chunk=frame_chunk or None)
        with on_execution_device(pipe, memory) as device:
            pipe.to(device)  # where ComfyUI loaded the U-Net (VAE/text encoder: there too, or on the CPU if offloading)
            plan = memory_options.plan(device, *geometry.padded_hw, min(window, video.shape[0]), pipe.unet.dtype,
                                       frame_chunk=frame_chunk, split_cfg=split_cfg, guided=cfg > 1)
            with memory_options.frame_chunk(pipe.unet, plan.frame_chunk):
                frames = pipe(
                    video, holes, prompt, negative_prompt, num_inference_steps=steps, guidance_scale=cfg, seed=seed,
                    width=width or None, height=height or None, context_length=context_length,
                    context_overlap=context_overlap, split_cfg=plan.split_cfg, mask_dilate=mask_dilate,
                    paste_back=paste_back, paste_dilate=paste_dilate, paste_feather=paste_feather,
                    long_prompts=long_prompt, callback=progress("CoCoCo"), cancel=comfy.interrupt_check(),
                )
        return (frames_out(frames),)


NODE_CLASS_MAPPINGS = {"CoCoCoModelLoader": CoCoCoModelLoader, "CoCoCoSampler": CoCoCoSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoModelLoader": "CoCoCo Model Loader", "CoCoCoSampler": "CoCoCo Video Inpaint"}
