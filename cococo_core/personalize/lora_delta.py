"""Weight deltas of the LoRA family, computed in float32.

Each function returns the *unscaled-by-strength* delta Δ for one target weight, already
reshaped to ``target_shape``; the caller multiplies by the user's strength (and β).
Formulas follow checkpoint-formats.md §2.1-2.4:

* LoRA / LoCon (kohya): Δ = (alpha / r) · up @ down, r = down.shape[0]; 3×3 convs
  compose as ``up.flatten(1) @ down.flatten(1)``; with a Tucker core ``lora_mid``
  Δ[o,i,h,w] = Σ_ab up[o,a] · mid[a,b,h,w] · down[b,i].
* LoHa: Δ = (alpha / r) · (w1a @ w1b) ⊙ (w2a @ w2b), r = w1b.shape[0]; with CP cores
  ``hada_t1/t2`` each factor is einsum("ijkl,ip,jr->prkl", t, a, b).
* LoKr: Δ = (alpha / r) · kron(w1, w2), r = inner dim of the decomposed factor; when
  both factors are stored whole the scale is 1.
* full / diff: Δ = diff (bias: diff_b).
* DoRA: W' = (W + Δ) · m / ‖W + Δ‖ with the norm over every axis except the one m
  keeps (:func:`dora_axis`): PEFT's ``lora_magnitude_vector`` is always one value per
  output channel (``[out]`` for Linear, ``[1, out, 1, 1]`` for convolutions); LyCORIS
  ``dora_scale`` is ``[out, 1, ...]`` (``wd_on_out=True``) or ``[1, in, ...]``. The
  returned delta is W' − W, so strength s gives W + s·(W' − W) like ComfyUI.

Scale: alpha / r, or alpha / √r for PEFT's rank-stabilised LoRA (``use_rslora``). A stored
alpha of 0 (or none) means "alpha = rank", i.e. scale 1, which is what the kohya trainer that
wrote such files does (ComfyUI instead zeroes the delta).
Unlike the official CoCoCo ``convert_lora.py``, the alpha / rank scale is applied to
Linear layers as well as convolutions (that script omits it for Linear layers, making
LoRAs with alpha ≠ rank r/alpha times too strong on every attention and FF layer).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

F32 = torch.float32


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=F32)


def alpha_scale(alpha: Optional[float], rank: int, *, rslora: bool = False) -> float:
    """alpha / rank (alpha / √rank with ``rslora``); a missing or zero alpha means scale 1 (kohya semantics)."""
    if alpha is None or float(alpha) == 0.0:
        return 1.0
    return float(alpha) / (math.sqrt(rank) if rslora else float(rank))


def _reshape(delta: torch.Tensor, target_shape: Sequence[int], what: str) -> torch.Tensor:
    target_shape = tuple(int(s) for s in target_shape)
    if delta.numel() != torch.Size(target_shape).numel():
        raise ValueError(f"{what}: delta of shape {tuple(delta.shape)} does not fit a weight of shape {target_shape}")
    return delta.reshape(target_shape)


def lora(up: torch.Tensor, down: torch.Tensor, target_shape: Sequence[int], *, alpha: Optional[float] = None,
         mid: Optional[torch.Tensor] = None, rslora: bool = False) -> torch.Tensor:
    """kohya LoRA / LoCon / PEFT delta (with the optional Tucker core ``lora_mid``)."""
    up, down = _f32(up), _f32(down)
    rank = down.shape[0]
    if mid is None:
        delta = up.flatten(1) @ down.flatten(1)
    else:
        mid = _f32(mid)
        delta = torch.einsum("abhw,oa,bi->oihw", mid, up.flatten(1), down.flatten(1))
    return _reshape(delta, target_shape, "LoRA") * alpha_scale(alpha, rank, rslora=rslora)


def _cp_factor(t: Optional[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w = a @ b, or with a CP core t: einsum("ijkl,ip,jr->prkl", t, a, b) (a: [r, out], b: [r, in])."""
    if t is None:
        return _f32(a) @ _f32(b)
    return torch.einsum("ijkl,ip,jr->prkl", _f32(t), _f32(a), _f32(b))


def loha(tensors: Mapping[str, torch.Tensor], target_shape: Sequence[int], *, alpha: Optional[float] = None) -> torch.Tensor:
    """LyCORIS LoHa delta from ``hada_w1_a/b``, ``hada_w2_a/b`` (+ ``hada_t1/t2``)."""
    w1 = _cp_factor(tensors.get("hada_t1"), tensors["hada_w1_a"], tensors["hada_w1_b"])
    w2 = _cp_factor(tensors.get("hada_t2"), tensors["hada_w2_a"], tensors["hada_w2_b"])
    rank = tensors["hada_w1_b"].shape[0]
    return _reshape(w1 * w2, target_shape, "LoHa") * alpha_scale(alpha, rank)


def lokr(tensors: Mapping[str, torch.Tensor], target_shape: Sequence[int], *, alpha: Optional[float] = None) -> torch.Tensor:
    """LyCORIS LoKr delta kron(w1, w2) from ``lokr_w1`` | ``lokr_w1_a/b`` and ``lokr_w2`` | ``lokr_w2_a/b`` (+ ``lokr_t2``)."""
    rank = None
    if "lokr_w1" in tensors:
        w1 = _f32(tensors["lokr_w1"])
    else:
        w1 = _f32(tensors["lokr_w1_a"]) @ _f32(tensors["lokr_w1_b"])
        rank = tensors["lokr_w1_b"].shape[0]
    if "lokr_w2" in tensors:
        w2 = _f32(tensors["lokr_w2"])
    else:
        w2 = _cp_factor(tensors.get("lokr_t2"), tensors["lokr_w2_a"], tensors["lokr_w2_b"])
        rank = tensors["lokr_w2_b"].shape[0]
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    delta = _reshape(torch.kron(w1.contiguous(), w2.contiguous()), target_shape, "LoKr")
    return delta if rank is None else delta * alpha_scale(alpha, rank)


def dora_axis(magnitude_shape: Sequence[int], weight_shape: Sequence[int], *, per_output: bool) -> int:
    """The axis of the weight a DoRA magnitude keeps (0: output channels, 1: input channels); ValueError if none.

    ``per_output``: PEFT's ``lora_magnitude_vector`` (always per output channel, any shape with ``out``
    values). Otherwise LyCORIS / kohya ``dora_scale``: per output when its first dimension is ``out``
    (or it is 1-D with ``out`` values), else per input when it holds ``in`` values (as ComfyUI decides).
    """
    m, w = torch.Size(magnitude_shape), torch.Size(weight_shape)
    what = "PEFT DoRA lora_magnitude_vector" if per_output else "DoRA dora_scale"
    if len(w) < 2:
        raise ValueError(f"{what}: a weight of shape {tuple(w)} has no output and input axes")
    if m.numel() == w[0] and (per_output or len(m) <= 1 or m[0] == w[0]):
        return 0
    if not per_output and m.numel() == w[1]:
        return 1
    fits = "one value per output channel" if per_output else "one value per output or input channel"
    raise ValueError(f"{what} of shape {tuple(m)} does not hold {fits} of a weight of shape {tuple(w)}")


def dora(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, *, per_output: bool = False) -> torch.Tensor:
    """DoRA: W' − W where W' = (W + Δ) · m / ‖W + Δ‖ (norm over all axes but the one ``m`` keeps, see :func:`dora_axis`)."""
    w = _f32(weight)
    merged = w + _f32(delta)
    axis = dora_axis(magnitude.shape, merged.shape, per_output=per_output)
    channels = merged.shape[axis]
    norm = merged.transpose(0, axis).reshape(channels, -1).norm(dim=1)
    view = [1] * merged.dim()
    view[axis] = channels
    norm, m = norm.reshape(view), _f32(magnitude).reshape(view)
    return merged * (m / (norm + torch.finfo(F32).eps)) - w
