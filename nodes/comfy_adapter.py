"""The pack's only door to ComfyUI services, with plain-Python fallbacks.

Every use of ``folder_paths``, ``comfy.model_management`` and ``comfy.utils`` goes through here
and is looked up at call time, so the nodes also run (and are tested) without ComfyUI:

- model folders: ComfyUI's registered folders (user ``extra_model_paths.yaml`` entries kept),
  otherwise ``<models dir>/<key>`` where the models dir is ``$COCOCO_MODELS_DIR``, the value
  given to :func:`set_models_dir`, or ``models/`` next to the pack;
- file names coming from a workflow resolve only inside those folders;
- device / dtype / offload / cache emptying: ``comfy.model_management``, otherwise the best local
  accelerator (fp16 on CUDA) and CPU fp32;
- progress: ``comfy.utils.ProgressBar`` (whose hook is also ComfyUI's cancel point), otherwise tqdm;
- interruption: ``throw_exception_if_processing_interrupted`` (raises ComfyUI's own exception),
  otherwise a flag set by :func:`request_cancel`;
- a small cache of loaded models, emptied on request and when ComfyUI unloads all models.
"""
from __future__ import annotations

import collections
import gc
import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Hashable

import torch

logger = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parent.parent
WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelKind:
    """One model folder key: what lives there and how it is listed."""

    key: str
    what: str
    get_it: str
    files: bool = True
    folder_markers: tuple[str, ...] = ()  # a directory holding any of these files is one model


MODEL_KINDS = {
    kind.key: kind
    for kind in (
        ModelKind(
            "checkpoints",
            "a single-file Stable Diffusion 1.x checkpoint (SD-1.5-inpainting with 9 input channels for the base,"
            " any SD-1.5 fine-tune for personalization)",
            "https://huggingface.co/benjamin-paine/stable-diffusion-v1-5-inpainting (sd-v1-5-inpainting.ckpt /"
            " .safetensors) or Civitai for DreamBooth fine-tunes",
        ),
        ModelKind(
            "diffusers",
            "a diffusers SD-1.5-inpainting folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/)",
            "https://huggingface.co/benjamin-paine/stable-diffusion-v1-5-inpainting (the whole repository)",
            files=False,
            folder_markers=("model_index.json",),
        ),
        ModelKind("loras", "an SD-1.5 LoRA (.safetensors; kohya, LyCORIS or diffusers/PEFT keys)", "Civitai or Hugging Face"),
        ModelKind(
            "cococo",
            "the CoCoCo motion weights: the official folder with model_0.pth ... model_3.pth, or one .safetensors"
            " made by `python -m cococo_core convert-motion`",
            "https://github.com/zibojia/COCOCO (README, 'Download pretrained models')",
            folder_markers=("model_0.pth",),
        ),
        ModelKind(
            "grounding-dino",
            "a GroundingDINO model: a transformers folder (config.json + weights) or the original"
            " groundingdino_swint_ogc.pth",
            "https://huggingface.co/IDEA-Research/grounding-dino-tiny or"
            " https://github.com/IDEA-Research/GroundingDINO/releases",
            folder_markers=("config.json",),
        ),
        ModelKind(
            "sams",
            "a Segment Anything model: a transformers folder (config.json + weights) or an original"
            " sam_vit_*.pth",
            "https://huggingface.co/facebook/sam-vit-base or https://github.com/facebookresearch/segment-anything",
            folder_markers=("config.json",),
        ),
        ModelKind(
            "sam2",
            "a SAM 2 / SAM 2.1 video tracker: an original sam2.1_hiera_{tiny,small,base_plus,large}.pt /"
            " sam2_hiera_*.pt or a transformers 'sam2_video' folder (EdgeTAM: edgetam.pt)",
            "https://github.com/facebookresearch/sam2 (checkpoints) or https://huggingface.co/facebook/sam2.1-hiera-tiny",
            folder_markers=("config.json",),
        ),
        ModelKind(
            "sam3",
            "a SAM 3 video model (text -> tracked instances): the original sam3.pt or a transformers folder",
            "https://huggingface.co/facebook/sam3",
            folder_markers=("config.json",),
        ),
        ModelKind(
            "clip_vision",
            "a CLIP image model for the video metrics: ComfyUI's ViT-L/14 file (e.g. clip-vit-large-patch14"
            " model.safetensors; with its text tower it also gives the CLIP score) or a transformers CLIP folder",
            "https://huggingface.co/openai/clip-vit-large-patch14",
            folder_markers=("config.json",),
        ),
        ModelKind(
            "lgvi",
            "an LGVI / LGVI-I diffusers folder (model_index.json, unet/, vae/, ...) or, for LGVI-I, the LLaVA-1.5"
            " and CLIP-ViT-L/14-336 transformers folders",
            "https://huggingface.co/jianzongwu/lgvi, https://huggingface.co/jianzongwu/lgvi-i,"
            " https://huggingface.co/llava-hf/llava-1.5-7b-hf, https://huggingface.co/openai/clip-vit-large-patch14-336",
            files=False,
            folder_markers=("model_index.json", "config.json"),
        ),
    )
}
PACK_KEYS = ("cococo", "grounding-dino", "sams", "sam2", "sam3", "lgvi")  # the folders this pack adds to ComfyUI's

_models_dir: Path | None = None


# --- ComfyUI modules, looked up at call time -------------------------------------------------

def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _folder_paths():
    return _optional_module("folder_paths")


def _model_management():
    return _optional_module("comfy.model_management")


def in_comfyui() -> bool:
    return _folder_paths() is not None


# --- model folders -----------------------------------------------------------------------------

def set_models_dir(path: str | os.PathLike | None) -> None:
    """Models dir used outside ComfyUI (``None``: back to ``$COCOCO_MODELS_DIR`` or ``<pack>/models``)."""
    global _models_dir
    _models_dir = None if path is None else Path(path)


def models_dir() -> Path:
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.models_dir)
    if _models_dir is not None:
        return _models_dir
    return Path(os.environ.get("COCOCO_MODELS_DIR") or PACK_DIR / "models")


def register_model_folders() -> None:
    """Add the pack's keys to ComfyUI's folders (after the user's YAML entries, never replacing them)."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return
    for key in PACK_KEYS:
        path = os.path.join(folder_paths.models_dir, key)
        folder_paths.add_model_folder_path(key, path)
        extensions = folder_paths.folder_names_and_paths[key][1]
        if isinstance(extensions, set):  # a new key starts with an empty set, which would match any file
            extensions.update(folder_paths.supported_pt_extensions)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            logger.warning("could not create the model folder %s: %s", path, error)
    _install_unload_hook()


def model_folders(key: str) -> list[Path]:
    if key not in MODEL_KINDS:
        raise ValueError(f"unknown model folder key {key!r}; known: {', '.join(MODEL_KINDS)}")
    folder_paths = _folder_paths()
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(key)]
        except KeyError:
            return [Path(folder_paths.models_dir) / key]
    return [models_dir() / key]


def _is_model_folder(path: Path, kind: ModelKind) -> bool:
    return any((path / marker).is_file() for marker in kind.folder_markers)


def _walk_models(base: Path, kind: ModelKind) -> list[str]:
    found, seen = [], set()
    for root, dirs, files in os.walk(base, followlinks=True):
        root_path = Path(root)
        real = os.path.realpath(root)
        if real in seen:  # a link back to a folder already listed: stop the cycle
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in list(dirs):
            if _is_model_folder(root_path / d, kind):
                found.append((root_path / d).relative_to(base).as_posix())
                dirs.remove(d)  # its files belong to that model, they are not models of their own
        if kind.files:
            found += [(root_path / f).relative_to(base).as_posix() for f in files if f.lower().endswith(WEIGHT_EXTENSIONS)]
    return found


def list_models(key: str, accept: Callable[[Path], bool] | None = None) -> list[str]:
    """Names for a combo widget: weight files and model folders under every folder of ``key``; ``accept(path)``,
    when given, keeps only the models of the kind the widget wants."""
    folders = model_folders(key)
    kind = MODEL_KINDS[key]
    names: set[str] = set()
    for base in folders:
        if base.is_dir():
            names.update(name for name in _walk_models(base, kind) if accept is None or accept(base / name))
    return sorted(names, key=str.lower)


def _checked_relative_name(name: str) -> PurePosixPath:
    text = str(name).replace("\\", "/").strip()
    if not text or "\x00" in text:
        raise ValueError(f"empty or invalid model file name {name!r}")
    if text.startswith("/") or PureWindowsPath(str(name)).drive or PureWindowsPath(str(name)).is_absolute():
        raise ValueError(f"model file name {name!r} is an absolute path; give a name inside the model folder instead")
    relative = PurePosixPath(text)
    if ".." in relative.parts:
        raise ValueError(f"model file name {name!r} leaves the model folder ('..' is not allowed)")
    return relative


def missing_model_message(key: str, name: str) -> str:
    kind = MODEL_KINDS[key]
    folders = ", ".join(str(p) for p in model_folders(key))
    available = list_models(key)
    found = f" Found there: {', '.join(available[:8])}{' ...' if len(available) > 8 else ''}." if available else " That folder holds no model yet."
    return (
        f"{kind.what} named '{name}' was not found in the '{key}' model folder ({folders}). "
        f"Put it there (or list another folder under '{key}:' in extra_model_paths.yaml); get it from {kind.get_it}.{found}"
    )


def resolve_model(key: str, name: str) -> Path:
    """Full path of model ``name`` (file or folder) inside the folders registered for ``key``.

    Names are relative; absolute paths, ``..`` and links that lead out of the folder are refused,
    so a shared workflow cannot make the pack read files elsewhere on the machine.
    """
    relative = _checked_relative_name(name)
    for base in model_folders(key):
        candidate = base / relative
        if not candidate.exists():
            continue
        real, real_base = candidate.resolve(), base.resolve()
        if real != real_base and real_base not in real.parents:
            raise ValueError(
                f"model '{name}' in the '{key}' folder {base} is a link to {real}, outside that folder; "
                f"add the real folder under '{key}:' in extra_model_paths.yaml instead"
            )
        return candidate
    raise FileNotFoundError(missing_model_message(key, name))


def clip_tokenizer_dir() -> Path | None:
    """A CLIP BPE tokenizer folder for single-file checkpoints: ComfyUI's own ``comfy/sd1_tokenizer``,
    else a ``clip_tokenizer`` folder (vocab.json + merges.txt) in the ``cococo`` model folder."""
    comfy = _optional_module("comfy")
    # ComfyUI's ``comfy`` is a namespace package (no __init__.py, so no __file__): look in its search path
    candidates = [Path(folder) / "sd1_tokenizer" for folder in getattr(comfy, "__path__", ())]
    candidates += [base / "clip_tokenizer" for base in model_folders("cococo")]
    for folder in candidates:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
    return None


def missing_tokenizer_message() -> str:
    folders = ", ".join(str(base / "clip_tokenizer") for base in model_folders("cococo"))
    return (
        "a single-file checkpoint has no tokenizer inside; none was found (ComfyUI's comfy/sd1_tokenizer or "
        f"{folders}). Put vocab.json and merges.txt from https://huggingface.co/openai/clip-vit-large-patch14 "
        "there, or load a diffusers folder instead"
    )


def output_directory() -> Path:
    """ComfyUI's output folder; outside ComfyUI ``$COCOCO_OUTPUT_DIR`` or ``./output``."""
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(os.environ.get("COCOCO_OUTPUT_DIR") or "output")


def output_path(prefix: str, suffix: str) -> Path:
    """A new file ``<output>/<prefix>_00001_<suffix>`` (next free counter); the prefix from a workflow
    may name sub-folders of the output folder but not leave it."""
    relative = _checked_relative_name(prefix)
    root = output_directory()
    folder = root / relative.parent
    folder.mkdir(parents=True, exist_ok=True)
    real, real_root = folder.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"the output sub-folder '{relative.parent}' of {root} is a link to {real}, outside the output "
                         "folder; save nodes write only inside it. Remove the link or choose another filename_prefix")
    counter = 1
    while os.path.lexists(folder / f"{relative.name}_{counter:05}_{suffix}"):  # a dangling link counts as taken
        counter += 1
    return folder / f"{relative.name}_{counter:05}_{suffix}"


# --- devices and memory --------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device() -> torch.device:
    mm = _model_management()
    if mm is not None:
        return mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device() -> torch.device:
    mm = _model_management()
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE / MASK) live: CPU unless ComfyUI runs with --gpu-only."""
    mm = _model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def model_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``precision`` from a widget; "auto" asks ComfyUI (fp16 on capable GPUs, fp32 on CPU/MPS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    mm = _model_management()
    if mm is not None:
        dtype = mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
        if dtype in _DTYPES.values():
            return dtype  # fp8 storage types are ComfyUI-only; diffusers modules compute in fp16 instead
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def free_memory(required_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to evict its own models until ``required_bytes`` fit on ``device``."""
    mm = _model_management()
    if mm is not None and torch.device(device).type != "cpu":
        mm.free_memory(required_bytes, device)


def soft_empty_cache() -> None:
    mm = _model_management()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- progress and interruption -----------------------------------------------------------------

class Progress:
    """``callback(step, total, latents)`` for cococo_core jobs, drawn as ComfyUI's node progress bar."""

    def __init__(self, description: str = "CoCoCo", preview: Callable[[Any], Any] | None = None):
        self.description = description
        self.preview = preview  # latents -> ("JPEG", PIL image, max size) for ComfyUI's node preview, or None
        self.last: tuple[int, int] | None = None
        self._bar = None

    def __call__(self, step: int, total: int, value: Any = None) -> None:
        self.last = (step, total)
        utils = _optional_module("comfy.utils")
        if utils is not None:
            if self._bar is None:
                self._bar = utils.ProgressBar(total)
            picture = self.preview(value) if self.preview is not None and value is not None else None
            self._bar.update_absolute(step, total, picture)
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.description, disable=None)
        self._bar.total = total
        self._bar.update(step - self._bar.n)
        if step >= total:
            self._bar.close()


_cancel_requested = threading.Event()


def request_cancel() -> None:
    """Outside ComfyUI: make the running job stop at its next step (raises ``cococo_core.Cancelled``)."""
    _cancel_requested.set()


def interrupt_check() -> Callable[[], bool]:
    """``cancel()`` for cococo_core jobs: raises ComfyUI's InterruptProcessingException when the user
    pressed Cancel; outside ComfyUI, returns True once :func:`request_cancel` was called."""
    _cancel_requested.clear()

    def cancel() -> bool:
        mm = _model_management()
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()
            return False
        return _cancel_requested.is_set()

    return cancel


# --- loaded-model cache ------------------------------------------------------------------------

def file_signature(path: Path) -> tuple:
    """Cheap identity of a model file or folder (paths, sizes, mtimes), so a replaced file reloads."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns)
    entries = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            stat = (Path(root) / name).stat()
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return (str(path), tuple(sorted(entries)))


class ModelCache:
    """Keeps the last ``per_slot`` loaded objects per slot (e.g. one per loader node type)."""

    def __init__(self, per_slot: int = 1):
        self.per_slot = per_slot
        self._slots: dict[str, collections.OrderedDict] = {}
        self._lock = threading.Lock()

    def get_or_load(self, slot: str, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            entries = self._slots.setdefault(slot, collections.OrderedDict())
            if key in entries:
                entries.move_to_end(key)
                logger.debug("reusing the loaded %s", slot)
                return entries[key]
        value = load()
        with self._lock:
            entries = self._slots.setdefault(slot, collections.OrderedDict())
            entries[key] = value
            while len(entries) > self.per_slot:
                entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._slots.values())

    def release(self, slot: str | None = None) -> int:
        """Drop cached models (all, or one slot); returns how many were dropped."""
        with self._lock:
            slots = list(self._slots) if slot is None else [slot]
            dropped = sum(len(self._slots.pop(name, {})) for name in slots)
        if dropped:
            gc.collect()
            soft_empty_cache()
            logger.info("released %d cached CoCoCo model(s)", dropped)
        return dropped


def cache_size_from_environment(name: str = "COCOCO_CACHE_PER_LOADER", default: int = 1) -> int:
    """Models kept per loader from ``$name``: a whole number >= 1; anything else warns and gives ``default``."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        logger.warning("%s=%r is not a whole number >= 1; using %d", name, text, default)
        return default
    return value


MODEL_CACHE = ModelCache(per_slot=cache_size_from_environment())


def _install_unload_hook() -> None:
    """Empty the cache whenever ComfyUI unloads all models (the 'Free model and node cache' button)."""
    mm = _model_management()
    if mm is None or getattr(mm.unload_all_models, "_cococo_release", False):
        return
    original = mm.unload_all_models

    def unload_all_models(*args, **kwargs):
        MODEL_CACHE.release()
        return original(*args, **kwargs)

    unload_all_models._cococo_release = True
    unload_all_models.__wrapped__ = original
    mm.unload_all_models = unload_all_models
