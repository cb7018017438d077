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
  keeps (LyCORIS ``wd_on_out=False`` stores m as [1, in, ...]; PEFT's
  ``lora_magnitude_vector`` and ``wd_on_out=True`` store it per output row); the
  returned delta is W' − W, so strength s gives W + s·(W' − W) like ComfyUI.

Alpha: a stored alpha of 0 (or none) means "alpha = rank", i.e. scale 1, which is what
the kohya trainer that wrote such files does (ComfyUI instead zeroes the delta).
Unlike the official CoCoCo ``convert_lora.py``, the alpha / rank scale is applied to
Linear layers as well as convolutions (that script omits it for Linear layers, making
LoRAs with alpha ≠ rank r/alpha times too strong on every attention and FF layer).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

F32 = torch.float32


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=F32)


def alpha_scale(alpha: Optional[float], rank: int) -> float:
    """alpha / rank; a missing or zero alpha means alpha = rank (kohya semantics)."""
    if alpha is None or float(alpha) == 0.0:
        return 1.0
    return float(alpha) / float(rank)


def _reshape(delta: torch.Tensor, target_shape: Sequence[int], what: str) -> torch.Tensor:
    target_shape = tuple(int(s) for s in target_shape)
    if delta.numel() != torch.Size(target_shape).numel():
        raise ValueError(f"{what}: delta of shape {tuple(delta.shape)} does not fit a weight of shape {target_shape}")
    return delta.reshape(target_shape)


def lora(up: torch.Tensor, down: torch.Tensor, target_shape: Sequence[int], *, alpha: Optional[float] = None,
         mid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """kohya LoRA / LoCon delta (with the optional Tucker core ``lora_mid``)."""
    up, down = _f32(up), _f32(down)
    rank = down.shape[0]
    if mid is None:
        delta = up.flatten(1) @ down.flatten(1)
    else:
        mid = _f32(mid)
        delta = torch.einsum("abhw,oa,bi->oihw", mid, up.flatten(1), down.flatten(1))
    return _reshape(delta, target_shape, "LoRA") * alpha_scale(alpha, rank)


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


def dora(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA: W' − W where W' = (W + Δ) · m / ‖W + Δ‖ (norm over all axes but the one ``m`` keeps)."""
    w = _f32(weight)
    merged = w + _f32(delta)
    m = _f32(magnitude)
    out_axis = m.numel() == merged.shape[0] and (m.dim() <= 1 or m.shape[0] == merged.shape[0])
    if out_axis:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.dim() - 1))
        m = m.reshape(norm.shape)
    elif m.numel() == merged.shape[1]:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, merged.shape[1], *[1] * (merged.dim() - 2))
        m = m.reshape(norm.shape)
    else:
        raise ValueError(f"DoRA: magnitude of shape {tuple(magnitude.shape)} fits neither axis of a weight of shape {tuple(weight.shape)}")
    return merged * (m / (norm + torch.finfo(F32).eps)) - w
