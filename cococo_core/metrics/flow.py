"""Optical flow for the warping error, from local weights only.

Backends (``load_flow(backend)``):

* ``"raft"``: RAFT (Teed & Deng 2020) as torchvision implements it (``torchvision.models.optical_flow.raft_large``),
  with the weights from a local file in torchvision's key layout (e.g. ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``,
  given as ``weights`` or found in torch hub's checkpoint cache; never downloaded). Frames in [-1, 1],
  padded by replication to a multiple of 8, 12 refinement iterations, the last prediction.
* ``"dis"``: OpenCV's DIS optical flow (Kroeger et al. 2016, ``cv2.DISOpticalFlow``, preset MEDIUM) on the
  grey-level frames; needs ``opencv-python-headless`` (or any OpenCV build).
* ``"auto"``: RAFT when torchvision and its weights are available, else DIS.

A flow maps frame A to frame B: ``flow[y, x] = (dx, dy)`` such that A's pixel (x, y) is at
(x + dx, y + dy) in B. The backend's name is reported with every warping error.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .frames import as_frames

logger = logging.getLogger(__name__)

RAFT_FILE = "raft_large_C_T_SKHT_V2-ff5fadd5.pth"  # torchvision's Raft_Large_Weights.C_T_SKHT_V2
INSTALL_HINT = "install opencv-python-headless (DIS flow) or torchvision with local RAFT weights (--raft)"


def flow_backends() -> list[str]:
    """The backends importable here: "raft" needs torchvision, "dis" needs OpenCV."""
    found = []
    if importlib.util.find_spec("torchvision") is not None:
        found.append("raft")
    if importlib.util.find_spec("cv2") is not None:
        found.append("dis")
    return found


def _hub_raft_file() -> Path | None:
    try:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / RAFT_FILE
    except Exception:  # noqa: BLE001 - no hub directory is not an error here
        return None
    return hub if hub.is_file() else None


class FlowEstimator:
    """``estimator(a, b)``: flows (N, H, W, 2) float64 from frames a[i] to b[i] (module docstring)."""

    name = "none"

    def __call__(self, first, second) -> torch.Tensor:
        raise NotImplementedError


class DisFlow(FlowEstimator):
    name = "dis"

    def __init__(self):
        import cv2  # noqa: PLC0415

        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        return self._cv2.cvtColor(frame, self._cv2.COLOR_RGB2GRAY)

    def __call__(self, first, second) -> torch.Tensor:
        first = as_frames(first).round().to(torch.uint8).numpy()
        second = as_frames(second).round().to(torch.uint8).numpy()
        flows = [self._dis.calc(self._grey(a), self._grey(b), None) for a, b in zip(first, second)]
        return torch.from_numpy(np.stack(flows)).to(torch.float64)


class RaftFlow(FlowEstimator):
    name = "raft"

    def __init__(self, weights: str | os.PathLike, device="cpu", iterations: int = 12):
        from torchvision.models.optical_flow import raft_large  # noqa: PLC0415

        from ..checkpoints.safe_load import load_state_dict  # noqa: PLC0415

        model = raft_large(weights=None, progress=False)
        model.load_state_dict(load_state_dict(weights))
        self.model, self.device, self.iterations = model.to(device).eval(), torch.device(device), iterations

    @torch.no_grad()
    def __call__(self, first, second, batch_size: int = 4) -> torch.Tensor:
        first, second = as_frames(first) / 127.5 - 1, as_frames(second) / 127.5 - 1
        height, width = first.shape[1:3]
        pad = (0, (-width) % 8, 0, (-height) % 8)
        flows = []
        for start in range(0, first.shape[0], batch_size):
            a, b = (torch.nn.functional.pad(x[start:start + batch_size].permute(0, 3, 1, 2).float(), pad, mode="replicate")
                    .to(self.device) for x in (first, second))
            flow = self.model(a, b, num_flow_updates=self.iterations)[-1]
            flows.append(flow[:, :, :height, :width].permute(0, 2, 3, 1).double().cpu())
        return torch.cat(flows)


def load_flow(backend: str = "auto", *, raft_weights: str | os.PathLike | None = None, device="cpu") -> FlowEstimator:
    """A flow estimator (module docstring); raises with what to install when no backend is usable."""
    available = flow_backends()
    if backend == "auto":
        weights = raft_weights or _hub_raft_file()
        if "raft" in available and weights is not None:
            backend, raft_weights = "raft", weights
        elif "dis" in available:
            backend = "dis"
        else:
            raise ValueError(f"no optical flow backend for the warping error: {INSTALL_HINT}")
    if backend == "raft":
        if "raft" not in available:
            raise ValueError("RAFT flow needs torchvision, which is not installed; use the 'dis' backend")
        weights = raft_weights or _hub_raft_file()
        if weights is None:
            raise FileNotFoundError(f"RAFT flow needs local weights ({RAFT_FILE}, torchvision's raft_large); none "
                                    "given and none in torch hub's checkpoint folder")
        return RaftFlow(weights, device)
    if backend == "dis":
        if "dis" not in available:
            raise ValueError(f"DIS flow needs OpenCV: {INSTALL_HINT}")
        return DisFlow()
    raise ValueError(f"unknown flow backend {backend!r}: use auto, raft or dis")
