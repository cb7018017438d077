"""Tiny random-weight LGVI / LGVI-I checkpoints in the official layouts (``import test_lgvi_tiny``).

* :func:`lgvi_folder` - a ``jianzongwu/lgvi``-style folder: ``unet/`` (official ``RoviModel`` config.json
  with its ``st_attn`` quirk + safetensors), ``vae/ text_encoder/ tokenizer/`` (from ``tiny_models``),
  ``scheduler/`` (PNDM, as SD-1.5's model_index) and, for LGVI-I, ``llava/llava_weights.pth`` (nested
  bf16 state dicts, the official pickle layout).
* :func:`llava_hf_folder` - a tiny ``llava-hf`` folder (transformers' own Llava) with a tiny Llama BPE tokenizer.
* :func:`llava_original_folders` - the same weights in the original LLaVA layout + a CLIP vision folder.

The module also checks its own builders (the file names below are what the loaders must accept).
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch

import tiny_models

TINY_UNET = dict(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
TEXT_HIDDEN = 32
LGVI_VOCAB = 300  # rows of LGVI-I's language_embedding; the llava-hf model pads to LGVI_VOCAB + 20
_ROOT = Path(tempfile.mkdtemp(prefix="cococo-lgvi-tiny-"))
atexit.register(shutil.rmtree, _ROOT, True)
_CACHE: dict[tuple, Path] = {}


def _cached(key, build) -> Path:
    if key not in _CACHE or not _CACHE[key].exists():
        path = _ROOT / "-".join(map(str, key))
        path.mkdir(parents=True)
        build(path)
        _CACHE[key] = path
    return _CACHE[key]


def official_unet_config(in_channels: int = 8) -> dict:
    """config.json as the official RoviModel writes it (3-D block names, LGVI keys, the st_attn quirk)."""
    return {
        "_class_name": "RoviModel", "_diffusers_version": "0.21.4", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": list(TINY_UNET["block_out_channels"]), "center_input_sample": False,
        "cross_attention_dim": TINY_UNET["cross_attention_dim"], "cross_frame_type": None,
        "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"], "downsample_padding": 1,
        "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": in_channels,
        "lan_cross_attn": False, "layers_per_block": 2, "mask_decoder_type": "MaskDecoder", "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False,
        "out_channels": 4, "ref_frame_type_2": None, "resnet_time_scale_shift": "default", "sample_size": 8,
        "st_attn": False, "temp_attn": True, "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        "upcast_attention": False, "use_linear_projection": False,
    }


def unet_config(in_channels: int = 8):
    from cococo_core.lgvi.unet_config import LGVIUNetConfig

    return LGVIUNetConfig(in_channels=in_channels, **TINY_UNET)


def lgvi_unet_state(in_channels: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny U-Net's weights, every tensor perturbed (so zero-initialised layers are live and no two coincide)."""
    from cococo_core.lgvi.unet import LGVIUNet

    torch.manual_seed(seed)
    model = LGVIUNet(unet_config(in_channels))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_unet(folder: Path, state: dict, config: dict) -> None:
    from safetensors.torch import save_file

    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})


def write_lgvi_folder(folder: Path, in_channels: int = 8, interactive: bool = False) -> Path:
    tiny_models.write_sd_folder(folder, in_channels=4)  # vae / text_encoder / tokenizer in the diffusers layout
    shutil.rmtree(folder / "unet")
    write_unet(folder, lgvi_unet_state(in_channels), official_unet_config(in_channels))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None, "clip_sample": False,
    }))
    if interactive:
        (folder / "llava").mkdir()
        torch.save(lgvi_mllm_weights(), folder / "llava" / "llava_weights.pth")
    return folder


def lgvi_folder(in_channels: int = 8, interactive: bool = False) -> Path:
    return _cached(("lgvi", in_channels, interactive), lambda p: write_lgvi_folder(p, in_channels, interactive))


def lgvi_mllm_weights(seed: int = 1) -> dict:
    """The official llava_weights.pth structure: three nested state dicts in bf16."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (0.2 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    h, v, d = TEXT_HIDDEN, VISION_HIDDEN, TINY_UNET["cross_attention_dim"]
    return {
        "language_embedding": {"weight": rand(LGVI_VOCAB, h)},
        "vision_embedding": {"0.weight": rand(h, v), "0.bias": rand(h), "2.weight": rand(h, h), "2.bias": rand(h)},
        "transfer_layer": {"0.weight": rand(h, h), "0.bias": rand(h), "2.weight": rand(d, h)},
    }


# ---------------------------------------------------------------- LLaVA
VISION_HIDDEN = 32
CORPUS = [
    "Sure, I will remove the bird on the left for you. {{prompt}} remove the bird on the left {{/prompt}}",
    "User: Assistant: could you make the highway look less crowded? what about the other dog?",
]


def write_llama_tokenizer(folder: Path) -> Path:
    """A tiny SentencePiece-style (Metaspace BPE) Llama tokenizer with <unk>=0, <s>=1, </s>=2 and BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from cococo_core.lgvi.prompting import SYSTEM_PROMPT

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=LGVI_VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator([SYSTEM_PROMPT, *CORPUS], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 2048,
    }))
    return folder


def llava_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        text_config=LlamaConfig(hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, vocab_size=LGVI_VOCAB + 20, max_position_embeddings=2048,
                                bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=CLIPVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=37, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=28, patch_size=14, projection_dim=16),
        image_token_index=LGVI_VOCAB, vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def llava_model(seed: int = 0):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava_config()).eval()


def llava_hf_folder() -> Path:
    def build(folder):
        llava_model().save_pretrained(folder)
        write_llama_tokenizer(folder)

    return _cached(("llava-hf",), build)


def _llava_v5_name(key: str) -> str:
    """transformers 4.x Llava keys (``language_model.model.*``, ``language_model.lm_head``, ``vision_tower.*``,
    ``multi_modal_projector.*``) under their transformers 5 names."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith(("vision_tower.", "multi_modal_projector.")):
        return "model." + key
    return key


def original_llava_state(model) -> tuple[dict, dict]:
    """The hf model's weights under the original LLaVA keys (+ the CLIP vision keys of its own folder)."""
    llava, vision = {}, {}
    for key, value in model.state_dict().items():
        key = _llava_v5_name(key)
        if key.startswith("model.language_model."):
            llava["model." + key[len("model.language_model."):]] = value
        elif key.startswith("model.multi_modal_projector."):
            rest = key[len("model.multi_modal_projector."):]
            llava["model.mm_projector." + rest.replace("linear_1", "0").replace("linear_2", "2")] = value
        elif key.startswith("model.vision_tower."):
            rest = key[len("model.vision_tower."):]
            vision["vision_model." + rest.removeprefix("vision_model.")] = value
        else:
            llava[key] = value
    llava["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old checkpoints carry this buffer
    vision["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 4)  # CLIP text tower: ignored
    return llava, vision


def llava_original_folders() -> tuple[Path, Path]:
    def build(folder):
        config = llava_config()
        llava, vision = original_llava_state(llava_model())
        (folder / "llava").mkdir()
        (folder / "clip").mkdir()
        text = config.text_config.to_dict()
        text.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"], mm_projector_type="mlp2x_gelu",
                    mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_vision_tower="openai/clip-vit-large-patch14-336",
                    mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad")
        (folder / "llava" / "config.json").write_text(json.dumps(text))
        torch.save({k: v.half() for k, v in llava.items()}, folder / "llava" / "pytorch_model.bin")
        write_llama_tokenizer(folder / "llava")
        (folder / "clip" / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": config.vision_config.to_dict()}))
        torch.save(vision, folder / "clip" / "pytorch_model.bin")

    root = _cached(("llava-original",), build)
    return root / "llava", root / "clip"


def test_builders_write_the_official_file_names():
    folder = lgvi_folder(8, interactive=True)
    for name in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "text_encoder/config.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
                 "llava/llava_weights.pth"):
        assert (folder / name).is_file(), name
    weights = torch.load(folder / "llava" / "llava_weights.pth", weights_only=True)
    assert sorted(weights) == ["language_embedding", "transfer_layer", "vision_embedding"]
    assert weights["transfer_layer"]["2.weight"].dtype == torch.bfloat16
