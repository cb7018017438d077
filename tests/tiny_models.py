"""Tiny random-weight SD-1.x models written in the real file layouts, for tests (``import tiny_models``).

Everything is built with a fixed seed, so two calls give identical weights. Files are written once per
test process into a temporary folder (removed at exit) and shared by every test that asks for them.

* :func:`components` / :func:`component_state` - the tiny U-Net, VAE and CLIP text encoder modules / state dicts.
* :func:`tokenizer_folder` - a minimal CLIP BPE tokenizer folder (``vocab.json`` + ``merges.txt``).
* :func:`sd_folder` - a diffusers folder ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``.
* :func:`ldm_file` - the SAME weights as one single-file LDM checkpoint (real key names), optionally with EMA
  copies or a ``v_pred`` marker; ``in_channels=4`` gives a tiny SD-1.5 text-to-image file.
* :func:`sd2_file` / :func:`sdxl_file` - small files whose key names and shapes look like SD-2.x / SDXL.
* :func:`motion_folder` - official-layout CoCoCo ``model_0.pth .. model_3.pth`` for the tiny U-Net.
* :func:`clip_folder` / :func:`clip_file` - a tiny CLIP as a transformers folder and as a ComfyUI ``clip_vision``
  single file; :func:`i3d_file` / :func:`i3d_shapes` - a tiny ``i3d_rgb_imagenet.pt`` and the pytorch-i3d layout.
"""
from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch

TINY_UNET_CONFIG = dict(
    sample_size=8, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
    norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
_MERGES = (("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"),
           ("a", "n"), ("an", "d</w>"), ("r", "e"), ("e", "d</w>"))


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table (the library's, shared with the SAM 3 tokenizer)."""
    from cococo_core.masks.tracking.clip_bpe import byte_symbols

    return byte_symbols()


def tokenizer_vocab() -> list[str]:
    """The tiny CLIP vocabulary in id order: 256 byte symbols, the same with ``</w>``, merges, then the
    specials ``<|startoftext|>`` / ``<|endoftext|>`` last (as in real CLIP, where they are 49406 / 49407)."""
    chars = _byte_chars()
    return chars + [c + "</w>" for c in chars] + [a + b for a, b in _MERGES] + ["<|startoftext|>", "<|endoftext|>"]


VOCAB_SIZE = len(tokenizer_vocab())
TINY_CLIP_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=77,
    vocab_size=VOCAB_SIZE, bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1, pad_token_id=1,
    hidden_act="quick_gelu", projection_dim=32,
)

_ROOT: Path | None = None
_FILES: dict[tuple, Path] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="cococo-tiny-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def _cached(key: tuple, build) -> Path:
    path = _FILES.get(key)
    if path is None or not path.exists():
        path = _root() / "-".join(str(part) for part in key)
        build(path)
        _FILES[key] = path
    return path


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Add noise to every parameter so no two tensors coincide (a swapped key would then show)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def components(in_channels: int = 9, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Fresh tiny ``{"unet", "vae", "text_encoder"}`` modules (eval mode) with deterministic random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    built = {
        "unet": UNet2DConditionModel(**{**TINY_UNET_CONFIG, "in_channels": in_channels}),
        "vae": AutoencoderKL(**TINY_VAE_CONFIG),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**TINY_CLIP_CONFIG)),
    }
    for module in built.values():
        _perturb(module, generator)
        module.eval()
    return built


_STATES: dict[tuple, dict] = {}


def component_state(in_channels: int = 9, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per-component state dicts of :func:`components` (cached; do not modify the tensors)."""
    key = (in_channels, seed)
    if key not in _STATES:
        _STATES[key] = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                        for name, m in components(in_channels, seed).items()}
    return _STATES[key]


def write_tokenizer(folder: Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` (max length 77) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}), encoding="utf-8")
    return folder


def tokenizer_folder() -> Path:
    """A cached tiny CLIP tokenizer folder that ``CLIPTokenizer.from_pretrained`` accepts offline."""
    return _cached(("tokenizer",), write_tokenizer)


def _save(state: dict[str, torch.Tensor], path: Path, weights: str) -> None:
    from safetensors.torch import save_file

    if weights == "safetensors":
        # metadata as transformers/diffusers write it (transformers 4.x refuses files without it)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors")), metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(state, path.with_suffix(".bin"))
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', not {weights!r}")


def write_sd_folder(folder: Path, *, weights: str = "safetensors", in_channels: int = 9, seed: int = 0,
                    clip_text_model_prefix: bool = True) -> Path:
    """Write a diffusers SD folder. Text-encoder keys get the ``text_model.`` prefix that real Hugging Face
    SD-1.5 folders have (transformers 5 itself writes them without) unless ``clip_text_model_prefix=False``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    state = component_state(in_channels, seed)
    for name in ("unet", "vae", "text_encoder"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel.from_config({**TINY_UNET_CONFIG, "in_channels": in_channels}).save_config(folder / "unet")
    AutoencoderKL.from_config(TINY_VAE_CONFIG).save_config(folder / "vae")
    CLIPTextConfig(**TINY_CLIP_CONFIG).save_pretrained(folder / "text_encoder")
    _save(state["unet"], folder / "unet" / "diffusion_pytorch_model", weights)
    _save(state["vae"], folder / "vae" / "diffusion_pytorch_model", weights)
    bare = {k.removeprefix("text_model."): v for k, v in state["text_encoder"].items()}  # transformers 4.x has it
    text = {("text_model." + k if clip_text_model_prefix else k): v for k, v in bare.items()}
    _save(text, folder / "text_encoder" / ("model" if weights == "safetensors" else "pytorch_model"), weights)
    write_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "prediction_type": "epsilon", "num_train_timesteps": 1000,
         "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    return folder


def sd_folder(weights: str = "safetensors", in_channels: int = 9) -> Path:
    """A cached tiny diffusers SD folder (``weights`` = "safetensors" or "bin")."""
    return _cached(("folder", weights, in_channels),
                   lambda p: write_sd_folder(p, weights=weights, in_channels=in_channels))


def ldm_state(in_channels: int = 9, seed: int = 0, *, ema: bool = False, v_pred: bool = False) -> dict[str, torch.Tensor]:
    """The tiny weights as a single-file LDM state dict (real key names, ``position_ids`` included).

    ``ema``: also store EMA copies under flattened ``model_ema.*`` names (values = weights + 0.01, so that the
    EMA and non-EMA variants differ) plus ``model_ema.decay`` / ``num_updates``. ``v_pred``: add ComfyUI's
    empty ``v_pred`` marker tensor."""
    from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm, ema_key

    state = diffusers_to_ldm(component_state(in_channels, seed))
    if ema:
        for key in [k for k in state if k.startswith("model.diffusion_model.")]:
            state[ema_key(key)] = state[key] + 0.01
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if v_pred:
        state["v_pred"] = torch.tensor([])
    return state


def write_ldm_file(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """``.safetensors`` via safetensors, any other suffix as a Lightning-style ``{"state_dict", "global_step"}`` pickle."""
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def ldm_file(fmt: str = "safetensors", in_channels: int = 9, *, ema: bool = False, v_pred: bool = False) -> Path:
    """A cached single-file checkpoint of the tiny weights (``fmt`` = "safetensors" or "ckpt")."""
    return _cached(("ldm", in_channels, ema, v_pred, f"model.{fmt}"),
                   lambda p: write_ldm_file(p, ldm_state(in_channels, ema=ema, v_pred=v_pred)))


def _lookalike(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    generator = torch.Generator().manual_seed(1)
    return write_ldm_file(path, {k: torch.randn(s, generator=generator) for k, s in shapes.items()})


def sd2_file() -> Path:
    """Keys/shapes of an SD-2.x file: OpenCLIP text encoder and 1024-wide cross-attention."""
    return _cached(("sd2", "model.safetensors"), lambda p: _lookalike(p, {
        "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (32, 32),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (32, 1024),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (96, 32),
        "cond_stage_model.model.token_embedding.weight": (16, 32),
        "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    }))


def sdxl_file() -> Path:
    """Keys/shapes of an SDXL file: ``conditioner.embedders.*`` text encoders, ``label_emb``, 2048 context."""
    return _cached(("sdxl", "model.safetensors"), lambda p: _lookalike(p, {
        "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (32, 64),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (32, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (16, 32),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (32,),
        "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    }))


def motion_module_shapes(channels: int, text_dim: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one CoCoCo motion module (``temporal_transformer.*``, spec §2.3; no ``pe``)."""
    c = channels
    shapes = {"norm.weight": (c,), "norm.bias": (c,), "proj_in.weight": (c, c), "proj_in.bias": (c,),
              "proj_out.weight": (c, c), "proj_out.bias": (c,)}
    block = "transformer_blocks.0."
    for j in range(4):
        attn = f"{block}attention_blocks.{j}."
        kv_in = text_dim if j == 3 else c
        shapes.update({attn + "to_q.weight": (c, c), attn + "to_k.weight": (c, kv_in), attn + "to_v.weight": (c, kv_in),
                       attn + "to_out.0.weight": (c, c), attn + "to_out.0.bias": (c,),
                       f"{block}norms.{j}.weight": (c,), f"{block}norms.{j}.bias": (c,)})
    shapes.update({block + "ff.net.0.proj.weight": (8 * c, c), block + "ff.net.0.proj.bias": (8 * c,),
                   block + "ff.net.2.weight": (c, 4 * c), block + "ff.net.2.bias": (c,),
                   block + "ff_norm.weight": (c,), block + "ff_norm.bias": (c,)})
    return {"temporal_transformer." + k: v for k, v in shapes.items()}


def motion_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Motion-module weights for the tiny U-Net, under the official names after ``module.`` is stripped
    (``down_blocks.{0..3}.motion_modules.{0,1}``, ``mid_block.motion_modules.0``,
    ``up_blocks.{0..3}.motion_modules.{0,1,2}``): 21 modules, widths from ``block_out_channels``."""
    widths = TINY_UNET_CONFIG["block_out_channels"]
    layers = TINY_UNET_CONFIG["layers_per_block"]
    places = [(f"down_blocks.{i}", widths[i], layers) for i in range(4)]
    places += [("mid_block", widths[-1], 1)]
    places += [(f"up_blocks.{i}", widths[::-1][i], layers + 1) for i in range(4)]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block, width, count in places:
        for m in range(count):
            for key, shape in motion_module_shapes(width, TINY_UNET_CONFIG["cross_attention_dim"]).items():
                state[f"{block}.motion_modules.{m}.{key}"] = 0.05 * torch.randn(shape, generator=generator)
    return state


def write_motion_folder(folder: Path, seed: int = 0, parts: int = 4) -> Path:
    """Write the official layout: ``model_0.pth .. model_{parts-1}.pth`` (torch pickles, keys split across
    the files in order), keys prefixed ``module.`` (DDP) and stale ``pos_encoder.pe`` buffers of the old
    lengths (1, 24, C) for temporal and (1, 4800, C) for the damped global attention block."""
    folder.mkdir(parents=True, exist_ok=True)
    state = motion_state(seed)
    for key in [k for k in state if k.endswith("attention_blocks.0.to_q.weight")]:
        width = state[key].shape[0]
        stem = key[: -len("0.to_q.weight")]
        for j in range(4):
            state[f"{stem}{j}.pos_encoder.pe"] = torch.zeros(1, 4800 if j == 2 else 24, width)
    keys = list(state)
    for part in range(parts):
        chunk = keys[part::parts]
        torch.save({"module." + k: state[k] for k in chunk}, folder / f"model_{part}.pth")
    return folder


def motion_folder() -> Path:
    """A cached official-layout CoCoCo motion folder for the tiny U-Net (see :func:`write_motion_folder`)."""
    return _cached(("motion",), write_motion_folder)


# --- metrics: CLIP (transformers layout, folder and ComfyUI clip_vision single file) and I3D (pytorch-i3d layout)

TINY_CLIP_VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, projection_dim=24, hidden_act="quick_gelu")


def clip_model(seed: int = 0):
    """A tiny transformers ``CLIPModel`` (eval): the tiny text tower of the SD folders + a 2-head ViT. Its
    widths follow the released models' rule of 64 channels per head, which single files rely on."""
    from transformers import CLIPConfig, CLIPModel

    text = {**TINY_CLIP_CONFIG, "hidden_size": 64, "num_attention_heads": 1}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_CLIP_VISION, projection_dim=24))
    _perturb(model, torch.Generator().manual_seed(seed))
    return model.eval()


def write_clip_folder(folder: Path) -> Path:
    """``CLIPModel.save_pretrained`` + the tiny tokenizer: the layout of openai/clip-vit-large-patch14."""
    clip_model().save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def clip_folder() -> Path:
    return _cached(("clip-folder",), write_clip_folder)


def clip_file(text: bool = True) -> Path:
    """The same weights as one ``.safetensors`` file with transformers key names, as ComfyUI's
    ``models/clip_vision/`` files (``text=False``: the vision tower and projection only)."""
    from safetensors.torch import save_file

    def build(path: Path) -> None:
        state = clip_model().state_dict()
        if not text:
            state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    return _cached(("clip-file", text, "clip.safetensors"), build)


# pytorch-i3d InceptionI3d: endpoint -> (kind, kernel); Inception blocks have branches b0, b1a, b1b, b2a, b2b, b3b
I3D_LAYOUT = (("Conv3d_1a_7x7", "unit", (7, 7, 7)), ("Conv3d_2b_1x1", "unit", (1, 1, 1)),
              ("Conv3d_2c_3x3", "unit", (3, 3, 3)), ("Mixed_3b", "mixed", None), ("Mixed_3c", "mixed", None),
              ("Mixed_4b", "mixed", None), ("Mixed_4c", "mixed", None), ("Mixed_4d", "mixed", None),
              ("Mixed_4e", "mixed", None), ("Mixed_4f", "mixed", None), ("Mixed_5b", "mixed", None),
              ("Mixed_5c", "mixed", None))
# the released i3d_rgb_imagenet.pt widths (pytorch-i3d source)
I3D_WIDTHS = {"Conv3d_1a_7x7": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192,
              "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
              "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
              "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
              "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
              "Mixed_5c": (384, 192, 384, 48, 128, 128)}
TINY_I3D_WIDTHS = {"Conv3d_1a_7x7": 8, "Conv3d_2b_1x1": 8, "Conv3d_2c_3x3": 12,
                   **{name: (4, 3, 4, 2, 3, 3) for name, kind, _ in I3D_LAYOUT if kind == "mixed"}}


def i3d_shapes(widths: dict = I3D_WIDTHS, classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an I3D state dict in the pytorch-i3d layout (conv3d without bias, BatchNorm3d)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(name: str, cin: int, cout: int, kernel) -> int:
        shapes[f"{name}.conv3d.weight"] = (cout, cin, *kernel)
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{tensor}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
        return cout

    channels = 3
    for name, kind, kernel in I3D_LAYOUT:
        if kind == "unit":
            channels = unit(name, channels, widths[name], kernel)
        else:
            w0, w1a, w1b, w2a, w2b, w3 = widths[name]
            unit(f"{name}.b0", channels, w0, (1, 1, 1))
            unit(f"{name}.b1a", channels, w1a, (1, 1, 1))
            unit(f"{name}.b1b", w1a, w1b, (3, 3, 3))
            unit(f"{name}.b2a", channels, w2a, (1, 1, 1))
            unit(f"{name}.b2b", w2a, w2b, (3, 3, 3))
            unit(f"{name}.b3b", channels, w3, (1, 1, 1))
            channels = w0 + w1b + w2b + w3
    shapes["logits.conv3d.weight"] = (classes, channels, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (classes,)
    return shapes


def i3d_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tiny I3D weights, He-scaled so that features still depend on the input after 16 layers
    (BN variances positive, ``num_batches_tracked`` int64 as torch saves it)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in i3d_shapes(TINY_I3D_WIDTHS, classes=10).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = 0.5 + 0.2 * torch.rand(shape, generator=generator)
        elif key.endswith("conv3d.weight"):
            state[key] = torch.randn(shape, generator=generator) * (2.0 / math.prod(shape[1:])) ** 0.5
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=generator)
    return state


def i3d_file() -> Path:
    """A tiny ``i3d_rgb_imagenet.pt``: a plain pickled state dict, as the released file."""
    return _cached(("i3d", "i3d_rgb_imagenet.pt"), lambda p: torch.save(i3d_state(), p))
