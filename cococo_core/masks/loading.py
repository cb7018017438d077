"""Load GroundingDINO (detector) and Segment Anything (segmenter) from either layout.

* a Hugging Face folder: ``config.json`` + ``model.safetensors`` (+ tokenizer files for GroundingDINO), loaded with
  ``from_pretrained(local_files_only=True)``;
* an ORIGINAL checkpoint file (``sam_vit_h_4b8939.pth``, ``groundingdino_swint_ogc.pth``, or the same tensors in a
  ``.safetensors``), converted in memory by :mod:`.convert_sam` / :mod:`.convert_dino`. GroundingDINO also needs
  a BERT tokenizer folder (``vocab.txt`` [+ ``config.json``], e.g. ``bert-base-uncased``) and reads its
  ``GroundingDINO_*.py`` config file when one lies next to the checkpoint (parsed, never executed).

Pickles are read only through ``cococo_core.checkpoints.safe_load`` (``torch.load(weights_only=True)``; the
``argparse.Namespace`` of training arguments some GroundingDINO releases store is read as an inert placeholder).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints.keys import compare_keys, shapes_of
from ..checkpoints.pretrained import load_pretrained
from . import convert_dino, convert_sam

log = logging.getLogger(__name__)

BERT_FOLDER_NAMES = ("bert-base-uncased", "bert_base_uncased", "bert")


@dataclass
class Detector:
    """A GroundingDINO model, its BERT tokenizer, and where they came from."""

    model: torch.nn.Module
    tokenizer: object
    variant: str
    source: str

    def __post_init__(self):
        from .box_refinement import install_original_box_refinement
        from .detect import set_special_tokens

        set_special_tokens(self.model, self.tokenizer)
        install_original_box_refinement(self.model)  # both layouts hold the original weights


@dataclass
class Segmenter:
    """A SAM model and where it came from."""

    model: torch.nn.Module
    variant: str
    source: str


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``{"model": ...}`` / ``{"state_dict": ...}`` unwrapped, a ``module.`` prefix
    stripped), read safely by :func:`cococo_core.checkpoints.safe_load.load_state_dict`."""
    from ..checkpoints.safe_load import load_state_dict

    return convert_dino.strip_module_prefix(load_state_dict(path))


def _hf_model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, OSError):
        return None


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
               unused: tuple[str, ...] = ()) -> None:
    """load_state_dict that fails loudly: every model tensor must come from the file and every file tensor be used.

    ``unused``: model tensors the forward pass never reads (they keep their initial values). Buffers the model
    computes itself (index tables) are taken from the model when the file does not have them.
    """
    own = model.state_dict()
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state = dict(state)
    for name in own.keys() - parameters - state.keys():
        state[name] = own[name]
    comparison = compare_keys({key: tuple(own[key].shape) for key in own if not key.startswith(unused)},
                              shapes_of(state))
    missing, unexpected = comparison.missing, comparison.unexpected  # other shapes: load_state_dict names them
    if missing or unexpected:
        import transformers

        raise ValueError(
            f"{path}: the {what} tensors do not match transformers {transformers.__version__}'s model: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(state, strict=not unused)


def _finish(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# -- Segment Anything -------------------------------------------------------------------------------------------

TRACKER_MODEL_TYPES = ("sam2_video", "sam2", "sam3_video", "sam3", "edgetam_video", "sam3_tracker_video")


def _tracker_message(path: Path) -> str:
    return (f"{path} is a SAM 2 / EdgeTAM / SAM 3 model: it tracks objects through a video instead of masking "
            "frames one by one. Use it as a tracker: the CoCoCo Tracker Loader + CoCoCo Track Masks nodes (put it in models/sam2/), "
            "`cococo mask --tracker FILE`, or cococo_core.masks.tracking.load_tracker")

def load_segmenter(path: str | os.PathLike, *, device="cpu", dtype=torch.float32) -> Segmenter:
    """SAM from a Hugging Face folder or an original ``sam_vit_*.pth`` (ViT-B/L/H inferred from shapes)."""
    from transformers import SamModel

    path = Path(path)
    if path.is_dir():
        if _hf_model_type(path) in TRACKER_MODEL_TYPES:
            raise ValueError(_tracker_message(path))
        if _hf_model_type(path) != "sam":
            raise ValueError(f"{path}: not a Hugging Face SAM folder (config.json with model_type 'sam' expected)")
        model = load_pretrained(SamModel.from_pretrained, path, local_files_only=True)
        return Segmenter(_finish(model, device, dtype), convert_sam.sam_variant(model.config), str(path))
    state = read_checkpoint(path)
    from .tracking.convert_edgetam import is_original_edgetam
    from .tracking.convert_sam2 import is_original_sam2

    if is_original_sam2(state) or is_original_edgetam(state):
        raise ValueError(_tracker_message(path))
    if not convert_sam.is_original_sam(state):
        raise ValueError(
            f"{path}: not a Segment Anything checkpoint (no image_encoder.*/mask_decoder.* tensors); "
            "MobileSAM and EfficientSAM files are not supported"
        )
    config = convert_sam.sam_config_from_state_dict(state)
    model = SamModel(config)
    _load_into(model, convert_sam.convert_sam_state_dict(state), path, "SAM")
    return Segmenter(_finish(model, device, dtype), convert_sam.sam_variant(config), str(path))


# -- GroundingDINO ----------------------------------------------------------------------------------------------

def find_bert_folder(checkpoint: Path) -> Path | None:
    """A BERT tokenizer folder next to the checkpoint or one level up (ComfyUI: ``models/bert-base-uncased``)."""
    for base in (checkpoint.parent, checkpoint.parent.parent):
        for name in BERT_FOLDER_NAMES:
            candidate = base / name
            if (candidate / "vocab.txt").is_file() or (candidate / "tokenizer.json").is_file():
                return candidate
    return None


def find_original_config(checkpoint: Path) -> Path | None:
    """The original ``GroundingDINO_SwinT_OGC.py`` / ``*.cfg.py`` file next to the checkpoint, if any."""
    candidates = sorted(checkpoint.parent.glob("GroundingDINO*.py"))
    return candidates[0] if len(candidates) == 1 else None


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer, BertTokenizer

    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return BertTokenizer.from_pretrained(str(folder), local_files_only=True)


def _bert_config(folder: Path):
    from transformers import BertConfig

    config = folder / "config.json"
    return BertConfig.from_json_file(str(config)) if config.is_file() else None


def load_detector(path: str | os.PathLike, *, bert: str | os.PathLike | None = None,
                  config: str | os.PathLike | None = None, device="cpu", dtype=torch.float32) -> Detector:
    """GroundingDINO from a Hugging Face folder, or an original checkpoint + a BERT tokenizer folder.

    ``bert``: folder with ``vocab.txt`` (+ ``config.json``); searched next to the checkpoint when omitted.
    ``config``: the original ``GroundingDINO_*.py`` file (head counts); searched next to the checkpoint.
    """
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection

    path = Path(path)
    if path.is_dir():
        if _hf_model_type(path) != "grounding-dino":
            raise ValueError(f"{path}: not a Hugging Face GroundingDINO folder (config.json with model_type "
                             "'grounding-dino' expected)")
        model = load_pretrained(GroundingDinoForObjectDetection.from_pretrained, path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(bert or path), local_files_only=True)
        return Detector(_finish(model, device, dtype), tokenizer, convert_dino.grounding_dino_variant(model.config),
                        str(path))
    state = read_checkpoint(path)
    if not convert_dino.is_original_grounding_dino(state):
        raise ValueError(f"{path}: not an original GroundingDINO checkpoint (no backbone.0.*/transformer.* tensors)")
    bert_folder = Path(bert) if bert else find_bert_folder(path)
    if bert_folder is None or not bert_folder.is_dir():
        raise FileNotFoundError(
            f"{path}: an original GroundingDINO checkpoint needs a BERT tokenizer folder (vocab.txt, config.json of "
            f"bert-base-uncased); none given and none found next to it ({', '.join(BERT_FOLDER_NAMES)})"
        )
    config_file = Path(config) if config else find_original_config(path)
    original = convert_dino.read_original_config(config_file) if config_file else {}
    if config_file:
        log.info("GroundingDINO: using the original config %s", config_file)
    hf_config = convert_dino.grounding_dino_config_from_state_dict(state, original, _bert_config(bert_folder))
    model = GroundingDinoForObjectDetection(hf_config)
    converted = convert_dino.match_model_naming(convert_dino.convert_grounding_dino_state_dict(state),
                                                model.state_dict())
    _load_into(model, converted, path, "GroundingDINO", unused=convert_dino.UNUSED_TARGETS)
    tokenizer = _load_tokenizer(bert_folder)
    return Detector(_finish(model, device, dtype), tokenizer, convert_dino.grounding_dino_variant(hf_config), str(path))
