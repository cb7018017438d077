"""The pack's models under ComfyUI's model management, with the REAL ComfyUI modules in this process
(``COMFYUI_DIR``; see tests/comfyui_server.py; the server-side checks are in tests/test_comfyui_memory_server.py).

ComfyUI with ``--cpu`` treats the CPU as its device and never evicts for it (``load_models_gpu`` and
``free_memory`` skip ``torch.device("cpu")``). To see eviction on this machine the tests make ComfyUI's device
``torch.device("cpu", 0)`` (the same memory, but not equal to ``torch.device("cpu")``, so ComfyUI manages it like
an accelerator) and monkeypatch ``comfy.model_management.get_free_memory`` for it: a simulated budget minus the
weights ComfyUI lists as loaded there. Everything else is ComfyUI's own code: ``load_models_gpu``,
``free_memory``, ``unload_all_models``, ``LoadedModel``, ``ModelPatcher``.
"""
import gc
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

import pytest
import torch

import comfyui_server as cs

cs.require()
sys.path.append(str(cs.comfyui_dir()))  # after the pack: its `nodes` package, not ComfyUI's nodes.py

import comfy.cli_args  # noqa: E402

BASE = Path(tempfile.mkdtemp(prefix="cococo-mm-base-"))
comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets, before model_management picks a device
comfy.cli_args.args.base_directory = str(BASE)  # as `--base-directory`: models/ and input/ under BASE
import folder_paths  # noqa: E402,F401
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402

assert "nodes" not in sys.modules, "the pack was imported before ComfyUI's functions were recorded"
BEFORE = {name: value for name, value in vars(mm).items() if callable(value)}

import nodes  # noqa: E402  (the pack: registers its model folders, as ComfyUI's custom-node loader imports it)

_COMFY = {name: module for name, module in sys.modules.items() if name == "folder_paths" or name.startswith("comfy")}
import test_workflows as tw  # noqa: E402  (the tiny models and input files the workflows name)
import tiny_models as tiny_models_module  # noqa: E402

sys.modules.update(_COMFY)  # workflow_executor takes ComfyUI's modules out of sys.modules; this test runs in them
from nodes import comfy_adapter  # noqa: E402

DEVICE = torch.device("cpu", 0)
GIB = 1 << 30
CLASSES = nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module", autouse=True)
def install_tiny_models():
    tw.install_test_files(BASE)
    tw._install_mask_models(BASE)
    tw._install_lgvi_models(BASE)
    shutil.copytree(tiny_models_module.clip_folder(), BASE / "models" / "clip_vision" / "clip-vit-large-patch14")


@pytest.fixture
def budget(monkeypatch):
    """ComfyUI's device is DEVICE with ``budget["bytes"]`` of memory (what is loaded there counts against it)."""
    state = {"bytes": 64 * GIB}
    real_free = mm.get_free_memory

    def get_free_memory(dev=None, torch_free_too=False):
        dev = DEVICE if dev is None else torch.device(dev)
        if dev != DEVICE:
            return real_free(dev, torch_free_too)
        used = sum(m.model_loaded_memory() for m in mm.current_loaded_models if m.device == DEVICE and m.model)
        free = max(0, state["bytes"] - used)
        return (free, free) if torch_free_too else free

    monkeypatch.setattr(mm, "get_torch_device", lambda: DEVICE)
    monkeypatch.setattr(mm, "get_free_memory", get_free_memory)
    mm.unload_all_models()
    yield state
    mm.unload_all_models()
    comfy_adapter.MODEL_CACHE.release()


def call(node_type: str, **inputs):
    """Run a node's function with the defaults of its INPUT_TYPES for every input not given."""
    node = CLASSES[node_type]
    spec = node.INPUT_TYPES()
    defaults = {name: options[1]["default"] for group in ("required", "optional") for name, options in
                spec.get(group, {}).items() if len(options) > 1 and "default" in options[1]}
    result = getattr(node(), node.FUNCTION)(**{**defaults, **inputs})
    return result["result"] if isinstance(result, dict) else result


def frames():
    return torch.rand(tw.FRAMES, tw.SIZE, tw.SIZE, 3, generator=torch.Generator().manual_seed(0))


def run_cococo():
    (model,) = call("CoCoCoModelLoader", base_model="diffusers/stable-diffusion-v1-5-inpainting",
                    motion_model="cococo_official", precision="auto", offload=False)
    mask = torch.zeros(tw.FRAMES, tw.SIZE, tw.SIZE)
    mask[:, 16:40, 20:44] = 1
    call("CoCoCoSampler", cococo_pipe=model, images=frames(), mask=mask, prompt="a cat", negative_prompt="", steps=1,
         cfg=2.0, seed=0)
    return model.pipeline


def run_lgvi():
    (pipe,) = call("CoCoCoLGVILoader", lgvi_model="lgvi", precision="auto")
    call("CoCoCoLGVIRemove", lgvi_pipe=pipe, images=frames(), expression="remove the dog", steps=1)
    return pipe


def loaded():
    return [m.model for m in mm.current_loaded_models if m.model is not None]


def is_loaded(patcher) -> bool:
    return any(patcher is p for p in loaded())


def test_loading_the_pack_replaces_no_model_management_function():
    after = {name: value for name, value in vars(mm).items() if callable(value)}
    assert after.keys() == BEFORE.keys()
    assert [name for name in BEFORE if after[name] is not BEFORE[name]] == []
    assert mm.unload_all_models.__module__ == "comfy.model_management"


def test_after_a_run_the_models_are_loaded_until_comfyui_frees_them(budget):
    pipeline = run_cococo()
    patchers = comfy_adapter.patchers_of(pipeline)
    assert [type(p.model).__name__ for p in patchers] == ["CoCoCo_unet", "CoCoCo_vae", "CoCoCo_text_encoder"]
    assert all(isinstance(p, comfy.model_patcher.ModelPatcher) and is_loaded(p) for p in patchers)
    assert all(p.loaded_size() == p.model_size() > 0 and p.current_loaded_device() == DEVICE for p in patchers)
    mm.free_memory(1e30, DEVICE)  # another node asks ComfyUI for all of the device
    assert not any(is_loaded(p) for p in patchers)
    assert all(p.loaded_size() == 0 and p.current_loaded_device() == mm.unet_offload_device() for p in patchers)
    run_cococo()  # loads again, from RAM
    assert all(is_loaded(p) for p in patchers)
    mm.unload_all_models()  # what /free and the Unload models button call
    assert not any(is_loaded(p) for p in patchers)


def test_mask_and_metrics_models_are_loaded_through_comfyui(budget):
    (dino,) = call("CoCoCoGroundingDinoLoader", model_name=comfy_adapter.list_models("grounding-dino")[0],
                   precision="fp32")
    (sam,) = call("CoCoCoSamLoader", model_name=comfy_adapter.list_models("sams")[0], precision="fp32")
    call("CoCoCoMaskFromText", images=frames(), grounding_dino=dino, sam=sam, text="the dog", box_threshold=0.0,
         detection_size=256)
    video = frames()
    call("CoCoCoVideoMetrics", original=video, result=video, mask=torch.zeros(tw.FRAMES, tw.SIZE, tw.SIZE),
         prompt="a dog", clip_model="clip-vit-large-patch14", flow="none")
    names = {type(p.model).__name__ for p in loaded()}
    assert {"GroundingDINO_model", "SAM_model", "MetricsCLIP_clip"} <= names
    # the metrics node loads its CLIP for itself: the pack's cache holds it until ComfyUI unloads it (/free)
    clip = weakref.ref(next(v for v in comfy_adapter.MODEL_CACHE.values() if hasattr(v, "visual_projection")))
    mm.unload_all_models()
    gc.collect()
    assert clip() is None
    assert {type(p.model).__name__ for p in loaded()} == set()


def test_a_second_pipeline_offloads_the_first_when_both_do_not_fit(budget):
    budget["bytes"] = int(mm.minimum_inference_memory())  # room for a run's working memory, not for two models
    cococo = comfy_adapter.patchers_of(run_cococo())
    assert all(is_loaded(p) for p in cococo)
    lgvi = comfy_adapter.patchers_of(run_lgvi())
    assert all(is_loaded(p) for p in lgvi)
    assert not any(is_loaded(p) for p in cococo)  # ComfyUI evicted them to make room


def test_the_packs_cache_lets_a_loader_output_go_with_comfyuis_node_cache(budget):
    node_cache = [run_cococo()]  # what ComfyUI's node cache keeps of the loader's output
    pipeline = weakref.ref(node_cache[0])
    assert comfy_adapter.MODEL_CACHE.values() == [pipeline()] and loaded()
    node_cache.clear()  # ComfyUI dropped it (Free model and node cache): nothing of the pack keeps it
    gc.collect()
    assert pipeline() is None and not comfy_adapter.MODEL_CACHE.values()
    assert loaded() == []  # and ComfyUI's list forgot its patchers


def test_with_room_for_both_both_stay_loaded(budget):
    cococo = comfy_adapter.patchers_of(run_cococo())
    lgvi = comfy_adapter.patchers_of(run_lgvi())
    assert all(is_loaded(p) for p in cococo + lgvi)

