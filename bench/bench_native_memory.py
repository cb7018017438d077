"""Memory of personalization + motion: the pipeline path (CoCoCo Personalize's copy) vs the native path
(CoCoCo Task Vector + Apply Motion Model on ComfyUI MODELs), on the real ComfyUI modules.

Counts the bytes of tensor storage each step adds, by storage identity (exact, independent of allocator noise):

* pipeline: ``copy_sharing_motion`` (what CoCoCo Personalize does before merging): a deep copy of the video
  U-Net whose motion modules stay shared;
* native, node outputs: what the Task Vector and Apply Motion MODELs hold beyond the three loaded MODELs and the
  motion weights (ComfyUI patches and object references);
* native, while ComfyUI has the weights patched for sampling on the CPU (``patch_model``): the patched weights
  ComfyUI computes (on a GPU these live in VRAM and the originals stay in RAM; here both are in RAM).

The U-Net is SD-1.5's at full width (320 base channels, 768-wide text) but with one resnet per level, so three
of them fit on a shared 2-core machine; the ratios do not depend on the depth.

    COMFYUI_DIR=/path/to/ComfyUI  python bench/bench_native_memory.py

Prints a table and writes ``bench/results/bench_native_memory.json``.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(os.environ.get("COMFYUI_DIR", str(ROOT.parent / "shared" / "comfyui")))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import folder_paths  # noqa: E402

folder_paths.models_dir = tempfile.mkdtemp(prefix="cococo-bench-models-")

import comfy.model_detection  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm  # noqa: E402
from cococo_core.models import MotionModuleSet, VideoUNet, ldm_motion_layout  # noqa: E402
from nodes import comfy_native  # noqa: E402
from nodes.nodes_personalize import copy_sharing_motion  # noqa: E402

PREFIX = "model.diffusion_model."
UNET = dict(sample_size=8, out_channels=4, layers_per_block=1, block_out_channels=(320,) * 4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
GIB = 1024 ** 3


def diffusers_unet(in_channels: int, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(in_channels=in_channels, **UNET).eval()


def comfy_model(unet) -> comfy.model_patcher.ModelPatcher:
    state = diffusers_to_ldm({"unet": unet.state_dict()})
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(state, PREFIX))
    model = config.get_model(state, PREFIX)
    model.load_model_weights(state, PREFIX)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def storages(objects) -> dict[int, int]:
    """{storage pointer: bytes} of every tensor reachable from modules, dicts, lists and tuples."""
    found, seen = {}, set()

    def visit(obj):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for tensor in list(obj.parameters()) + list(obj.buffers()):
                visit(tensor)
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)

    for obj in objects:
        visit(obj)
    return found


def added(after: dict, before: dict) -> int:
    return sum(size for ptr, size in after.items() if ptr not in before)


def patcher_tensors(patcher) -> list:
    return [patcher.model, patcher.patches, patcher.object_patches, patcher.backup,
            [m.model for m in patcher.get_nested_additional_models()]]


def main() -> dict:
    inpaint_unet, sd15_unet, personal_unet = diffusers_unet(9, 0), diffusers_unet(4, 1), diffusers_unet(4, 2)
    unet_bytes = sum(p.numel() * p.element_size() for p in inpaint_unet.parameters())

    # pipeline path: the video U-Net (motion attached), then CoCoCo Personalize's copy
    from cococo_core.pipeline import CoCoCoPipeline

    video = VideoUNet(inpaint_unet)
    pipeline = CoCoCoPipeline(None, None, None, video, device="cpu")
    before = storages([pipeline.unet])
    personalized = copy_sharing_motion(pipeline)
    pipeline_copy = added(storages([personalized.unet]), before)
    motion_bytes = sum(t.numel() * t.element_size() for t in video.motion_state_dict().values())
    del personalized, pipeline
    inpaint_unet = video.release()

    # native path
    inpaint, sd15, personal = (comfy_model(u) for u in (inpaint_unet, sd15_unet, personal_unet))
    del inpaint_unet, sd15_unet, personal_unet, video
    sites = ldm_motion_layout(320, (1, 1, 1, 1), 1)
    motion = MotionModuleSet(sites, 768)
    loaded = storages(patcher_tensors(inpaint) + patcher_tensors(sd15) + patcher_tensors(personal) + [motion])
    merged, _ = comfy_native.task_vector_model(inpaint, sd15, personal, 1.0, 0.75)
    native = comfy_native.apply_motion(merged, motion)
    node_outputs = added(storages(patcher_tensors(native)), loaded)
    native.patch_model()
    try:
        while_patched = added(storages(patcher_tensors(native)), loaded)
    finally:
        native.unpatch_model()

    rows = [
        ("U-Net weights (one copy, fp32)", unet_bytes),
        ("motion weights (fp32)", motion_bytes),
        ("pipeline: CoCoCo Personalize copy", pipeline_copy),
        ("native: Task Vector + Apply Motion MODEL", node_outputs),
        ("native: while ComfyUI has the weights patched (CPU)", while_patched),
    ]
    print(f"{'what':<55} {'GiB':>8} {'× U-Net':>8}")
    for name, size in rows:
        print(f"{name:<55} {size / GIB:8.3f} {size / unet_bytes:8.3f}")
    result = {name: size for name, size in rows}
    out = ROOT / "bench" / "results" / "bench_native_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
