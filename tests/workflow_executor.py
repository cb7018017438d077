"""A small stand-in for ComfyUI, for the pack's fast tests (the real server runs in ``tests/test_comfyui_*.py``).

- :func:`fake_comfyui` installs ``folder_paths``, ``comfy``, ``comfy.model_management`` and ``comfy.utils``
  into ``sys.modules``: ComfyUI's real modules when ``COMFYUI_DIR`` names a checkout (their folders pointed at
  a scratch base directory, calls recorded on the way through), else small fakes with the same names and call
  signatures;
- ``CORE_NODES``: test doubles of the core nodes the shipped workflows use, with the real nodes'
  input specs (ComfyUI ``nodes.py`` / ``comfy_extras/nodes_video.py``) but loading and saving
  plain image files from a folder;
- :func:`execute` runs an API-format prompt through node classes the way ComfyUI does
  (topological order, ``["node_id", slot]`` links, constants from the JSON).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import workflow_layout as layout

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def real_comfyui_modules() -> dict | None:
    """ComfyUI's own ``folder_paths``, ``comfy``, ``comfy.model_management`` and ``comfy.utils`` from
    ``$COMFYUI_DIR``; None without ``COMFYUI_DIR``. Like the fakes, they are importable only inside
    :func:`fake_comfyui` (``$COMFYUI_DIR`` is on ``sys.path`` only while they are imported, and last, so ComfyUI's
    top-level ``nodes`` never shadows the pack's)."""
    folder = os.environ.get("COMFYUI_DIR")
    if not folder:
        return None
    sys.path.append(folder)
    try:
        importlib.import_module("comfy.cli_args").args.cpu = True  # as `main.py --cpu`: this test machine has no GPU
        names = ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "comfy.cli_args")
        modules = {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(folder)
    for name in names:
        del sys.modules[name]
    return modules


REAL_MODULES = real_comfyui_modules()


class _FakeInterruptProcessingException(Exception):
    """Same name as ComfyUI's ``comfy.model_management.InterruptProcessingException``."""


InterruptProcessingException = (REAL_MODULES["comfy.model_management"].InterruptProcessingException
                                if REAL_MODULES else _FakeInterruptProcessingException)


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


FAKE_FREE_MEMORY = 8 << 30  # what the fake ComfyUI reports free unless a test sets ``free_memory_bytes``


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
    module.unet_dtype = (lambda device=None, model_params=0, supported_dtypes=(), weight_dtype=None:
                         state["unet_dtype"] or torch.float32)
    # a GPU that computes in fp16 and bf16 but not fp8 (ComfyUI then casts fp8 weights to fp16), a CPU in fp32
    module.unet_manual_cast = (lambda weight_dtype, inference_device, supported_dtypes=():
                               None if weight_dtype == torch.float32 or (torch.device(inference_device).type == "cuda"
                                                                          and weight_dtype in (torch.float16, torch.bfloat16))
                               else torch.float16 if torch.device(inference_device).type == "cuda" else torch.float32)
    module.vae_dtype = lambda device=None, allowed_dtypes=(): torch.float32
    module.text_encoder_dtype = lambda device=None: torch.float16
    module.get_free_memory = lambda dev=None, torch_free_too=False: state["free_memory_bytes"] or FAKE_FREE_MEMORY
    module.free_memory = record("free_memory")
    module.soft_empty_cache = record("soft_empty_cache")
    module.unload_all_models = record("unload_all_models")
    return module


class _PlainProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total


def _recording_progress_bar(base: type, state: dict, interrupt) -> type:
    """``base`` (ComfyUI's ProgressBar or a plain one) that also records its updates in ``state["bars"]`` and
    presses Cancel (``interrupt()``) once the value reaches ``state["interrupt_at"]``."""

    class ProgressBar(base):
        def __init__(self, total, node_id=None):
            super().__init__(total, node_id)
            self.updates, self.previews = [], []
            state["bars"].append(self)

        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            self.updates.append(value)
            self.previews.append(preview)
            if state["interrupt_at"] is not None and value >= state["interrupt_at"]:
                interrupt()  # as if the user pressed Cancel during this step

        def update(self, value):
            self.update_absolute(len(self.updates) + value)

    return ProgressBar


def _fake_cli_args(state: dict) -> types.ModuleType:
    module = types.ModuleType("comfy.cli_args")
    module.args = types.SimpleNamespace(preview_method=state["preview_method"], cpu=True)
    return module


def _fake_utils(state: dict) -> types.ModuleType:
    module = types.ModuleType("comfy.utils")
    module.ProgressBar = _recording_progress_bar(_PlainProgressBar, state, lambda: state.update(interrupted=True))
    return module


@contextlib.contextmanager
def _patched(obj, **attributes):
    saved = {name: getattr(obj, name) for name in attributes}
    for name, value in attributes.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


@contextlib.contextmanager
def _installed(modules: dict):
    """``modules`` in ``sys.modules`` inside the block; what was there before afterwards."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def _real_comfyui(base: Path, state: dict):
    """ComfyUI's real modules with their folders in ``base`` (as ``--base-directory`` sets them), progress bars
    recorded, the memory calls recorded on their way to ComfyUI, and ``unet_dtype`` answered from the state
    only where a test sets it (a CPU machine cannot show ComfyUI's GPU choices)."""
    folder_paths, mm, utils = (REAL_MODULES[n] for n in ("folder_paths", "comfy.model_management", "comfy.utils"))
    models = str(base / "models")
    folders = {name: ([p.replace(folder_paths.models_dir, models, 1) for p in paths], set(exts) if isinstance(exts, set) else exts)
               for name, (paths, exts) in folder_paths.folder_names_and_paths.items()}

    def recorded(name):
        real = getattr(mm, name)

        def call(*args, **kwargs):
            result = None
            if name != "free_memory" or torch.device(args[1] if len(args) > 1 else kwargs["device"]).type != "cuda" \
                    or torch.cuda.is_available():  # a CUDA device that this machine lacks: recorded only
                result = real(*args, **kwargs)
            state["calls"].append((name, args, kwargs))  # after the call: calls it makes come first
            return result
        return call

    real_unet_dtype = mm.unet_dtype

    def unet_dtype(*args, **kwargs):
        return state["unet_dtype"] if state["unet_dtype"] is not None else real_unet_dtype(*args, **kwargs)

    real_get_free_memory = mm.get_free_memory

    def get_free_memory(*args, **kwargs):
        return state["free_memory_bytes"] or real_get_free_memory(*args, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_installed(REAL_MODULES))
        # a scratch comfy/ first on the package path, so a test can put a tokenizer in front of ComfyUI's own
        stack.enter_context(_patched(REAL_MODULES["comfy"], __path__=[str(base / "comfy"), *REAL_MODULES["comfy"].__path__]))
        stack.enter_context(_patched(folder_paths, models_dir=models, folder_names_and_paths=folders,
                                     output_directory=str(base / "output"), input_directory=str(base / "input"),
                                     temp_directory=str(base / "temp")))
        stack.enter_context(_patched(mm, unet_dtype=unet_dtype, get_free_memory=get_free_memory, **{n: recorded(n) for n in
                                     ("free_memory", "soft_empty_cache", "unload_all_models")}))
        stack.enter_context(_patched(utils, ProgressBar=_recording_progress_bar(
            utils.ProgressBar, state, lambda: mm.interrupt_current_processing(True))))
        method = REAL_MODULES["comfy.cli_args"].LatentPreviewMethod(state["preview_method"])
        stack.enter_context(_patched(REAL_MODULES["comfy.cli_args"].args, preview_method=method))
        mm.interrupt_current_processing(False)
        yield dict(REAL_MODULES)


@contextlib.contextmanager
def fake_comfyui(base: Path, *, unet_dtype=None, preview_method: str = "latent2rgb"):
    """Make ``import folder_paths`` / ``comfy.*`` work inside the block (ComfyUI's real modules when
    ``COMFYUI_DIR`` is set); yields the shared state dict (``calls``, ``bars``, ``interrupted``,
    ``interrupt_at``: progress value that triggers Cancel, ``unet_dtype``: ComfyUI's dtype choice to report,
    ``free_memory_bytes``: the free memory to report (None: ComfyUI's own figure, 8 GiB for the fakes),
    ``modules``). ``preview_method``: ComfyUI's ``--preview-method`` (the server tests run with latent2rgb)."""
    base = Path(base)
    state = {"calls": [], "bars": [], "interrupted": False, "interrupt_at": None, "unet_dtype": unet_dtype,
             "preview_method": preview_method, "free_memory_bytes": None}
    (base / "comfy" / "sd1_tokenizer").mkdir(parents=True, exist_ok=True)  # a tokenizer a test can put in front
    if REAL_MODULES is not None:
        with _real_comfyui(base, state) as modules:
            state["modules"] = modules
            yield state
        return
    comfy = types.ModuleType("comfy")  # a namespace package, as ComfyUI's: __path__ but no __file__
    comfy.__path__ = [str(base / "comfy")]
    modules = {
        "folder_paths": _fake_folder_paths(base),
        "comfy": comfy,
        "comfy.model_management": _fake_model_management(state),
        "comfy.utils": _fake_utils(state),
        "comfy.cli_args": _fake_cli_args(state),
    }
    comfy.model_management = modules["comfy.model_management"]
    comfy.utils = modules["comfy.utils"]
    comfy.cli_args = modules["comfy.cli_args"]
    state["modules"] = modules
    with _installed(modules):
        yield state


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


class MaskToImage(_Core):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"

    def mask_to_image(self, mask):
        return (mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3),)


class PreviewAny(_Core):
    """Core 'Preview Any' (comfy_extras/nodes_preview_any.py): shows any value as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "main"

    def main(self, source=None):
        return {"ui": {"text": [str(source)]}, "result": ()}


class _SpecOnly(_Core):
    """Core nodes of the native path, declared with the inputs of ComfyUI's nodes.py (names, order, widgets) so
    their workflows can be drawn and checked; they run only in the real server (tests/test_comfyui_*.py)."""

    FUNCTION = "run"

    @staticmethod
    def _models(kind: str) -> list[str]:
        import folder_paths

        folders = [Path(p) for p in folder_paths.get_folder_paths(kind)]
        return sorted(p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file())

    def run(self, **_):
        raise NotImplementedError(f"{type(self).__name__} runs only in the real ComfyUI (tests/test_comfyui_*.py)")


class CheckpointLoaderSimple(_SpecOnly):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (cls._models("checkpoints"), {})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")


class LoraLoader(_SpecOnly):
    @classmethod
    def INPUT_TYPES(cls):
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        return {"required": {"model": ("MODEL", {}), "clip": ("CLIP", {}), "lora_name": (cls._models("loras"), {}),
                             "strength_model": ("FLOAT", strength), "strength_clip": ("FLOAT", strength)}}

    RETURN_TYPES = ("MODEL", "CLIP")


class CLIPTextEncode(_SpecOnly):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})}}

    RETURN_TYPES = ("CONDITIONING",)


class KSampler(_SpecOnly):
    SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim", "uni_pc"]  # a subset of ComfyUI's lists
    SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (cls.SAMPLERS, {}), "scheduler": (cls.SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)


class VAEDecode(_SpecOnly):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}}

    RETURN_TYPES = ("IMAGE",)


CORE_NODES = {cls.__name__: cls for cls in (LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, LoadImage,
                                            LoadImageMask, PreviewImage, SaveImage, MaskToImage, PreviewAny,
                                            CheckpointLoaderSimple, LoraLoader, CLIPTextEncode, KSampler, VAEDecode)}
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


# --- UI-format (v0.4) workflows <-> API prompts, as the ComfyUI frontend converts them ----------

UPLOAD_FLAGS = ("image_upload", "video_upload")


def is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(node_class) -> list[tuple[str | None, object]]:
    """The ``widgets_values`` layout: (input name, default) per entry; None names the extra entries the
    frontend adds (the seed's 'control after generate' value, an upload button)."""
    slots, upload = [], []
    for name, (kind, options, _) in input_specs(node_class).items():
        if not is_widget(kind, options):
            continue
        default = options.get("default", kind[0] if isinstance(kind, list) and kind else None)
        slots.append((name, default))
        if options.get("control_after_generate"):
            slots.append((None, "fixed"))
        if any(options.get(flag) for flag in UPLOAD_FLAGS):
            upload = [(None, "image")]  # the upload button comes after all other widgets
    return slots + upload


def _depths(prompt: dict) -> dict:
    depth: dict = {}

    def visit(node_id):
        if node_id not in depth:
            links = [v for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(str(link[0])) for link in links), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


VIRTUAL_NODES = ("Note", "MarkdownNote")  # frontend-only nodes: never sent to the server
STATUS_TEXT_NODES = ("CoCoCoReleaseModels", "CoCoCoSaveCheckpoint", "CoCoCoConvertMotion", "CoCoCoVideoMetrics")


# Download entries for the model files core loaders name, as the frontend's missing-model dialog reads them from a
# node's ``properties.models`` (name = the widget value, url, directory = the ComfyUI model folder; frontend 1.49
# enriches a missing combo value with the entry of the same name). The pack's own loaders name the file, the folder
# and where to get it in their validation message instead (comfy_adapter.missing_model_message).
MODEL_DOWNLOADS = {
    ("CheckpointLoaderSimple", "sd-v1-5-inpainting.safetensors"): {
        "name": "sd-v1-5-inpainting.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/webui/stable-diffusion-inpainting/resolve/main/sd-v1-5-inpainting.safetensors"},
    ("CheckpointLoaderSimple", "v1-5-pruned-emaonly.safetensors"): {
        "name": "v1-5-pruned-emaonly.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"},
}


def overlapping_nodes(workflow: dict) -> list[tuple[int, int]]:
    """Pairs of node ids whose estimated boxes (title bar included) intersect."""
    boxes = [(node["id"], node["pos"][0], node["pos"][1] - layout.TITLE_HEIGHT, node["size"][0],
              node["size"][1] + layout.TITLE_HEIGHT) for node in workflow["nodes"]]
    return [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]]


def api_to_ui(prompt: dict, classes: dict, note: str | None = None) -> dict:
    """A UI-format workflow (version 0.4): nodes sized and laid out in rows by :mod:`workflow_layout`, the
    instructions ``note`` in a Note node first, a saved view that shows the whole graph."""
    depths = _depths(prompt)
    order = sorted(prompt, key=lambda n: (depths[n], int(n)))
    nodes, links = [], []
    ui_nodes = {}
    for position, node_id in enumerate(order):
        node = prompt[node_id]
        node_class = classes[node["class_type"]]
        specs = input_specs(node_class)
        inputs = []
        for name, (kind, options, _) in specs.items():
            value = node["inputs"].get(name)
            if not is_widget(kind, options) or isinstance(value, list):
                entry = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "link": None}
                if is_widget(kind, options):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
        names = getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (n, t) in enumerate(zip(names, node_class.RETURN_TYPES))]
        values = [node["inputs"].get(name, default) if name is not None else default
                  for name, default in widget_slots(node_class)]
        values = [default if name is not None and isinstance(node["inputs"].get(name), list) else value
                  for (name, default), value in zip(widget_slots(node_class), values)]
        multiline = [name for name, (k, o, _) in specs.items() if k == "STRING" and o.get("multiline")]
        texts = [(name, value) for (name, _), value in zip(widget_slots(node_class), values)
                 if name is not None and name not in multiline and not isinstance(node["inputs"].get(name), list)]
        title = node.get("_meta", {}).get("title") or ""
        size = layout.node_size(node["class_type"], title, len(inputs) + len(values) + max(len(outputs) - len(inputs), 0),
                                len(multiline), texts, node["class_type"] in STATUS_TEXT_NODES)
        ui = {"id": int(node_id), "type": node["class_type"], "pos": [0, 0], "size": size,
              "flags": {}, "order": position, "mode": 0, "inputs": inputs, "outputs": outputs,
              "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values}
        if title:
            ui["title"] = title
        downloads = [MODEL_DOWNLOADS[(node["class_type"], v)] for v in values if (node["class_type"], v) in MODEL_DOWNLOADS]
        if downloads:
            ui["properties"]["models"] = downloads
        ui_nodes[node_id] = ui
        nodes.append(ui)
    columns = [[ui_nodes[n] for n in order if depths[n] == depth] for depth in sorted(set(depths.values()))]
    if note:
        columns.insert(0, [layout.note_node(max(int(n) for n in prompt) + 1, note, len(nodes))])
        nodes.append(columns[0][0])
    view = layout.lay_out(columns)
    for node_id in order:
        for slot, entry in enumerate(ui_nodes[node_id]["inputs"]):
            value = prompt[node_id]["inputs"].get(entry["name"])
            if not isinstance(value, list):
                continue
            source = ui_nodes[str(value[0])]
            link_id = len(links) + 1
            kind = source["outputs"][value[1]]["type"]
            links.append([link_id, int(value[0]), value[1], int(node_id), slot, kind])
            entry["link"] = link_id
            source["outputs"][value[1]]["links"].append(link_id)
    for ui in nodes:
        for output in ui["outputs"]:
            output["links"] = output["links"] or None
    return {"last_node_id": max(ui["id"] for ui in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": view}, "version": 0.4}


def ui_to_api(workflow: dict, classes: dict) -> dict:
    """The API prompt the frontend would queue for a UI-format workflow (checks link types on the way)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in VIRTUAL_NODES:
            continue
        node_class = classes[node["type"]]
        slots = widget_slots(node_class)
        if len(node["widgets_values"]) != len(slots):
            raise PromptError(f"node {node['id']} ({node['type']}): {len(node['widgets_values'])} widget values, "
                              f"the node has {len(slots)}")
        inputs = {name: value for (name, _), value in zip(slots, node["widgets_values"]) if name is not None}
        specs = input_specs(node_class)
        for entry in node["inputs"]:
            if entry["name"] not in specs:
                raise PromptError(f"node {node['id']} ({node['type']}): unknown input {entry['name']!r}")
            if entry["link"] is None:
                continue
            link = links[entry["link"]]
            kind = specs[entry["name"]][0]
            expected = "COMBO" if isinstance(kind, list) else kind
            if link[3] != node["id"] or node["inputs"][link[4]] is not entry or "*" not in (expected, link[5]) and link[5] != expected:
                raise PromptError(f"link {link} does not match input {entry['name']!r} ({expected}) of node {node['id']}")
            inputs[entry["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            prompt[str(node["id"])]["_meta"] = {"title": node["title"]}
    return prompt


REFERENCE_HEADING = "## Node reference\n\n"
REFERENCE_DOCS = ("README.md", "docs/nodes.md")  # both end with the generated node reference


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def node_reference(node_classes: dict, display_names: dict) -> str:
    """The node reference section of docs/nodes.md, from the node classes themselves."""
    out = []
    for node_id, cls in node_classes.items():
        out += [f"### {display_names[node_id]} (`{node_id}`, category `{cls.CATEGORY}`)", "", cls.DESCRIPTION, "",
                "| input | type | default (range) | meaning |", "|---|---|---|---|"]
        for name, (kind, options, category) in input_specs(cls).items():
            if isinstance(kind, list):
                shown = "combo"
                default = f"`{options['default']}`" if "default" in options else "the models found"
                if "default" in options and len(kind) <= 5:
                    default += " (" + ", ".join(kind) + ")"
            else:
                shown, default = kind, ""
                if "default" in options:
                    default = f"`{options['default']!r}`" if kind == "STRING" else f"`{options['default']}`"
                    if "min" in options:
                        default += f" ({options['min']}..{options['max']})"
            shown += " (optional)" if category == "optional" else ""
            out.append(f"| `{name}` | {shown} | {default} | {_cell(options.get('tooltip', ''))} |")
        if cls.RETURN_TYPES:
            out += ["", "| output | type | meaning |", "|---|---|---|"]
            out += [f"| `{n}` | {t} | {_cell(tip)} |" for n, t, tip in zip(cls.RETURN_NAMES, cls.RETURN_TYPES,
                                                                           cls.OUTPUT_TOOLTIPS)]
        out.append("")
    return "\n".join(out)


def workflow_note(root: Path, name: str) -> str | None:
    """The instructions shown in a Note node of workflow ``name``: ``workflows/notes/<name>.txt``, if any."""
    path = root / "workflows" / "notes" / f"{name}.txt"
    return path.read_text().strip() if path.is_file() else None


def write_generated_files(root: Path) -> list[Path]:
    """Regenerate ``workflows/*.json`` (UI format, laid out by workflow_layout) from ``workflows/api/*.json``, the
    notes in ``workflows/notes/`` and the node specs, and the
    node reference at the end of the README and ``docs/nodes.md``."""
    import json
    import tempfile

    sys.path.insert(0, str(root))
    import nodes

    classes = {**CORE_NODES, **nodes.NODE_CLASS_MAPPINGS}
    written = []
    with tempfile.TemporaryDirectory() as scratch, fake_comfyui(Path(scratch)):
        for api_file in sorted((root / "workflows" / "api").glob("*.json")):
            ui = api_to_ui(json.loads(api_file.read_text()), classes, workflow_note(root, api_file.stem))
            target = root / "workflows" / api_file.name
            target.write_text(json.dumps(ui, indent=1) + "\n")
            written.append(target)
        reference = node_reference(nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
        for doc in REFERENCE_DOCS:
            target = root / doc
            text = target.read_text()
            target.write_text(text[: text.index(REFERENCE_HEADING) + len(REFERENCE_HEADING)] + reference)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in write_generated_files(Path(__file__).resolve().parent.parent):
        print("wrote", path)
