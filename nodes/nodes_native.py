"""Native ComfyUI path: CoCoCo on ComfyUI's own MODEL / CONDITIONING / LATENT, sampled by KSampler
(thin adapters over ``nodes.comfy_native`` and ``cococo_core.models``)."""
from __future__ import annotations

import logging

from . import comfy_adapter as comfy
from .common import CATEGORY, check_model, files_changed, frames_in, mask_for_video, model_input, resize_mask_input

logger = logging.getLogger(__name__)

NATIVE_CATEGORY = f"{CATEGORY}/native"


def _native():
    from . import comfy_native  # needs ComfyUI's modules: imported when a node runs

    return comfy_native


def motion_set_for(model, motion_model: str):
    """The motion modules for ``model``'s layout from the file ``motion_model``, in their ComfyUI ModelPatcher
    (cached per file and layout; every Apply Motion Model attaches a clone of it)."""
    from cococo_core.models import read_motion_weights

    native = _native()
    path = comfy.resolve_model("cococo", motion_model)
    sites, config = native.motion_layout(model)
    key = (comfy.file_signature(path), tuple(sites), config["context_dim"], str(native.compute_dtype(model)),
           str(model.offload_device))
    return comfy.MODEL_CACHE.get_or_load(
        "cococo_native_motion", key,
        lambda: native.motion_patcher(model, native.build_motion_set(model, read_motion_weights(path))))


class CoCoCoApplyMotionModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD-1.5 inpainting MODEL (9 input channels) from Load Checkpoint, "
                          "optionally personalized by CoCoCo Task Vector or LoRA loaders."}),
                "motion_model": model_input("cococo", "CoCoCo motion weights: the official folder with model_0.pth"
                                            " ... model_3.pth, or one converted .safetensors."),
                "beta_schedule": (["sqrt_linear", "linear", "use existing"], {"default": "sqrt_linear", "tooltip":
                                  "Noise schedule set on the MODEL. sqrt_linear (β linear in 0.00085..0.012, diffusers "
                                  "'linear') is what CoCoCo samples with; linear is SD-1.5's scaled_linear; use "
                                  "existing keeps the MODEL's."}),
            }
        }

    SEARCH_ALIASES = ["cococo motion", "video inpaint model", "motion module", "animatediff inpaint"]
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with the CoCoCo motion modules: the latent batch is now the video's frames. "
                       "Sample it with KSampler on the latents of CoCoCo Video Inpaint Conditioning.",)
    FUNCTION = "apply"
    CATEGORY = NATIVE_CATEGORY
    DESCRIPTION = ("Adds the 21 CoCoCo motion modules (damped global attention, temporal text cross-attention) to a "
                   "ComfyUI SD-1.5 inpainting MODEL through ComfyUI's patches, and sets CoCoCo's β schedule. The "
                   "motion weights are loaded and offloaded by ComfyUI's model management with the U-Net. For "
                   "long videos put ComfyUI's Context Windows (Manual) node (dim 0) after it.")

    @classmethod
    def VALIDATE_INPUTS(cls, motion_model):
        return check_model("cococo", motion_model)

    @classmethod
    def IS_CHANGED(cls, motion_model, **_):
        return files_changed(("cococo", motion_model))

    def apply(self, model, motion_model, beta_schedule):
        native = _native()
        return (native.apply_motion(model, motion_set_for(model, motion_model), beta_schedule),)


class CoCoCoVideoInpaintConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The prompt (CLIP Text Encode): what should appear in the "
                             "masked region. It is also the video-level text of the motion modules."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt (the unconditional side of CFG)."}),
                "vae": ("VAE", {"tooltip": "The SD-1.5 VAE (from the same Load Checkpoint)."}),
                "images": ("IMAGE", {"tooltip": "The video frames, one IMAGE per frame, in order."}),
                "mask": ("MASK", {"tooltip": "Where to inpaint (1 = fill): one mask per frame or one for all frames, "
                         "same size as the frames (or turn on resize_mask)."}),
            },
            "optional": {
                "resize_mask": resize_mask_input(),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the masked frames and masks attached (inpainting concat).",
                       "The negative prompt with the same attachments.",
                       "Empty latents, one per frame, for KSampler (denoise 1.0).")
    FUNCTION = "encode"
    CATEGORY = NATIVE_CATEGORY
    DESCRIPTION = ("CoCoCo's conditioning for every frame: the masked frames (1 − m)·x encoded by the VAE and the "
                   "mask downsampled by nearest, as the inpainting model's concat input; frames stay in order "
                   "along the batch, which the motion modules read as time.")

    def encode(self, positive, negative, vae, images, mask, resize_mask=False):
        device = images.device
        mask = mask_for_video(mask, images, resize_mask).to(device)
        images = frames_in(images).to(device)  # NaN and 0..255 floats refused (mask_for_video checks the mask)
        return _native().video_inpaint_conditioning(positive, negative, vae, images, mask)


class CoCoCoTaskVector:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "inpaint_model": ("MODEL", {"tooltip": "SD-1.5 inpainting MODEL (9 input channels): the base."}),
                "sd15_model": ("MODEL", {"tooltip": "Plain SD-1.5 MODEL (4 input channels): the reference both task "
                               "vectors are taken against."}),
                "personal_model": ("MODEL", {"tooltip": "Your SD-1.5 model: a DreamBooth / Civitai checkpoint, and/or "
                                   "SD-1.5 with LoRA Loader nodes applied (any LoRA format ComfyUI reads)."}),
                "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Weight of the "
                          "inpainting task vector (1: the inpainting model as it is)."}),
                "beta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Weight of the "
                         "personalization task vector θ_personal − θ_SD1.5 (the official README suggests 0.75 for "
                         "checkpoints)."}),
            }
        }

    SEARCH_ALIASES = ["task vector", "personalize", "civitai lora video", "dreambooth inpaint"]
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The personalized inpainting MODEL (patches on the inpainting model; no merged copy).",)
    FUNCTION = "merge"
    CATEGORY = NATIVE_CATEGORY
    DESCRIPTION = ("CoCoCo personalization on ComfyUI MODELs: θ = lerp(θ_SD1.5, θ_inpaint, α) + β·(θ_personal − "
                   "θ_SD1.5), with conv_in's 5 extra input channels left to the inpainting model. Built from ComfyUI "
                   "weight patches like the model-merging nodes, so LoRAs applied to personal_model are included "
                   "and no second copy of the weights is made. U-Net only: merge the CLIPs with ComfyUI's "
                   "CLIPSubtract / CLIPAdd if wanted.")

    def merge(self, inpaint_model, sd15_model, personal_model, alpha, beta):
        model, summary = _native().task_vector_model(inpaint_model, sd15_model, personal_model, alpha, beta)
        logger.info("CoCoCo Task Vector: %d U-Net weights patched, zero-padded: %s", summary["patched"],
                    ", ".join(summary["zero_padded"]) or "none")
        return (model,)


NODE_CLASS_MAPPINGS = {"CoCoCoApplyMotionModel": CoCoCoApplyMotionModel,
                       "CoCoCoVideoInpaintConditioning": CoCoCoVideoInpaintConditioning,
                       "CoCoCoTaskVector": CoCoCoTaskVector}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoApplyMotionModel": "CoCoCo Apply Motion Model",
                              "CoCoCoVideoInpaintConditioning": "CoCoCo Video Inpaint Conditioning",
                              "CoCoCoTaskVector": "CoCoCo Task Vector"}
