"""nodes/comfy_adapter.py with and without (fake) ComfyUI modules."""
import gc
import os
import sys
from pathlib import Path

import pytest
import torch

from nodes import comfy_adapter as adapter
import workflow_executor
from workflow_executor import InterruptProcessingException, fake_comfyui

from cococo_core.hooks import Cancelled, check_cancelled


@pytest.fixture
def plain_models(tmp_path, monkeypatch):
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    adapter.set_models_dir(tmp_path / "models")
    yield tmp_path / "models"
    adapter.set_models_dir(None)


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_plain_python_folders_and_listing(plain_models):
    assert not adapter.in_comfyui()
    assert adapter.model_folders("cococo") == [plain_models / "cococo"]
    _touch(plain_models / "cococo" / "motion.safetensors")
    _touch(plain_models / "cococo" / "official" / "model_0.pth")
    _touch(plain_models / "cococo" / "official" / "model_1.pth")
    _touch(plain_models / "cococo" / "notes.txt")
    _touch(plain_models / "diffusers" / "sd-inpaint" / "model_index.json")
    _touch(plain_models / "diffusers" / "sd-inpaint" / "unet" / "diffusion_pytorch_model.safetensors")
    assert adapter.list_models("cococo") == ["motion.safetensors", "official"]
    assert adapter.list_models("diffusers") == ["sd-inpaint"]
    assert adapter.list_models("loras") == []
    with pytest.raises(ValueError, match="unknown model folder key"):
        adapter.list_models("vae_approx")


def test_listing_survives_a_link_cycle(plain_models):
    _touch(plain_models / "loras" / "a" / "style.safetensors")
    os.symlink(plain_models / "loras", plain_models / "loras" / "a" / "back")
    assert adapter.list_models("loras") == ["a/style.safetensors"]


def test_models_dir_from_environment(plain_models, monkeypatch, tmp_path):
    adapter.set_models_dir(None)
    monkeypatch.setenv("COCOCO_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert adapter.model_folders("sams") == [tmp_path / "elsewhere" / "sams"]


def test_resolve_inside_folder_only(plain_models, tmp_path):
    weights = _touch(plain_models / "loras" / "style" / "anime.safetensors")
    assert adapter.resolve_model("loras", "style/anime.safetensors") == weights
    assert adapter.resolve_model("loras", "style\\anime.safetensors") == weights  # a workflow saved on Windows
    for bad in ("../loras/style/anime.safetensors", "style/../../x", str(weights), "C:\\models\\a.safetensors", ""):
        with pytest.raises(ValueError):
            adapter.resolve_model("loras", bad)
    outside = _touch(tmp_path / "secret.safetensors")
    os.symlink(outside, plain_models / "loras" / "link.safetensors")
    with pytest.raises(ValueError, match="outside that folder"):
        adapter.resolve_model("loras", "link.safetensors")


def test_missing_model_message_says_what_where_and_from_where(plain_models):
    _touch(plain_models / "cococo" / "other.safetensors")
    with pytest.raises(FileNotFoundError) as error:
        adapter.resolve_model("cococo", "cococo_motion.safetensors")
    message = str(error.value)
    assert "cococo_motion.safetensors" in message
    assert str(plain_models / "cococo") in message
    assert "github.com/zibojia/COCOCO" in message
    assert "other.safetensors" in message


def test_plain_device_dtype_and_memory(plain_models):
    assert adapter.intermediate_device() == torch.device("cpu")
    assert adapter.model_dtype("auto", torch.device("cpu")) == torch.float32
    assert adapter.model_dtype("auto", torch.device("cuda")) == torch.float16
    assert adapter.model_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        adapter.model_dtype("fp8", torch.device("cpu"))
    adapter.free_memory(10, torch.device("cpu"))  # nothing to evict outside ComfyUI
    adapter.soft_empty_cache()


def test_plain_cancel_flag(plain_models):
    cancel = adapter.interrupt_check()
    check_cancelled(cancel)
    adapter.request_cancel()
    with pytest.raises(Cancelled):
        check_cancelled(cancel)
    check_cancelled(adapter.interrupt_check())  # a new job starts uncancelled


def test_plain_progress_uses_tqdm(plain_models):
    progress = adapter.Progress("test")
    for step in range(1, 4):
        progress(step, 3, None)
    assert progress.last == (3, 3)
    assert progress._bar is not None  # a tqdm bar (silent when not on a terminal)


def test_comfyui_registration_keeps_user_paths(tmp_path):
    with fake_comfyui(tmp_path) as state:
        folder_paths = state["modules"]["folder_paths"]
        folder_paths.add_model_folder_path("cococo", "/data/user/cococo")  # from extra_model_paths.yaml
        adapter.register_model_folders()
        adapter.register_model_folders()  # idempotent
        paths, extensions = folder_paths.folder_names_and_paths["cococo"]
        assert paths == ["/data/user/cococo", str(tmp_path / "models" / "cococo")]
        assert ".safetensors" in extensions
        for key in adapter.PACK_KEYS:
            assert (tmp_path / "models" / key).is_dir()
        assert adapter.in_comfyui()
        assert adapter.model_folders("checkpoints") == [tmp_path / "models" / "checkpoints"]


def test_comfyui_devices_dtype_memory(tmp_path):
    cuda = torch.device("cuda")
    with fake_comfyui(tmp_path, unet_dtype=torch.float8_e4m3fn) as state:
        mm = state["modules"]["comfy.model_management"]
        assert adapter.torch_device() == torch.device("cpu")
        # fp8 storage: the pack's modules compute in ComfyUI's manual-cast dtype for the device (the fake GPU: fp16;
        # the real ComfyUI here runs with --cpu and answers fp32 for any device)
        assert adapter.model_dtype("auto", cuda) == mm.unet_manual_cast(torch.float8_e4m3fn, cuda)
        if not workflow_executor.REAL_MODULES:
            assert adapter.model_dtype("auto", cuda) == torch.float16
        state["unet_dtype"] = torch.bfloat16
        assert adapter.model_dtype("auto", cuda) == (mm.unet_manual_cast(torch.bfloat16, cuda) or torch.bfloat16)
        # the VAE follows ComfyUI's VAE choice, the text encoder its text-encoder choice (fp16 cast to fp32 on a CPU)
        assert adapter.default_dtype("vae", torch.device("cpu")) == torch.float32
        assert adapter.default_dtype("text_encoder", torch.device("cpu")) == torch.float32
        assert adapter.free_memory_bytes(torch.device("cpu")) == mm.get_free_memory(torch.device("cpu")) > 0
        adapter.free_memory(123, torch.device("cuda"))
        adapter.soft_empty_cache()
        names = [call[0] for call in state["calls"]]
        assert names == ["free_memory", "soft_empty_cache"]


def test_comfyui_progress_and_interrupt(tmp_path):
    with fake_comfyui(tmp_path) as state:
        progress, cancel = adapter.Progress(), adapter.interrupt_check()
        state["interrupt_at"] = 2
        with pytest.raises(InterruptProcessingException):
            for step in range(1, 5):
                check_cancelled(cancel)
                progress(step, 4, None)
        assert state["bars"][0].updates == [1, 2]
        assert state["bars"][0].total == 4


def test_comfyui_tokenizer_dir(tmp_path):
    with fake_comfyui(tmp_path):
        if workflow_executor.REAL_MODULES:  # ComfyUI's own comfy/sd1_tokenizer, found in the namespace package
            found = adapter.clip_tokenizer_dir().resolve()
            assert found == (Path(os.environ["COMFYUI_DIR"]) / "comfy" / "sd1_tokenizer").resolve()
        else:
            assert adapter.clip_tokenizer_dir() is None
        assert "clip_tokenizer" in adapter.missing_tokenizer_message()
        _touch(tmp_path / "comfy" / "sd1_tokenizer" / "vocab.json", "{}")
        _touch(tmp_path / "comfy" / "sd1_tokenizer" / "merges.txt")
        assert adapter.clip_tokenizer_dir() == tmp_path / "comfy" / "sd1_tokenizer"


class _Loaded:
    """A loaded model stand-in (weak-referenceable, as the pack's pipelines and detectors are)."""

    def __init__(self, name):
        self.name = name


def test_cache_reuses_and_evicts_outside_comfyui(plain_models):
    loads = []

    def loader(name):
        return lambda: loads.append(name) or _Loaded(name)

    cache = adapter.MODEL_CACHE
    cache.release()
    first = cache.get_or_load("pipe", "a", loader("a"))
    assert cache.get_or_load("pipe", "a", loader("a")) is first
    cache.get_or_load("pipe", "b", loader("b"))
    cache.get_or_load("gdino", "a", loader("g"))
    assert loads == ["a", "b", "g"] and len(cache) == 2  # one entry per slot by default
    del first
    gc.collect()
    assert len(cache) == 2  # nobody else keeps them outside ComfyUI: the cache holds them
    assert cache.release() == 2 and len(cache) == 0


def test_cache_inside_comfyui_keeps_only_what_comfyui_keeps(tmp_path):
    """Inside ComfyUI the node cache owns a loader's output: the pack's cache finds it while it lives and lets it
    go with it (ComfyUI's Free model and node cache then frees the RAM); register_model_folders replaces nothing."""
    cache = adapter.MODEL_CACHE
    cache.release()
    with fake_comfyui(tmp_path) as state:
        mm = state["modules"]["comfy.model_management"]
        before = {name: getattr(mm, name) for name in dir(mm) if callable(getattr(mm, name))}
        adapter.register_model_folders()
        assert {name: getattr(mm, name) for name in before} == before
        output = cache.get_or_load("pipe", "a", lambda: _Loaded("a"))
        assert cache.get_or_load("pipe", "a", lambda: _Loaded("again")) is output
        assert len(cache) == 1
        del output  # ComfyUI dropped the loader's output
        gc.collect()
        assert len(cache) == 0
        assert cache.get_or_load("pipe", "a", lambda: _Loaded("reloaded")).name == "reloaded"


def test_managed_modules_move_for_a_run_outside_comfyui(plain_models, monkeypatch):
    """Without ComfyUI, load_for_run moves a managed object's modules to the device and after_run back."""
    device = torch.device("cpu", 0)  # differs from the offload device torch.device("cpu"), and runs here
    monkeypatch.setattr(adapter, "torch_device", lambda: device)
    moves = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append((type(self).__name__, a)) or self)
    value = _Loaded("pipe")
    unet, vae = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
    assert adapter.manage(value, {"unet": unet, "vae": vae, "text_encoder": None}) is value
    patchers = adapter.patchers_of(value)
    assert len(patchers) == 2 and patchers[0].model_size() == 6 * 4 and patchers[1].model_size() == 9 * 4
    assert adapter.load_for_run([value], 10) == device
    assert moves == [("_Loaded_unet", (device,)), ("_Loaded_vae", (device,))]
    assert [p.model.device for p in patchers] == [device, device]
    adapter.after_run([value])
    assert moves[2:] == [("_Loaded_unet", (torch.device("cpu"),)), ("_Loaded_vae", (torch.device("cpu"),))]
    assert adapter.manage(value, {"unet": unet}) is value and adapter.patchers_of(value) == patchers  # once only
    with pytest.raises(ValueError, match="model management"):
        adapter.patchers_of(_Loaded("not managed"))


def test_file_signature_changes_with_content(tmp_path):
    weights = _touch(tmp_path / "m" / "a.bin", "1")
    folder_sig = adapter.file_signature(tmp_path / "m")
    file_sig = adapter.file_signature(weights)
    weights.write_text("22")
    assert adapter.file_signature(weights) != file_sig
    assert adapter.file_signature(tmp_path / "m") != folder_sig


def test_output_path_stays_in_output_folder(tmp_path):
    with fake_comfyui(tmp_path):
        first = adapter.output_path("checkpoints/merged", ".safetensors")
        assert first == tmp_path / "output" / "checkpoints" / "merged_00001_.safetensors"
        first.write_text("x")
        assert adapter.output_path("checkpoints/merged", ".safetensors").name == "merged_00002_.safetensors"
        for bad in ("../merged", "/tmp/merged"):
            with pytest.raises(ValueError):
                adapter.output_path(bad, ".safetensors")
