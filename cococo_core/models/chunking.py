"""Frame-chunked execution of the per-frame layers of the video U-Net (an opt-in memory bound).

Everything in the CoCoCo U-Net except the motion modules' attentions works on each frame on its own: the
2-D resnets, the spatial transformers (self- and cross-attention, GEGLU feed-forward), the down/up samplers
and the motion modules' feed-forwards. Their working memory grows with the B·F frames of a call (at 512²,
16 frames and batched CFG a single top-level GEGLU output is 32 × 4096 × 2560 floats, 1.25 GiB). Running each
such layer on ``chunk`` frames at a time and concatenating the outputs bounds that memory by the chunk
instead; the layer outputs, which the motion modules need whole, are unchanged in size. Frames are
independent in these layers, so the result is the same: ``tests/test_video_unet_memory.py`` checks it in
float64 to 1e-12. It is not bit-identical in float32 on CPU: MKL computes the resnets' small (frames, 1280)
time-embedding projection with another kernel when it has fewer rows, which changes the last bits.
"""
from __future__ import annotations

import torch
from torch import nn


def _slice(value, count: int, start: int, stop: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == count:
        return value[start:stop]
    return value


def _join(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, tuple):
        return tuple(_join([part[i] for part in parts]) for i in range(len(first)))
    if hasattr(first, "sample"):
        first.sample = torch.cat([part.sample for part in parts])
        return first
    return first  # not per-frame (None, a flag): the same in every chunk


class _ChunkedForward:
    """Replaces a module's ``forward`` (instance attribute) so that it runs ``chunk`` frames at a time.

    Every tensor argument whose first dimension is the frame count of the first argument is sliced; the
    rest (the prompt when it is shared, scalars, flags) is passed as it is.
    """

    def __init__(self, forward, chunk: int):
        self.forward, self.chunk = forward, chunk

    def __call__(self, *args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        count = first.shape[0]
        if count <= self.chunk:
            return self.forward(*args, **kwargs)
        parts = []
        for start in range(0, count, self.chunk):
            stop = min(start + self.chunk, count)
            parts.append(self.forward(*(_slice(a, count, start, stop) for a in args),
                                      **{k: _slice(v, count, start, stop) for k, v in kwargs.items()}))
        return _join(parts)


def per_frame_layers(unet: nn.Module) -> list[nn.Module]:
    """The per-frame layers of a diffusers U-Net carrying motion modules: every block's resnets, spatial
    transformers and samplers, and each motion module's feed-forward."""
    layers = []
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for name in ("resnets", "attentions", "downsamplers", "upsamplers"):
            layers += list(getattr(block, name, None) or [])
        for motion in getattr(block, "motion_modules", None) or []:
            layers += [b.ff for b in motion.temporal_transformer.transformer_blocks]
    return layers


def set_frame_chunk(unet: nn.Module, chunk: int | None) -> None:
    """Run the per-frame layers of ``unet`` on ``chunk`` frames (of the B·F in a call) at a time; None: all."""
    chunk_layers(per_frame_layers(unet), chunk)


def chunk_layers(layers, chunk: int | None) -> None:
    """Run each of ``layers`` (modules whose calls are independent per frame along the first dimension) on
    ``chunk`` frames at a time; None: all at once (the plain forward back)."""
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"frame_chunk must be a whole number of frames >= 1 or None, got {chunk!r}")
    for layer in layers:
        current = layer.__dict__.get("forward")
        if isinstance(current, _ChunkedForward):
            del layer.forward
        if chunk is not None:
            layer.forward = _ChunkedForward(layer.forward, chunk)
