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


# --- core node doubles ---------------------------------------------------------------------------

class Video:
    """Stands in for ComfyUI's ``VideoFromFile`` / ``VideoFromComponents`` (type ``VIDEO``)."""

    def __init__(self, images: torch.Tensor, fps: float):
        self.images, self.fps = images, fps


class _Core:
    """Base of the doubles: the folders come from the fake ``folder_paths``."""

    @staticmethod
    def _dir(kind: str) -> Path:
        import folder_paths

        return Path(getattr(folder_paths, f"get_{kind}_directory")())

    @classmethod
    def _input_files(cls) -> list[str]:
        folder = cls._dir("input")
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _read_frames(path: Path) -> torch.Tensor:
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(path, index=None))
    if frames.ndim == 3:
        frames = frames[None]
    return torch.from_numpy(frames[..., :3].astype(np.float32) / 255.0)


class LoadVideo(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (cls._input_files(), {"video_upload": True})}}

    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "load"

    def load(self, file):
        return (Video(_read_frames(self._dir("input") / file), 8.0),)


class GetVideoComponents(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO", {"tooltip": "The video to extract components from."})}}

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "split"

    def split(self, video):
        return (video.images, None, float(video.fps))


class CreateVideo(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
            "optional": {"audio": ("AUDIO",)},
        }

    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    def create(self, images, fps, audio=None):
        return (Video(images, fps),)


class SaveVideo(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("VIDEO",),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (["auto", "mp4"], {"default": "auto"}),
                "codec": (["auto", "h264"], {"default": "auto"}),
            }
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    def save(self, video, filename_prefix, format, codec):
        return _save_frames(self._dir("output"), filename_prefix, video.images)


def _save_frames(folder: Path, prefix: str, images: torch.Tensor) -> dict:
    target = folder / f"{prefix}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, images.cpu().numpy())
    return {"ui": {"saved": [str(target)]}, "result": ()}


class LoadImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (cls._input_files(), {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        rgba = np.asarray(Image.open(self._dir("input") / image).convert("RGBA"), dtype=np.float32) / 255.0
        return torch.from_numpy(rgba[None, ..., :3].copy()), torch.from_numpy(1.0 - rgba[None, ..., 3])


class LoadImageMask(_Core):
    _CHANNELS = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (cls._input_files(), {"image_upload": True}), "channel": (cls._CHANNELS,)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    def load_image(self, image, channel):
        rgba = np.asarray(Image.open(self._dir("input") / image).convert("RGBA"), dtype=np.float32) / 255.0
        values = rgba[..., "rgba".index(channel[0])]
        return (torch.from_numpy(1.0 - values if channel == "alpha" else values.copy())[None],)


class PreviewImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    def save_images(self, images):
        return _save_frames(self._dir("output"), "preview", images)


class SaveImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    def save_images(self, images, filename_prefix):
        return _save_frames(self._dir("output"), filename_prefix, images)


CORE_NODES = {cls.__name__: cls for cls in (LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, LoadImage,
                                            LoadImageMask, PreviewImage, SaveImage)}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


# --- API-format prompt: validation and execution (as ComfyUI's execution.py does it) -------------

class PromptError(ValueError):
    """A prompt that ComfyUI would refuse before running it; the message lists every problem."""


def input_specs(node_class) -> dict:
    """name -> (type, options, category) in declaration order (required first)."""
    declared = node_class.INPUT_TYPES()
    specs = {}
    for category in ("required", "optional"):
        for name, spec in declared.get(category, {}).items():
            specs[name] = (spec[0], spec[1] if len(spec) > 1 else {}, category)
    return specs


def output_type(prompt: dict, classes: dict, link) -> str:
    source = prompt[str(link[0])]
    return classes[source["class_type"]].RETURN_TYPES[link[1]]


def validate(prompt: dict, classes: dict) -> None:
    errors = []
    for node_id, node in prompt.items():
        if node["class_type"] not in classes:
            errors.append(f"node {node_id}: unknown node type {node['class_type']!r}")
            continue
        node_class = classes[node["class_type"]]
        validate_names = []
        if hasattr(node_class, "VALIDATE_INPUTS"):
            import inspect

            validate_names = inspect.getfullargspec(node_class.VALIDATE_INPUTS).args
        constants = {}
        for name, (kind, options, category) in input_specs(node_class).items():
            where = f"node {node_id} ({node['class_type']}) input {name!r}"
            if name not in node["inputs"]:
                if category == "required":
                    errors.append(f"{where}: required input is missing")
                continue
            value = node["inputs"][name]
            if isinstance(value, list):
                if str(value[0]) not in prompt:
                    errors.append(f"{where}: linked to missing node {value[0]}")
                    continue
                found = output_type(prompt, classes, value)
                expected = "COMBO" if isinstance(kind, list) else kind
                if found != expected and "*" not in (found, expected):
                    errors.append(f"{where}: expects {expected}, linked to a {found} output")
                continue
            constants[name] = value
            if name in validate_names:
                continue
            if isinstance(kind, list):
                if value not in kind:
                    errors.append(f"{where}: value {value!r} not in {kind}")
            elif kind in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or (kind == "INT" and not isinstance(value, int)):
                    errors.append(f"{where}: {value!r} is not {kind}")
                elif value < options.get("min", value) or value > options.get("max", value):
                    errors.append(f"{where}: {value} outside [{options.get('min')}, {options.get('max')}]")
            elif kind == "STRING" and not isinstance(value, str) or kind == "BOOLEAN" and not isinstance(value, bool):
                errors.append(f"{where}: {value!r} is not {kind}")
            elif kind not in WIDGET_TYPES:
                errors.append(f"{where}: a {kind} input needs a link, got the constant {value!r}")
        if validate_names:
            arguments = {name: constants[name] for name in validate_names[1:] if name in constants}
            result = node_class.VALIDATE_INPUTS(**arguments)
            if result is not True:
                errors.append(f"node {node_id} ({node['class_type']}): {result}")
    if errors:
        raise PromptError("prompt failed validation:\n" + "\n".join(errors))


def execute(prompt: dict, classes: dict) -> dict:
    """Validate, then run every node once in dependency order; returns node id -> (outputs, ui)."""
    validate(prompt, classes)
    done: dict = {}

    def run(node_id: str):
        if node_id in done:
            return done[node_id][0]
        node = prompt[node_id]
        arguments = {
            name: run(str(value[0]))[value[1]] if isinstance(value, list) else value
            for name, value in node["inputs"].items()
        }
        node_class = classes[node["class_type"]]
        result = getattr(node_class(), node_class.FUNCTION)(**arguments)
        ui = None
        if isinstance(result, dict):
            result, ui = tuple(result.get("result", ())), result.get("ui")
        if len(result) != len(node_class.RETURN_TYPES):
            raise AssertionError(f"node {node_id} returned {len(result)} values for {len(node_class.RETURN_TYPES)} outputs")
        done[node_id] = (tuple(result), ui)
        return done[node_id][0]

    for node_id in sorted(prompt, key=int):
        run(node_id)
    return done
