"""Key mapping between SD-1.x single-file (LDM / CompVis) checkpoints and diffusers/transformers modules.

Formats (see ``docs/checkpoints.md``; layout per the CompVis ``ldm`` code):

* U-Net ``model.diffusion_model.*`` <-> diffusers ``UNet2DConditionModel``. With L = layers_per_block and
  N levels: ``input_blocks.0.0`` = ``conv_in``; ``input_blocks.i`` (i >= 1) is down level b = (i-1) // (L+1),
  layer l = (i-1) % (L+1): ``.0`` resnet / ``.1`` transformer for l < L, ``.0.op`` the downsampler for l = L.
  ``middle_block.{0,1,2}`` = resnet, transformer, resnet. ``output_blocks.i`` is up level b = i // (L+1),
  layer l = i % (L+1) (up levels have L+1 layers): ``.0`` resnet, ``.1`` transformer (or the upsampler
  ``.1.conv`` in levels without attention), ``.2.conv`` the upsampler. Resnet inner names:
  ``in_layers.0/2`` = ``norm1/conv1``, ``out_layers.0/3`` = ``norm2/conv2``, ``emb_layers.1`` =
  ``time_emb_proj``, ``skip_connection`` = ``conv_shortcut``. Transformer inner names are shared.
* VAE ``first_stage_model.*`` <-> diffusers ``AutoencoderKL``: ``encoder.down.i.block.j`` =
  ``encoder.down_blocks.i.resnets.j``, ``decoder.up.k`` = ``decoder.up_blocks.(N-1-k)`` (reversed),
  ``mid.block_{1,2}`` = ``mid_block.resnets.{0,1}``, ``mid.attn_1.{norm,q,k,v,proj_out}`` =
  ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` where the LDM 1x1 conv weight (C,C,1,1)
  is the diffusers Linear weight (C,C); ``nin_shortcut`` = ``conv_shortcut``, ``norm_out`` = ``conv_norm_out``.
* CLIP ``cond_stage_model.transformer.text_model.*`` (older files: without ``text_model.``) <-> the names of
  transformers 5's ``CLIPTextModel.state_dict()`` (no ``text_model.`` prefix). ``embeddings.position_ids``
  is a constant buffer: never mapped, never merged; the LDM writer regenerates it.

Per-key maps (for streaming) are :meth:`SDKeyMap.to_diffusers` / :meth:`SDKeyMap.to_ldm`; whole-dict
helpers are :func:`ldm_to_diffusers` / :func:`diffusers_to_ldm`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Optional

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
EMA_PREFIX = "model_ema."
COMPONENTS = ("unet", "vae", "text_encoder")

Transform = Callable[[torch.Tensor], torch.Tensor]


class KeyMapping(NamedTuple):
    """Where a tensor goes: ``component`` ("unet" | "vae" | "text_encoder", or "ldm" for the single file),
    its ``key`` there, and an optional ``transform`` to apply to the tensor (a reshape; never a copy of data)."""

    component: str
    key: str
    transform: Optional[Transform] = None


class UnknownKeyError(KeyError):
    """A key under a component prefix that the SD-1.x layout does not have."""


def conv1x1_to_linear(tensor: torch.Tensor) -> torch.Tensor:
    """LDM VAE attention 1x1 conv weight (C, C, 1, 1) -> diffusers Linear weight (C, C)."""
    return tensor[:, :, 0, 0] if tensor.ndim == 4 else tensor


def linear_to_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    """diffusers Linear weight (C, C) -> LDM 1x1 conv weight (C, C, 1, 1)."""
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


def ema_key(ldm_key: str) -> str:
    """The flattened EMA name of a ``model.diffusion_model.*`` key, as LDM training stores it:
    ``model_ema.`` + the key without its first component and without dots
    (``model.diffusion_model.out.2.bias`` -> ``model_ema.diffusion_modelout2bias``)."""
    return EMA_PREFIX + "".join(ldm_key.split(".")[1:])


def _rename(table: Iterable[tuple[str, str]], name: str) -> str:
    for old, new in table:
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return name


_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
           ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut"))
_RESNET_BACK = tuple((new, old) for old, new in _RESNET)
_UNET_FIXED = (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
               ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"))
_UNET_FIXED_BACK = tuple((new, old) for old, new in _UNET_FIXED)
_RESNET_PARAMS = {"norm1", "conv1", "norm2", "conv2", "time_emb_proj", "conv_shortcut"}


def _resnet_ok(inner: str) -> bool:
    return inner.split(".")[0] in _RESNET_PARAMS


@dataclass(frozen=True)
class UNetKeyMap:
    """U-Net index arithmetic for a given ``layers_per_block`` and the set of up levels with attention."""

    layers_per_block: int = 2
    up_attention: frozenset = frozenset({1, 2, 3})

    def to_diffusers(self, key: str) -> str:
        """LDM name without ``model.diffusion_model.`` -> diffusers name; UnknownKeyError if not in the layout."""
        fixed = _rename(_UNET_FIXED, key)
        if fixed != key:
            return fixed
        span = self.layers_per_block + 1
        match = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.+)", key)
        if match:
            kind, index, part, inner = match.group(1), int(match.group(2)), match.group(3), match.group(4)
            if kind == "middle_block" and part is None:
                target = {0: "mid_block.resnets.0", 1: "mid_block.attentions.0", 2: "mid_block.resnets.1"}.get(index)
                if target is not None:
                    return target + "." + (_rename(_RESNET, inner) if index != 1 else inner)
            elif kind == "input_blocks" and part is not None and index >= 1:
                level, layer, part = (index - 1) // span, (index - 1) % span, int(part)
                if layer == self.layers_per_block and part == 0 and inner.startswith("op."):
                    return f"down_blocks.{level}.downsamplers.0.conv.{inner[3:]}"
                if layer < self.layers_per_block and part == 0:
                    return f"down_blocks.{level}.resnets.{layer}.{_rename(_RESNET, inner)}"
                if layer < self.layers_per_block and part == 1:
                    return f"down_blocks.{level}.attentions.{layer}.{inner}"
            elif kind == "output_blocks" and part is not None:
                level, layer, part = index // span, index % span, int(part)
                if part == 0:
                    return f"up_blocks.{level}.resnets.{layer}.{_rename(_RESNET, inner)}"
                if inner.startswith("conv.") and layer == self.layers_per_block and part == (2 if level in self.up_attention else 1):
                    return f"up_blocks.{level}.upsamplers.0.{inner}"
                if part == 1 and level in self.up_attention:
                    return f"up_blocks.{level}.attentions.{layer}.{inner}"
        raise UnknownKeyError(f"U-Net key {UNET_PREFIX}{key} is not part of the SD-1.x U-Net layout")

    def to_ldm(self, key: str) -> str:
        """diffusers U-Net name -> LDM name without ``model.diffusion_model.``."""
        fixed = _rename(_UNET_FIXED_BACK, key)
        if fixed != key:
            return fixed
        span = self.layers_per_block + 1
        match = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
        if match:
            kind, level, sub, layer, inner = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match.group(5)
            if kind == "down_blocks" and sub == "resnets" and _resnet_ok(inner):
                return f"input_blocks.{1 + level * span + layer}.0.{_rename(_RESNET_BACK, inner)}"
            if kind == "down_blocks" and sub == "attentions":
                return f"input_blocks.{1 + level * span + layer}.1.{inner}"
            if kind == "down_blocks" and sub == "downsamplers" and inner.startswith("conv."):
                return f"input_blocks.{1 + level * span + self.layers_per_block}.0.op.{inner[5:]}"
            if kind == "up_blocks" and sub == "resnets" and _resnet_ok(inner):
                return f"output_blocks.{level * span + layer}.0.{_rename(_RESNET_BACK, inner)}"
            if kind == "up_blocks" and sub == "attentions" and level in self.up_attention:
                return f"output_blocks.{level * span + layer}.1.{inner}"
            if kind == "up_blocks" and sub == "upsamplers" and inner.startswith("conv."):
                part = 2 if level in self.up_attention else 1
                return f"output_blocks.{level * span + self.layers_per_block}.{part}.{inner}"
        match = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if match:
            sub, index, inner = match.groups()
            if sub == "attentions" and index == "0":
                return f"middle_block.1.{inner}"
            if sub == "resnets" and index in ("0", "1") and _resnet_ok(inner):
                return f"middle_block.{0 if index == '0' else 2}.{_rename(_RESNET_BACK, inner)}"
        raise UnknownKeyError(f"U-Net key {key} is not part of the SD-1.x U-Net layout")

    @classmethod
    def from_ldm_keys(cls, keys: Iterable[str]) -> "UNetKeyMap":
        """Infer the layout from LDM U-Net keys (with or without the ``model.diffusion_model.`` prefix)."""
        keys = [k[len(UNET_PREFIX):] if k.startswith(UNET_PREFIX) else k for k in keys]
        inputs = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
        downs = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
        if not inputs:
            raise UnknownKeyError("no U-Net input_blocks keys found; cannot infer the U-Net layout")
        layers = downs[0] - 1 if downs else max(inputs)
        span = layers + 1
        up_attention = {int(m.group(1)) // span for k in keys
                        if (m := re.match(r"output_blocks\.(\d+)\.1\.(?!conv\.)", k))}
        return cls(layers, frozenset(up_attention))

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> "UNetKeyMap":
        """Infer the layout from diffusers U-Net state-dict keys."""
        keys = list(keys)
        layers = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
        if not layers:
            raise UnknownKeyError("no U-Net down_blocks.0.resnets keys found; cannot infer the U-Net layout")
        up_attention = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
        return cls(max(layers) + 1, frozenset(up_attention))

    @classmethod
    def from_config(cls, config: Mapping) -> "UNetKeyMap":
        """From a diffusers ``UNet2DConditionModel`` config (int ``layers_per_block``)."""
        layers = config.get("layers_per_block", 2)
        if not isinstance(layers, int):
            raise ValueError(f"per-level layers_per_block {layers!r} is not an SD-1.x U-Net")
        ups = config.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        return cls(layers, frozenset(i for i, name in enumerate(ups) if "CrossAttn" in name))


_VAE_ATTN = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
_VAE_ATTN_LEGACY = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0"))
_VAE_RESNET = (("nin_shortcut", "conv_shortcut"),)
_VAE_RESNET_BACK = (("conv_shortcut", "nin_shortcut"),)
_VAE_FIXED = ("conv_in.", "conv_out.")


@dataclass(frozen=True)
class VAEKeyMap:
    """VAE mapping for ``levels`` resolution levels (4 for SD)."""

    levels: int = 4

    def to_diffusers(self, key: str) -> tuple[str, Optional[Transform]]:
        """LDM name without ``first_stage_model.`` -> (diffusers name, transform)."""
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            return key, None
        coder, _, rest = key.partition(".")
        if coder in ("encoder", "decoder"):
            if rest.startswith(_VAE_FIXED):
                return key, None
            if rest.startswith("norm_out."):
                return f"{coder}.conv_norm_out.{rest[9:]}", None
            match = re.fullmatch(r"mid\.block_([12])\.(.+)", rest)
            if match:
                return f"{coder}.mid_block.resnets.{int(match.group(1)) - 1}.{_rename(_VAE_RESNET, match.group(2))}", None
            match = re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
            if match:
                name = dict(_VAE_ATTN)[match.group(1)]
                transform = conv1x1_to_linear if match.group(1) != "norm" and match.group(2) == "weight" else None
                return f"{coder}.mid_block.attentions.0.{name}.{match.group(2)}", transform
            match = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
            if match and (match.group(1) == "down") == (coder == "encoder"):
                level = int(match.group(2))
                if coder == "decoder":
                    level = self.levels - 1 - level
                blocks = "down_blocks" if coder == "encoder" else "up_blocks"
                if match.group(4) is not None:
                    return f"{coder}.{blocks}.{level}.resnets.{match.group(4)}.{_rename(_VAE_RESNET, match.group(5))}", None
                if match.group(3) == ("downsample" if coder == "encoder" else "upsample") and match.group(5).startswith("conv."):
                    sampler = "downsamplers" if coder == "encoder" else "upsamplers"
                    return f"{coder}.{blocks}.{level}.{sampler}.0.{match.group(5)}", None
        raise UnknownKeyError(f"VAE key {VAE_PREFIX}{key} is not part of the SD VAE layout")

    def to_ldm(self, key: str) -> tuple[str, Optional[Transform]]:
        """diffusers VAE name (modern or legacy attention names) -> (LDM name without prefix, transform)."""
        key = normalize_vae_key(key)
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            return key, None
        coder, _, rest = key.partition(".")
        if coder in ("encoder", "decoder"):
            if rest.startswith(_VAE_FIXED):
                return key, None
            if rest.startswith("conv_norm_out."):
                return f"{coder}.norm_out.{rest[14:]}", None
            match = re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest)
            if match:
                return f"{coder}.mid.block_{int(match.group(1)) + 1}.{_rename(_VAE_RESNET_BACK, match.group(2))}", None
            match = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest)
            if match:
                name = {new: old for old, new in _VAE_ATTN}[match.group(1)]
                transform = linear_to_conv1x1 if name != "norm" and match.group(2) == "weight" else None
                return f"{coder}.mid.attn_1.{name}.{match.group(2)}", transform
            blocks = "down_blocks" if coder == "encoder" else "up_blocks"
            match = re.fullmatch(rf"{blocks}\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)", rest)
            if match:
                level = int(match.group(1))
                ldm_level = level if coder == "encoder" else self.levels - 1 - level
                side = "down" if coder == "encoder" else "up"
                if match.group(3) is not None:
                    return f"{coder}.{side}.{ldm_level}.block.{match.group(3)}.{_rename(_VAE_RESNET_BACK, match.group(4))}", None
                if match.group(2) == ("downsamplers.0" if coder == "encoder" else "upsamplers.0") and match.group(4).startswith("conv."):
                    return f"{coder}.{side}.{ldm_level}.{side}sample.{match.group(4)}", None
        raise UnknownKeyError(f"VAE key {key} is not part of the SD VAE layout")


def normalize_vae_key(key: str) -> str:
    """Legacy diffusers VAE attention names (``query/key/value/proj_attn``) -> modern (``to_q/.../to_out.0``)."""
    match = re.fullmatch(r"(.*mid_block\.attentions\.0\.)(query|key|value|proj_attn)(\..+)", key)
    return match.group(1) + dict(_VAE_ATTN_LEGACY)[match.group(2)] + match.group(3) if match else key


def clip_to_transformers(key: str) -> Optional[str]:
    """LDM CLIP name without ``cond_stage_model.transformer.`` -> transformers 5 ``CLIPTextModel`` name.
    ``None`` for the ``position_ids`` buffer (never mapped). Older files lack ``text_model.``."""
    if key.startswith("text_model."):
        key = key[len("text_model."):]
    if key == "embeddings.position_ids":
        return None
    if key.split(".")[0] in ("embeddings", "encoder", "final_layer_norm"):
        return key
    raise UnknownKeyError(f"text encoder key {CLIP_PREFIX}{key} is not part of the CLIP text model layout")


def clip_from_transformers(key: str) -> str:
    """transformers ``CLIPTextModel`` name (with or without ``text_model.``) -> LDM name without prefix."""
    return key if key.startswith("text_model.") else "text_model." + key


@dataclass(frozen=True)
class SDKeyMap:
    """The whole SD-1.x single-file layout: U-Net + VAE + CLIP text encoder."""

    unet: UNetKeyMap = field(default_factory=UNetKeyMap)
    vae: VAEKeyMap = field(default_factory=VAEKeyMap)

    def to_diffusers(self, ldm_key: str) -> Optional[KeyMapping]:
        """Where a single-file key goes. ``None`` for keys that are not component weights (CLIP
        ``position_ids``, DDPM schedule buffers, ``model_ema.*``, markers such as ``v_pred``). Raises
        :class:`UnknownKeyError` for a key under a component prefix that does not fit the layout."""
        if ldm_key.startswith(UNET_PREFIX):
            return KeyMapping("unet", self.unet.to_diffusers(ldm_key[len(UNET_PREFIX):]))
        if ldm_key.startswith(VAE_PREFIX):
            return KeyMapping("vae", *self.vae.to_diffusers(ldm_key[len(VAE_PREFIX):]))
        if ldm_key.startswith(CLIP_PREFIX):
            name = clip_to_transformers(ldm_key[len(CLIP_PREFIX):])
            return None if name is None else KeyMapping("text_encoder", name)
        return None

    def to_ldm(self, component: str, key: str) -> KeyMapping:
        """Where a diffusers/transformers component key goes in a single file (component "ldm")."""
        if component == "unet":
            return KeyMapping("ldm", UNET_PREFIX + self.unet.to_ldm(key))
        if component == "vae":
            name, transform = self.vae.to_ldm(key)
            return KeyMapping("ldm", VAE_PREFIX + name, transform)
        if component == "text_encoder":
            if key.endswith("position_ids"):
                raise UnknownKeyError(f"{key} is a constant buffer, not a weight; it is never mapped")
            return KeyMapping("ldm", CLIP_PREFIX + clip_from_transformers(key))
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")

    @classmethod
    def from_ldm_keys(cls, keys: Iterable[str]) -> "SDKeyMap":
        """Infer layouts from the key names of a single file (no tensor data needed)."""
        keys = list(keys)
        unet_keys = [k for k in keys if k.startswith(UNET_PREFIX)]
        unet = UNetKeyMap.from_ldm_keys(unet_keys) if unet_keys else UNetKeyMap()
        levels = {int(m.group(1)) for k in keys if (m := re.match(r"first_stage_model\.encoder\.down\.(\d+)\.", k))}
        return cls(unet, VAEKeyMap(max(levels) + 1 if levels else 4))

    @classmethod
    def from_diffusers_keys(cls, components: Mapping[str, Iterable[str]]) -> "SDKeyMap":
        """Infer layouts from per-component diffusers key names."""
        unet_keys = list(components.get("unet", ()))
        unet = UNetKeyMap.from_diffusers_keys(unet_keys) if unet_keys else UNetKeyMap()
        levels = {int(m.group(1)) for k in components.get("vae", ())
                  if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
        return cls(unet, VAEKeyMap(max(levels) + 1 if levels else 4))


@dataclass
class LDMConversion:
    """Result of :func:`ldm_to_diffusers`: per-component state dicts, keys deliberately left out
    (buffers, EMA copies, markers), and keys under a component prefix that did not fit the layout."""

    components: dict[str, dict[str, torch.Tensor]]
    ignored: list[str]
    unknown: list[str]


def ldm_to_diffusers(state: Mapping[str, torch.Tensor], key_map: SDKeyMap | None = None) -> LDMConversion:
    """Split a single-file state dict into diffusers-named ``unet`` / ``vae`` / ``text_encoder`` dicts."""
    key_map = key_map or SDKeyMap.from_ldm_keys(state)
    result = LDMConversion({name: {} for name in COMPONENTS}, [], [])
    for key, tensor in state.items():
        try:
            target = key_map.to_diffusers(key)
        except UnknownKeyError:
            result.unknown.append(key)
            continue
        if target is None:
            result.ignored.append(key)
            continue
        result.components[target.component][target.key] = target.transform(tensor) if target.transform else tensor
    return result


def diffusers_to_ldm(components: Mapping[str, Mapping[str, torch.Tensor]], key_map: SDKeyMap | None = None,
                     *, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """Join per-component diffusers state dicts into one single-file state dict with LDM names.

    With ``position_ids`` the CLIP ``position_ids`` buffer (int64 [1, P]) is written as real files have it.
    Raises :class:`UnknownKeyError` listing every key that has no LDM name.
    """
    key_map = key_map or SDKeyMap.from_diffusers_keys({c: list(sd) for c, sd in components.items()})
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for component, state in components.items():
        for key, tensor in state.items():
            if component == "text_encoder" and key.endswith("position_ids"):
                continue
            try:
                target = key_map.to_ldm(component, key)
            except UnknownKeyError:
                unknown.append(f"{component}:{key}")
                continue
            out[target.key] = target.transform(tensor) if target.transform else tensor
    if unknown:
        raise UnknownKeyError(f"{len(unknown)} keys have no SD-1.x single-file name: {', '.join(unknown[:10])}")
    positions = out.get(CLIP_PREFIX + "text_model.embeddings.position_embedding.weight")
    if position_ids and positions is not None:
        out[CLIP_POSITION_IDS] = torch.arange(positions.shape[0], dtype=torch.int64)[None]
    return out
