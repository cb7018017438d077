"""LGVI / LGVI-I language-driven video object removal nodes (thin adapters over ``cococo_core.lgvi``)."""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import comfy_adapter as comfy
from . import memory_estimate, memory_options, model_filters
from .common import (CATEGORY, LGVI_PIPE, LGVII_CONVERSATION, LGVII_PIPE, check_model, files_changed, frames_in, frames_out, mask_out,
                     model_input, on_execution_device, precision_input, progress, seed_input, text_input)

logger = logging.getLogger(__name__)


def load_lgvi_path(path: Path, dtype: torch.dtype, text_encoder: bool, held: bool = False):
    """A cached ``LGVIPipeline`` on ComfyUI's offload device, its U-Net, VAE and text encoder handed to ComfyUI's
    model management; ``held``: loaded by a node for itself (LGVI-I chat), see ``ModelCache.get_or_load``."""
    key = (comfy.file_signature(path), str(dtype), text_encoder)

    def load():
        from cococo_core.lgvi import LGVIPipeline

        return manage_pipeline(LGVIPipeline.from_pretrained(path, device=comfy.offload_device(), dtype=dtype,
                                                            text_encoder=text_encoder))

    return comfy.MODEL_CACHE.get_or_load("lgvi_i_pipe" if held else "lgvi_pipe", key, load, held=held)


def manage_pipeline(pipeline):
    """Hand an ``LGVIPipeline``'s U-Net, VAE and text encoder to ComfyUI's model management (once)."""
    return comfy.manage(pipeline, {"unet": pipeline.unet, "vae": pipeline.vae, "text_encoder": pipeline.text_encoder},
                        name="LGVI")


def load_lgvi(lgvi_model: str, precision: str, text_encoder: bool):
    path = comfy.resolve_model("lgvi", lgvi_model)
    return load_lgvi_path(path, comfy.model_dtype(precision, comfy.torch_device()), text_encoder)


def run_memory(pipe, frames: torch.Tensor, size, window_length: int, frame_chunk: int = 0) -> int:
    """Bytes of working memory an LGVI removal of ``frames`` needs besides the loaded weights
    (:func:`memory_estimate.lgvi_run_bytes` at the working size), with the widget's ``frame_chunk`` (0, auto:
    all frames at once, the most ComfyUI should make room for; the plan then fits what is free)."""
    from cococo_core.lgvi.video_tensor import work_size

    height, width = work_size(frames.shape[1], frames.shape[2], size)
    return memory_estimate.lgvi_run_bytes(width, height, frames.shape[0], window_length=window_length,
                                          dtype=pipe.dtype, frame_chunk=frame_chunk or None)


def sampling_inputs() -> dict:
    """Widgets shared by the LGVI removal and LGVI-I chat nodes (official defaults, spec §1.10)."""
    return {
        "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Denoising steps of the checkpoint's "
                  "scheduler (official: 50)."}),
        "text_cfg": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip":
                     "Text guidance scale (official: 3.0). 1 with image_cfg 1 disables guidance."}),
        "image_cfg": ("FLOAT", {"default": 1.5, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip":
                      "Video (image) guidance scale of the InstructPix2Pix-style guidance (official: 1.5)."}),
        "seed": seed_input("Random seed of the initial noise and of the VAE posterior samples."),
        "window_length": ("INT", {"default": 24, "min": 1, "max": 256, "tooltip": "Frames per temporal window "
                          "(trained with 24); longer videos are processed in overlapping windows."}),
        "window_overlap": ("INT", {"default": 4, "min": 0, "max": 255, "tooltip": "Frames shared by neighbouring "
                           "windows (blended). Must be smaller than window_length."}),
        "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working width (0: the input "
                  "width rounded to a multiple of 8). The result comes back at the input size."}),
        "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working height (0: the "
                   "input height rounded to a multiple of 8)."}),
    }


def optional_sampling_inputs() -> dict:
    """Optional widgets of both LGVI nodes: DDIM's eta and the memory option (new, so older workflows load)."""
    return {
        "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "round": 0.001, "tooltip": "DDIM "
                "eta (0 = deterministic, 1 = DDPM-like noise). Used only when the checkpoint's scheduler/ is DDIM; "
                "the published folders ship PNDM, which takes no eta (a warning says so)."}),
        "frame_chunk": memory_options.frame_chunk_input("LGVI U-Net (spatial attention, cross-attention and "
                                                        "feed-forward)"),
    }


def working_size(frames: torch.Tensor, width: int, height: int) -> tuple[int, int] | None:
    """(width, height) for the library from the widgets (0: the input's), or None for the input size."""
    if width or height:
        return (width or frames.shape[2], height or frames.shape[1])
    return None


def unet_call(pipe, frames: torch.Tensor, size, window_length: int, frame_chunk: int) -> dict:
    """What one LGVI U-Net pass works on, for ``memory_options``. LGVI's three guidance passes always run one
    at a time (the official memory layout), so there is no split-CFG choice."""
    from cococo_core.lgvi.video_tensor import work_size

    height, width = work_size(frames.shape[1], frames.shape[2], size)
    return dict(height=height, width=width, frames=min(window_length, frames.shape[0]), dtype=pipe.dtype,
                frame_chunk=frame_chunk, lgvi=True)


@contextlib.contextmanager
def on_device_planned(pipe, frames: torch.Tensor, size, window_length: int, frame_chunk: int):
    """``pipe`` on the device (room made for it and its working memory) with its U-Net's frame_chunk for the
    block, chosen from the free memory when 0."""
    call = unet_call(pipe, frames, size, window_length, frame_chunk)
    memory = run_memory(pipe, frames, size, window_length, frame_chunk)
    with on_execution_device(manage_pipeline(pipe), memory) as device:
        plan = memory_options.plan(device, **call)
        with memory_options.frame_chunk(pipe.unet, plan.frame_chunk):
            yield pipe


def run_removal(pipe, images, *, steps, text_cfg, image_cfg, seed, window_length, window_overlap, width, height,
                eta=0.0, frame_chunk=0, **conditioning):
    """Run an ``LGVIPipeline`` on IMAGE frames; returns (IMAGE, MASK)."""
    frames = frames_in(images)
    size = working_size(frames, width, height)
    memory_options.widget_values(frame_chunk)
    with on_device_planned(pipe, frames, size, window_length, frame_chunk):
        result = pipe(frames, num_inference_steps=steps, guidance_scale=text_cfg, image_guidance_scale=image_cfg,
                      seed=seed, size=size, window_length=window_length, window_overlap=window_overlap, eta=eta,
                      callback=progress("LGVI"), cancel=comfy.interrupt_check(), **conditioning)
    mask = result.mask
    if mask is None:
        logger.warning("this LGVI checkpoint has no mask decoder: the MASK output is empty")
        mask = torch.zeros(result.frames.shape[:3])
    return frames_out(result.frames), mask_out(mask)


class CoCoCoLGVILoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_model": model_input("lgvi", "LGVI checkpoint folder (jianzongwu/lgvi: unet/, vae/, scheduler/, "
                                          "text_encoder/, tokenizer/).", model_filters.diffusion_folder),
                "precision": precision_input(),
            }
        }

    RETURN_TYPES = (LGVI_PIPE,)
    RETURN_NAMES = ("lgvi_pipe",)
    OUTPUT_TOOLTIPS = ("The LGVI referring-removal model (video U-Net with mask decoder, VAE, CLIP text encoder).",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"
    DESCRIPTION = ("Loads LGVI (Language-Driven Video Inpainting, CVPR 2024) from an official diffusers-layout "
                   "folder. The loaded model is kept in memory for the next runs.")

    @classmethod
    def VALIDATE_INPUTS(cls, lgvi_model):
        return check_model("lgvi", lgvi_model)

    @classmethod
    def IS_CHANGED(cls, lgvi_model, **_):
        return files_changed(("lgvi", lgvi_model))

    def load(self, lgvi_model, precision):
        return (load_lgvi(lgvi_model, precision, text_encoder=True),)


class CoCoCoLGVIRemove:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_pipe": (LGVI_PIPE, {"tooltip": "The model from LGVI Loader."}),
                "images": ("IMAGE", {"tooltip": "The video frames, one IMAGE per frame."}),
                "expression": text_input("What to remove, as a referring expression.", "remove the man on the left"),
                **sampling_inputs(),
            },
            "optional": {
                "negative_prompt": text_input("Text for the two unconditional guidance passes instead of the empty "
                                              "prompt (official negative_prompt): what the result should not show."),
                **optional_sampling_inputs(),
            },
        }

    SEARCH_ALIASES = ["remove object from video", "language-driven removal", "video object removal"]
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("The frames with the referred object removed, at the input size.",
                       "The region LGVI's mask decoder predicts for the removed object (1 = removed).")
    FUNCTION = "remove"
    CATEGORY = f"{CATEGORY}/LGVI"
    DESCRIPTION = ("LGVI referring video object removal: removes what a text expression refers to from every frame "
                   "and predicts its mask, without a mask input.")

    def remove(self, lgvi_pipe, images, expression, negative_prompt="", **sampling):
        if not expression.strip():
            raise ValueError("the referring expression is empty; say what to remove, e.g. 'remove the dog'")
        return run_removal(lgvi_pipe, images, text=expression, negative_prompt=negative_prompt, **sampling)


NO_CLIP = "(inside the LLaVA folder)"
QUANTIZATIONS = ("none", "8bit", "4bit")


@dataclass(frozen=True)
class LGVIIModels:
    """LGVI-I model files, loaded by the chat node in stages: LLaVA answers and is freed, then the
    (cached) LGVI-I diffusion model removes, so peak memory is the larger of the two, not their sum."""

    lgvi_path: Path
    llava_path: Path
    clip_path: Path | None
    precision: str
    quantization: str | None


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.suffix in comfy.WEIGHT_EXTENSIONS)


# LLaVA-1.5-7B's working memory for one answer: its fp16 KV cache for ~2019 tokens (docs/lgvi.md "Benchmark":
# 32 layers x 2 x 4096 x 2 bytes per token) plus the logits and activations of one step, rounded up
CHAT_WORKING_BYTES = 1 << 30


def load_chat(llava_path, llava_weights, *, clip_path=None, device=None, dtype=None, quantization=None):
    """LGVI-I's chat model (LLaVA + transfer head) under ComfyUI's model management: loaded on the offload device,
    handed to ComfyUI and loaded for the answer (ComfyUI first offloads what it needs to), freed by the library
    after the answer. 8/4-bit models (bitsandbytes) load straight onto the device and cannot move; ComfyUI only
    makes room for them."""
    from cococo_core.lgvi import LGVIChat

    if quantization is not None:
        comfy.free_memory(_weight_bytes(llava_path) + CHAT_WORKING_BYTES, device)
        return LGVIChat.load(llava_path, llava_weights, clip_path=clip_path, device=device, dtype=dtype,
                             quantization=quantization)
    chat = LGVIChat.load(llava_path, llava_weights, clip_path=clip_path, device=comfy.offload_device(), dtype=dtype)
    comfy.manage(chat, {"llava": {"model": chat.model, "transfer_head": chat.transfer_head}}, name="LGVII")
    comfy.load_for_run([chat], CHAT_WORKING_BYTES)
    return chat


class CoCoCoLGVIILoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_i_model": model_input("lgvi", "LGVI-I checkpoint folder (jianzongwu/lgvi-i: unet/, vae/, "
                                            "scheduler/ and llava/llava_weights.pth).", model_filters.lgvi_i_folder),
                "llava_model": (comfy.list_models("lgvi", model_filters.llava_folder), {"tooltip": "LLaVA-1.5-7B folder: llava-hf/llava-1.5-7b-hf, or the original "
                                "liuhaotian/llava-v1.5-7b (then also give the CLIP vision folder). Looked up in "
                                "models/lgvi/."}),
                "clip_vision_model": ([NO_CLIP] + comfy.list_models("lgvi", model_filters.clip_vision_folder), {"default": NO_CLIP, "tooltip": "CLIP ViT-L/14-336 folder "
                                      "(openai/clip-vit-large-patch14-336), needed only for the original LLaVA layout."}),
                "precision": precision_input(),
                "quantization": (list(QUANTIZATIONS), {"default": "none", "tooltip": "Load LLaVA in 8 or 4 bits "
                                 "(needs bitsandbytes and a CUDA GPU; llava-hf folders only)."}),
            }
        }

    RETURN_TYPES = (LGVII_PIPE,)
    RETURN_NAMES = ("lgvi_i",)
    OUTPUT_TOOLTIPS = ("The LGVI-I model files; the chat node loads LLaVA and the diffusion model in turn.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"
    DESCRIPTION = ("Selects LGVI-I (interactive LGVI): an LGVI-I diffusion checkpoint and LLaVA-1.5. Nothing heavy "
                   "is loaded here; the chat node loads LLaVA, answers, frees it, then removes.")

    # One input named (ComfyUI repeats the message on every named input); LLaVA and CLIP get ComfyUI's list check.
    @classmethod
    def VALIDATE_INPUTS(cls, lgvi_i_model):
        return check_model("lgvi", lgvi_i_model)

    def load(self, lgvi_i_model, llava_model, clip_vision_model, precision, quantization):
        comfy.model_dtype(precision, comfy.torch_device())  # reject a bad value now
        clip = None if clip_vision_model == NO_CLIP else comfy.resolve_model("lgvi", clip_vision_model)
        return (LGVIIModels(comfy.resolve_model("lgvi", lgvi_i_model), comfy.resolve_model("lgvi", llava_model), clip,
                            precision, None if quantization == "none" else quantization),)


class CoCoCoLGVIChat:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_i": (LGVII_PIPE, {"tooltip": "The model files from LGVI-I Loader."}),
                "images": ("IMAGE", {"tooltip": "The video frames; LLaVA sees the first one."}),
                "request": text_input("Your request in plain words; LGVI-I decides what to remove.",
                                      "There is a bird on the left that distracts from the view. Can you remove it?"),
                "temperature": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip":
                                "LLaVA sampling temperature (official: 0.2; 0 = greedy)."}),
                "max_new_tokens": ("INT", {"default": 1024, "min": 1, "max": 4096, "tooltip": "Longest reply LLaVA "
                                   "may write."}),
                **sampling_inputs(),
            },
            "optional": {
                "conversation": (LGVII_CONVERSATION, {"tooltip": "Connect the conversation output of another LGVI-I "
                                 "Chat Removal node to ask a follow-up in the same conversation (e.g. 'what about the "
                                 "other dog?'); LLaVA then sees the earlier turns and that conversation's first frame."}),
                **optional_sampling_inputs(),
            },
        }

    SEARCH_ALIASES = ["chat removal", "llava removal", "remove object by request"]
    RETURN_TYPES = ("STRING", "STRING", "IMAGE", "MASK", LGVII_CONVERSATION)
    RETURN_NAMES = ("reply", "removal_phrase", "images", "mask", "conversation")
    OUTPUT_TOOLTIPS = ("LLaVA's answer to the request.", "The removal phrase inside the reply's {{prompt}} marker "
                       "(empty if the reply has none).", "The frames with the object removed.",
                       "The predicted mask of the removed object (1 = removed).",
                       "The conversation so far, for a follow-up request in another LGVI-I Chat Removal node.")
    FUNCTION = "chat"
    CATEGORY = f"{CATEGORY}/LGVI"
    DESCRIPTION = ("LGVI-I interactive removal: LLaVA-1.5 reads the request and the first frame, answers, and its "
                   "answer conditions the LGVI-I diffusion model that removes the object and predicts its mask. "
                   "Chain the conversation output into another chat node for follow-up requests.")

    def chat(self, lgvi_i, images, request, temperature, max_new_tokens, conversation=None, eta=0.0, frame_chunk=0,
             **sampling):
        from cococo_core.lgvi import remove_with_chat

        if not request.strip():
            raise ValueError("the request is empty; ask for what to remove, e.g. 'please remove the dog'")
        memory_options.widget_values(frame_chunk)
        device = comfy.torch_device()
        dtype = comfy.model_dtype(lgvi_i.precision, device)
        frames = frames_in(images)
        size = working_size(frames, sampling["width"], sampling["height"])
        cancel = comfy.interrupt_check()
        with contextlib.ExitStack() as stack:
            def diffusion_model(path, **_):  # after the chat model is freed: the cached pipeline, on the device
                pipe = load_lgvi_path(Path(path), dtype, text_encoder=False, held=True)
                return stack.enter_context(on_device_planned(pipe, frames, size, sampling["window_length"], frame_chunk))

            result = remove_with_chat(
                frames, request, lgvi_path=lgvi_i.lgvi_path, llava_path=lgvi_i.llava_path, clip_path=lgvi_i.clip_path,
                # a copy: the follow-up must not grow the conversation ComfyUI cached as the earlier node's output
                session=copy.deepcopy(conversation),
                device=device, dtype=dtype, quantization=lgvi_i.quantization, seed=sampling["seed"],
                temperature=temperature, max_new_tokens=max_new_tokens, chat_loader=load_chat,
                pipeline_loader=diffusion_model,
                num_inference_steps=sampling["steps"], guidance_scale=sampling["text_cfg"],
                image_guidance_scale=sampling["image_cfg"], size=size, window_length=sampling["window_length"],
                window_overlap=sampling["window_overlap"], eta=eta, callback=progress("LGVI-I"), cancel=cancel,
            )
        mask = result.mask if result.mask is not None else torch.zeros(result.frames.shape[:3])
        return result.reply, result.phrase or "", frames_out(result.frames), mask_out(mask), result.session


NODE_CLASS_MAPPINGS = {"CoCoCoLGVILoader": CoCoCoLGVILoader, "CoCoCoLGVIRemove": CoCoCoLGVIRemove,
                       "CoCoCoLGVIILoader": CoCoCoLGVIILoader, "CoCoCoLGVIChat": CoCoCoLGVIChat}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoLGVILoader": "LGVI Loader", "CoCoCoLGVIRemove": "LGVI Referring Removal",
                              "CoCoCoLGVIILoader": "LGVI-I Loader", "CoCoCoLGVIChat": "LGVI-I Chat Removal"}
