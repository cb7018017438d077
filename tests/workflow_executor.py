"""A small stand-in for ComfyUI, for the pack's tests.

- :func:`fake_comfyui` installs fake ``folder_paths``, ``comfy``, ``comfy.model_management`` and
  ``comfy.utils`` modules (same names and call signatures as ComfyUI's) into ``sys.modules``;
- ``CORE_NODES``: test doubles of the core nodes the shipped workflows use, with the real nodes'
  input specs (ComfyUI ``nodes.py`` / ``comfy_extras/nodes_video.py``) but loading and saving
  plain image files from a folder;
- :func:`execute` runs an API-format prompt through node classes the way ComfyUI does
  (topological order, ``["node_id", slot]`` links, constants from the JSON).
"""
from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class InterruptProcessingException(Exception):
    """Same name as ComfyUI's ``comfy.model_management.InterruptProcessingException``."""


def _fake_folder_paths(base: Path) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = str(base / "models")
    module.supported_pt_extensions = set(SUPPORTED_PT_EXTENSIONS)
    module.folder_names_and_paths = {
        name: ([str(base / "models" / name)], set(SUPPORTED_PT_EXTENSIONS)) for name in ("checkpoints", "loras")
    }
    module.folder_names_and_paths["diffusers"] = ([str(base / "models" / "diffusers")], {"folder"})

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name not in module.folder_names_and_paths:
            module.folder_names_and_paths[folder_name] = ([full_folder_path], set())
            return
        paths = module.folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    module.add_model_folder_path = add_model_folder_path
    module.get_folder_paths = lambda name: module.folder_names_and_paths[name][0][:]
    module.get_input_directory = lambda: str(base / "input")
    module.get_output_directory = lambda: str(base / "output")
    return module


def _fake_model_management(state: dict) -> types.ModuleType:
    module = types.ModuleType("comfy.model_management")
    module.InterruptProcessingException = InterruptProcessingException
    module.calls = state["calls"]

    def throw_exception_if_processing_interrupted():
        if state["interrupted"]:
            state["interrupted"] = False
            raise InterruptProcessingException()

    def interrupt_current_processing(value=True):
        state["interrupted"] = value

    def record(name, result=None):
        def call(*args, **kwargs):
            state["calls"].append((name, args, kwargs))
            return result
        return call

    module.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    module.interrupt_current_processing = interrupt_current_processing
    module.processing_interrupted = lambda: state["interrupted"]
    module.get_torch_device = lambda: torch.device("cpu")
    module.unet_offload_device = lambda: torch.device("cpu")
    module.intermediate_device = lambda: torch.device("cpu")
    module.unet_dtype = lambda device=None, model_params=0, supported_dtypes=(), weight_dtype=None: state["unet_dtype"]
    module.free_memory = record("free_memory")
    module.soft_empty_cache = record("soft_empty_cache")
    module.unload_all_models = record("unload_all_models")
    return module


def _fake_utils(state: dict) -> types.ModuleType:
    module = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total
            state["bars"].append(self)
            self.updates = []

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.updates.append(value)
            if state["interrupt_at"] is not None and value >= state["interrupt_at"]:
                state["interrupted"] = True  # as if the user pressed Cancel during this step

        def update(self, value):
            self.update_absolute(len(self.updates) + value)

    module.ProgressBar = ProgressBar
    return module


@contextlib.contextmanager
def fake_comfyui(base: Path, *, unet_dtype=torch.float32):
    """Make ``import folder_paths`` / ``comfy.*`` work inside the block; yields the shared state dict
    (``calls``, ``bars``, ``interrupted``, ``interrupt_at``: progress value that triggers Cancel)."""
    base = Path(base)
    state = {"calls": [], "bars": [], "interrupted": False, "interrupt_at": None, "unet_dtype": unet_dtype}
    comfy = types.ModuleType("comfy")
    (base / "comfy" / "sd1_tokenizer").mkdir(parents=True, exist_ok=True)
    comfy.__file__ = str(base / "comfy" / "__init__.py")
    comfy.__path__ = [str(base / "comfy")]
    modules = {
        "folder_paths": _fake_folder_paths(base),
        "comfy": comfy,
        "comfy.model_management": _fake_model_management(state),
        "comfy.utils": _fake_utils(state),
    }
    comfy.model_management = modules["comfy.model_management"]
    comfy.utils = modules["comfy.utils"]
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    state["modules"] = modules
    try:
        yield state
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
