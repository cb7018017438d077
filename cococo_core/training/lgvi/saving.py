"""Write trained LGVI / LGVI-I weights in the Hugging Face ``jianzongwu/lgvi`` / ``jianzongwu/lgvi-i`` layouts
(what :class:`cococo_core.lgvi.LGVIPipeline`, :class:`cococo_core.lgvi.LGVIChat` and the official scripts read)::

    unet/config.json                              official RoviModel config (3-D block names, LGVI keys)
    unet/diffusion_pytorch_model.safetensors      float32
    vae/ scheduler/ [text_encoder/ tokenizer/]    the frozen parts, as loaded
    model_index.json
    llava/llava_weights.pth                       LGVI-I: {"language_embedding": embed_tokens state,
                                                  "vision_embedding": projector state (keys 0.*, 2.*),
                                                  "transfer_layer": transfer head state} (official save_mllm_weights)

The LLaVA body itself is not written (it is unchanged: the layers are frozen); LGVI-I is loaded with the
same chat model folder it was trained from.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ...output_files import staged_file, write_json
from .unet_init import official_unet_config


def _refuse_existing(directory: Path, names) -> None:
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}; choose an empty output folder")


def save_lgvi_folder(model, directory: str | Path) -> list[Path]:
    """The LGVI folder of a :class:`~.model.LGVITrainingModel` (or its LGVI-I subclass)."""
    directory = Path(directory)
    parts = ["unet", "vae", "scheduler", "model_index.json"] + (["text_encoder", "tokenizer"] if model.text_encoder is not None else [])
    _refuse_existing(directory, parts + ["llava"])
    (directory / "unet").mkdir(parents=True)
    config_path = directory / "unet" / "config.json"
    write_json(config_path, official_unet_config(model.unet.config), indent=2)
    weights = directory / "unet" / "diffusion_pytorch_model.safetensors"
    with staged_file(weights) as temporary:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in model.unet.state_dict().items()}, str(temporary))
    model.vae.save_pretrained(directory / "vae", safe_serialization=True)
    model.scheduler.save_config(directory / "scheduler")
    index = {"_class_name": "RoviPipeline", "_diffusers_version": "0.21.4", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", type(model.scheduler).__name__]}
    if model.text_encoder is not None:
        model.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
        model.tokenizer.save_pretrained(directory / "tokenizer")
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
    write_json(directory / "model_index.json", index, indent=2)
    return sorted(path for path in directory.rglob("*") if path.is_file())


def mllm_weights(model) -> dict[str, dict[str, torch.Tensor]]:
    """The official ``llava_weights.pth`` structure of an :class:`~.model.LGVIITrainingModel`."""
    embed = model.chat_model.get_input_embeddings().weight.detach()
    rows = model.vocab_rows or embed.shape[0]

    def state(module):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    projector = state(model.projector)
    vision = {key.replace("linear_1.", "0.").replace("linear_2.", "2."): value for key, value in projector.items()}
    return {
        "language_embedding": {"weight": embed[:rows].cpu().clone()},
        "vision_embedding": vision,
        "transfer_layer": state(model.transfer_head),
    }


def save_lgvi_i_folder(model, directory: str | Path) -> list[Path]:
    directory = Path(directory)
    files = save_lgvi_folder(model, directory)
    (directory / "llava").mkdir()
    path = directory / "llava" / "llava_weights.pth"
    torch.save(mllm_weights(model), path)
    return files + [path]
