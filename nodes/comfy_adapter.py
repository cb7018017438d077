"""The pack's only door to ComfyUI services, with plain-Python fallbacks.

Every use of ``folder_paths``, ``comfy.model_management`` and ``comfy.utils`` goes through here
and is looked up at call time, so the nodes also run (and are tested) without ComfyUI:

- model folders: ComfyUI's registered folders (user ``extra_model_paths.yaml`` entries kept),
  otherwise ``<models dir>/<key>`` where the models dir is ``$COCOCO_MODELS_DIR``, the value
  given to :func:`set_models_dir`, or ``models/`` next to the pack;
- file names coming from a workflow resolve only inside those folders;
- device / dtype / offload / cache emptying: ``comfy.model_management``, otherwise the best local
  accelerator (fp16 on CUDA) and CPU fp32;
- progress: ``comfy.utils.ProgressBar`` (whose hook is also ComfyUI's cancel point), otherwise tqdm; latent
  previews only where ComfyUI's preview setting asks for them (:func:`latent_previews_enabled`);
- interruption: ``throw_exception_if_processing_interrupted`` (raises ComfyUI's own exception),
  otherwise a flag set by :func:`request_cancel`;
- model management: every model a node loads is handed to ComfyUI as ``ModelPatcher``s (:func:`manage`) and
  loaded with ``load_models_gpu`` and an estimate of the run's working memory (:func:`load_for_run`), so ComfyUI
  offloads it when others need the room and unloads it on *Unload models* / ``/free``; no ComfyUI function or
  global is replaced. Outside ComfyUI the modules are moved to the device for a run and back;
- a cache of loaded models by file signature (weak inside ComfyUI, whose node cache owns loader outputs).
"""
from __future__ import annotations

import collections
import functools
import gc
import importlib
import logging
import os
import threading
import weakref
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
            " sam2_hiera_*.pt or a transformers 'sam2_video' folder; or EdgeTAM: the original edgetam.pt or an"
            " 'edgetam_video' folder (needs timm)",
            "https://github.com/facebookresearch/sam2 (checkpoints), https://huggingface.co/facebook/sam2.1-hiera-tiny,"
            " https://github.com/facebookresearch/EdgeTAM (edgetam.pt)",
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

    def refuse_links_out() -> None:  # resolve() follows the links among the existing parts, dangling ones included
        real, real_root = folder.resolve(), root.resolve()
        if real != real_root and real_root not in real.parents:
            raise ValueError(f"the output sub-folder '{relative.parent}' of {root} is a link to {real}, outside the "
                             "output folder; save nodes write only inside it. Remove the link or choose another "
                             "filename_prefix")

    refuse_links_out()  # before any folder is made, so a refused prefix creates nothing outside
    folder.mkdir(parents=True, exist_ok=True)
    refuse_links_out()  # a link made meanwhile
    counter = 1
    while os.path.lexists(folder / f"{relative.name}_{counter:05}_{suffix}"):  # a dangling link counts as taken
        counter += 1
    return folder / f"{relative.name}_{counter:05}_{suffix}"


def output_description(path: Path) -> str:
    """Where a written file is, as a status text says it: its name inside the output folder, and that folder."""
    root = output_directory()
    try:
        relative = Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
    return f"{relative} in the output folder ({root.resolve()})"


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


def model_dtype(precision: str, device: torch.device, kind: str = "unet") -> torch.dtype:
    """``precision`` from a widget; "auto" is :func:`default_dtype` (ComfyUI's choice for ``kind`` on ``device``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    return default_dtype(kind, device)


DTYPE_KINDS = ("unet", "vae", "text_encoder")
# ComfyUI runs the SD-1.x VAE in bf16 or fp32, never fp16 (its VAE's working dtypes: fp16 overflows in the decoder)
VAE_WORKING_DTYPES = (torch.bfloat16, torch.float32)


def default_dtype(kind: str = "unet", device: torch.device | None = None) -> torch.dtype:
    """The dtype a ``kind`` of model ("unet", "vae", "text_encoder") computes in on ``device`` by default.

    Inside ComfyUI: what ComfyUI picks for that kind (``unet_dtype`` / ``vae_dtype`` / ``text_encoder_dtype``, so
    its command-line flags such as ``--fp16-unet`` or ``--bf16-vae`` apply); where that is a storage type the
    device cannot compute in (fp8, or fp16 on a CPU), its manual-cast dtype (``unet_manual_cast``), since the
    pack's modules keep their weights in the dtype they compute in. Outside ComfyUI: fp16 on CUDA, else fp32.
    """
    if kind not in DTYPE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(DTYPE_KINDS)}, got {kind!r}")
    device = torch.device(device) if device is not None else torch_device()
    mm = _model_management()
    if mm is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if kind == "unet":
        stored = mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    elif kind == "vae":
        stored = mm.vae_dtype(device=device, allowed_dtypes=list(VAE_WORKING_DTYPES))
    else:
        stored = mm.text_encoder_dtype(device)
    computed = mm.unet_manual_cast(stored, device) or stored
    return computed if computed in _DTYPES.values() else torch.float32


def free_memory_bytes(device: torch.device | None = None) -> int:
    """Free memory on ``device`` (default: the execution device) as ComfyUI reports it (on a CPU: available RAM);
    outside ComfyUI from torch (CUDA) or the operating system."""
    device = torch.device(device) if device is not None else torch_device()
    mm = _model_management()
    if mm is not None:
        return int(mm.get_free_memory(device))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


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

def latent_previews_enabled() -> bool:
    """Whether ComfyUI's preview setting asks for latent previews, decided as ComfyUI's own
    ``latent_preview.get_previewer`` does: none when ``comfy.cli_args.args.preview_method`` is "none"
    (``--preview-method``, default "none", which ComfyUI replaces for each run by the method the frontend sends
    in ``extra_data.preview_method``). Outside ComfyUI nothing shows previews."""
    cli_args = _optional_module("comfy.cli_args")
    method = getattr(getattr(cli_args, "args", None), "preview_method", None)
    return method is not None and getattr(method, "value", method) != "none"


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
            picture = None
            if self.preview is not None and value is not None and latent_previews_enabled():
                picture = self.preview(value)
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


# --- ComfyUI model management ---------------------------------------------------------------------

class ModuleGroup(torch.nn.Module):
    """The torch modules of one pack model (e.g. a pipeline's U-Net), as ComfyUI's ``ModelPatcher`` wants its
    ``model``: a plain ``device`` attribute it may set (diffusers and transformers models have a read-only
    ``device`` property) and ``get_dtype()``. The modules stay shared with the library object that uses them."""

    def __init__(self, parts: dict[str, torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleDict(parts)
        tensor = next(iter(self.state_dict().values()), None)
        self.device = tensor.device if tensor is not None else torch.device("cpu")

    def get_dtype(self) -> torch.dtype | None:
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return None


@functools.cache
def _group_class(name: str) -> type:
    """A :class:`ModuleGroup` subclass named after the model, so ComfyUI's log says what it loads."""
    return type(name, (ModuleGroup,), {"__doc__": f"{name}: {ModuleGroup.__doc__}"})


class _LocalPatcher:
    """Outside ComfyUI: the same modules, moved by :func:`load_for_run` and back by :func:`after_run`."""

    def __init__(self, model: ModuleGroup, load_device: torch.device, offload_device: torch.device):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device

    def model_size(self) -> int:
        return sum(t.nbytes for t in self.model.state_dict().values())


_MANAGED: dict[int, list] = {}  # id(value) -> its patchers, while value lives


def manage(value: Any, parts: dict[str, Any], name: str | None = None) -> Any:
    """Hand the modules of ``value`` (a pipeline, detector, ...) to ComfyUI's model management and return ``value``.

    Each entry of ``parts`` (a module, or a dict of modules that load together) becomes one
    ``comfy.model_patcher.ModelPatcher`` (None entries and None modules are skipped), loaded to
    ComfyUI's device by :func:`load_for_run`, listed in ``current_loaded_models``, offloaded when other models need
    the room and released by *Unload models* / ``/free``. The patchers live as long as ``value``; ``value.patcher``
    (when settable) names the first, which ComfyUI's RAM-pressure node cache recognises as a model. Outside
    ComfyUI the modules are moved by hand instead. A second call for the same object returns it unchanged.
    """
    if id(value) in _MANAGED:
        return value
    mm = _model_management()
    patcher_module = _optional_module("comfy.model_patcher") if mm is not None else None
    load_device, offload = torch_device(), offload_device()
    patchers = []
    for part, modules in parts.items():
        modules = {k: m for k, m in (modules if isinstance(modules, dict) else {part: modules}).items() if m is not None}
        if not modules:
            continue
        group = _group_class(f"{name or type(value).__name__}_{part}")(modules)
        if patcher_module is not None:
            patchers.append(patcher_module.ModelPatcher(group, load_device=load_device, offload_device=offload))
        else:
            patchers.append(_LocalPatcher(group, load_device, offload))
    if not patchers:
        raise ValueError(f"{type(value).__name__} has no module to manage")
    _MANAGED[id(value)] = patchers
    weakref.finalize(value, _MANAGED.pop, id(value), None)
    # (a module managing itself would then hold its own patcher: a reference cycle that only gc could free)
    if patcher_module is not None and not isinstance(value, torch.nn.Module) and getattr(value, "patcher", None) is None:
        try:
            value.patcher = patchers[0]
        except AttributeError:  # a class with __slots__ or a read-only attribute: the RAM-cache hint is optional
            pass
    return value


def patchers_of(*values: Any) -> list:
    """The patchers :func:`manage` made for ``values`` (patchers given directly pass through)."""
    found = []
    for value in values:
        if value is None:
            continue
        patchers = _MANAGED.get(id(value))
        if patchers is None:
            if not hasattr(value, "load_device"):
                raise ValueError(f"{type(value).__name__} was not handed to ComfyUI's model management (manage())")
            patchers = [value]
        found += [p for p in patchers if p not in found]
    return found


def load_for_run(models, memory_required: int = 0) -> torch.device:
    """Load ``models`` (managed values or their patchers) on ComfyUI's device for a run that needs
    ``memory_required`` bytes of working memory besides the weights; returns the execution device.

    Inside ComfyUI this is ``comfy.model_management.load_models_gpu``: ComfyUI first offloads other models (its own
    and the pack's) until the weights plus ``memory_required`` fit, then loads these completely (the pack's modules
    are plain torch layers that cannot run with part of their weights left in RAM). They stay loaded after the
    run, listed in ``current_loaded_models``, until ComfyUI needs the room. Outside ComfyUI the modules move to
    the device; :func:`after_run` moves them back.
    """
    patchers = patchers_of(*models) if isinstance(models, (list, tuple)) else patchers_of(models)
    mm = _model_management()
    device = torch_device()
    if not patchers:
        return device
    if mm is not None and not isinstance(patchers[0], _LocalPatcher):
        mm.load_models_gpu(patchers, memory_required=int(memory_required), force_full_load=True)
        for patcher in patchers:  # modules shared between two models (personalized copies) may have moved away
            patcher.model.to(patcher.load_device)
        return patchers[0].load_device
    for patcher in patchers:
        patcher.model.to(device)
        patcher.model.device = device
    return device


def after_run(models) -> None:
    """Outside ComfyUI: move ``models`` back to the offload device and empty the cache. Inside ComfyUI nothing
    happens: ComfyUI keeps them loaded and offloads them when it needs the room."""
    patchers = patchers_of(*models) if isinstance(models, (list, tuple)) else patchers_of(models)
    local = [p for p in patchers if isinstance(p, _LocalPatcher)]
    for patcher in local:
        if patcher.offload_device != patcher.load_device:
            patcher.model.to(patcher.offload_device)
            patcher.model.device = patcher.offload_device
    if local:
        soft_empty_cache()


def loaded_models() -> list:
    """The patchers ComfyUI holds loaded right now (``current_loaded_models``); [] outside ComfyUI."""
    mm = _model_management()
    if mm is None:
        return []
    return [loaded.model for loaded in mm.current_loaded_models if loaded.model is not None]


def unload(models) -> None:
    """Take ``models`` off ComfyUI's device now (the *CoCoCo Release Models* node), through ComfyUI's own
    ``LoadedModel.model_unload`` so its list stays right; outside ComfyUI: :func:`after_run`."""
    patchers = patchers_of(*models) if isinstance(models, (list, tuple)) else patchers_of(models)
    mm = _model_management()
    if not patchers:
        return
    if mm is None or isinstance(patchers[0], _LocalPatcher):
        after_run(patchers)
        return
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if any(loaded.model is p for p in patchers):
            loaded.model_unload()
            mm.current_loaded_models.pop(index)
    soft_empty_cache()


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
    """Loaded models by file signature, so a second loader of the same file reuses the first's model.

    Inside ComfyUI it keeps them weakly: ComfyUI's node cache owns a loader's output (and drops it on *Free model
    and node cache* or under RAM pressure), and the model's weights are under ComfyUI's model management. Outside
    ComfyUI nothing else would keep them, so it holds the last ``per_slot`` per slot (e.g. one per loader type).
    """

    def __init__(self, per_slot: int = 1):
        self.per_slot = per_slot
        self._slots: dict[str, collections.OrderedDict] = {}
        self._lock = threading.Lock()

    def get_or_load(self, slot: str, key: Hashable, load: Callable[[], Any], *, held: bool = False) -> Any:
        """The cached model for ``key`` or a new one from ``load()``. ``held=True`` for a model a node loads for
        itself (no loader output keeps it, e.g. the metrics' CLIP): inside ComfyUI the cache then holds it until
        ComfyUI unloads it (``/free``, *Unload models*, or eviction for another model)."""
        with self._lock:
            entries = self._slots.setdefault(slot, collections.OrderedDict())
            value = _live(entries.get(key))
            if value is not None:
                entries.move_to_end(key)
                logger.debug("reusing the loaded %s", slot)
                return value
        value = load()
        with self._lock:
            entries = self._slots.setdefault(slot, collections.OrderedDict())
            entries[key] = _weak_or_strong(value) if in_comfyui() and not held else value
            for stale in [k for k, v in entries.items() if _live(v) is None]:
                del entries[stale]
            while len(entries) > self.per_slot:
                entries.popitem(last=False)
        if held and in_comfyui():
            self._forget_on_unload(slot, key, value)
        return value

    def _forget_on_unload(self, slot: str, key: Hashable, value: Any) -> None:
        """Drop the entry when ComfyUI detaches one of ``value``'s patchers (its ``on_detach_after`` callback)."""
        extension = _optional_module("comfy.patcher_extension")
        patchers = _MANAGED.get(id(value), [])
        if extension is None or not patchers or not hasattr(patchers[0], "add_callback"):
            return
        owner = weakref.ref(value)

        def forget(patcher, *_):
            with self._lock:
                entries = self._slots.get(slot, {})
                if key not in entries or _live(entries[key]) is not owner():
                    return
                held_value = entries.pop(key)
            logger.info("released the cached %s: ComfyUI unloaded it", slot)
            # ComfyUI is inside its unload loop: the value (and with it the weights) must outlive ComfyUI's record
            # of the load, or its clean-up would edit the list it is walking; the record dies when ComfyUI is done
            mm = _model_management()
            record = next((m for m in getattr(mm, "current_loaded_models", ()) if m.model is patcher), None)
            if record is not None:
                weakref.finalize(record, _drop, held_value)

        for patcher in patchers:
            patcher.add_callback(extension.CallbacksMP.ON_DETACH, forget)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for entries in self._slots.values() for v in entries.values() if _live(v) is not None)

    def values(self) -> list:
        with self._lock:
            return [v for entries in self._slots.values() for v in map(_live, entries.values()) if v is not None]

    def release(self, slot: str | None = None) -> int:
        """Unload the cached models from ComfyUI's device and forget them (all, or one slot); returns how many."""
        with self._lock:
            slots = list(self._slots) if slot is None else [slot]
            dropped = [v for name in slots for v in map(_live, self._slots.pop(name, {}).values()) if v is not None]
        managed = [value for value in dropped if id(value) in _MANAGED]
        if managed:
            unload(managed)
        if dropped:
            count = len(dropped)
            del dropped, managed
            gc.collect()
            soft_empty_cache()
            logger.info("released %d cached CoCoCo model(s)", count)
            return count
        return 0


def _drop(value) -> None:
    """Let ``value`` go (called by a finalizer that kept it alive until then)."""


def _weak_or_strong(value):
    try:
        return weakref.ref(value)
    except TypeError:  # not weak-referenceable (e.g. a tuple): kept like outside ComfyUI
        return value


def _live(entry):
    return entry() if isinstance(entry, weakref.ref) else entry


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
