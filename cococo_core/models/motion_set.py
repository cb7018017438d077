"""The CoCoCo motion modules on their own, for U-Nets other than diffusers' (the LDM / ComfyUI layout).

The official placement (spec §1.2, see :mod:`.video_unet`) in terms of the original LDM ``UNetModel``:
``input_blocks`` are ``[conv_in]`` then, per level, ``num_res_blocks`` blocks (resnet + optional spatial
transformer) and one downsample block (not after the last level); ``output_blocks`` are, per level from the
deepest, ``num_res_blocks + 1`` blocks (resnet + optional transformer + optional upsampler last). A motion
module follows the spatial transformer of a block when it has one, else its resnet, before any sampler; the
middle block's follows its transformer. So

* ``down_blocks.{i}.motion_modules.{j}``  -> ``("input", 1 + sum(nrb[k] + 1 for k < i) + j)``, width ``ch·mult[i]``;
* ``mid_block.motion_modules.0``          -> ``("middle", 0)``, width ``ch·mult[-1]``;
* ``up_blocks.{i}.motion_modules.{j}``    -> ``("output", sum(nrb[L-1-k] + 1 for k < i) + j)``, width
  ``ch·mult[L-1-i]``.

:class:`MotionModuleSet` holds one :class:`MotionModule` per site under the official key names, so the
official files (after :func:`read_motion_weights`) load into it as they are. It imports nothing from ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .motion_module import MotionModule
from .motion_weights import MotionWeightsError, check_motion_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LdmMotionSite:
    """One motion module: its official key ``prefix``, the LDM ``block`` it ends and its channel ``width``."""

    prefix: str
    block: tuple[str, int]
    width: int


def ldm_motion_layout(model_channels: int, channel_mult: Sequence[int],
                      num_res_blocks: int | Sequence[int]) -> list[LdmMotionSite]:
    """The motion sites of an LDM U-Net, in official order (21 for SD-1.x: 2 per level down, 1 mid, 3 up)."""
    levels = len(channel_mult)
    res_blocks = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
    if len(res_blocks) != levels:
        raise ValueError(f"num_res_blocks {num_res_blocks} does not match {levels} levels")
    sites, index = [], 1
    for level in range(levels):
        width = model_channels * channel_mult[level]
        for j in range(res_blocks[level]):
            sites.append(LdmMotionSite(f"down_blocks.{level}.motion_modules.{j}", ("input", index + j), width))
        index += res_blocks[level] + 1
    sites.append(LdmMotionSite("mid_block.motion_modules.0", ("middle", 0), model_channels * channel_mult[-1]))
    index = 0
    for up in range(levels):
        level = levels - 1 - up
        width = model_channels * channel_mult[level]
        for j in range(res_blocks[level] + 1):
            sites.append(LdmMotionSite(f"up_blocks.{up}.motion_modules.{j}", ("output", index + j), width))
        index += res_blocks[level] + 1
    return sites


class MotionModuleSet(nn.Module):
    """The motion modules of one U-Net, with the official state-dict keys (``down_blocks.0.motion_modules.1.
    temporal_transformer...``), built for ``sites`` and a text width ``text_dim``."""

    def __init__(self, sites: Sequence[LdmMotionSite], text_dim: int, *, device=None, dtype=None):
        super().__init__()
        self.sites = tuple(sites)
        with torch.device(device or "cpu"):
            for site in self.sites:
                parts = site.prefix.split(".")
                parent = self._holder(parts[:-2])
                if not hasattr(parent, "motion_modules"):
                    parent.motion_modules = nn.ModuleList()
                parent.motion_modules.append(MotionModule(site.width, text_dim))
        if dtype is not None:
            self.to(dtype)

    def _holder(self, path: list[str]) -> nn.Module:
        """The module at ``path`` (e.g. ``["down_blocks", "0"]``), created on the way."""
        node: nn.Module = self
        for name in path:
            if isinstance(node, nn.ModuleList):
                index = int(name)
                while len(node) <= index:
                    node.append(nn.Module())
                node = node[index]
            else:
                if not hasattr(node, name):
                    node.add_module(name, nn.ModuleList() if name.endswith("blocks") else nn.Module())
                node = getattr(node, name)
        return node

    def module_at(self, site: LdmMotionSite) -> MotionModule:
        parts = site.prefix.split(".")
        return self._holder(parts[:-2]).motion_modules[int(parts[-1])]

    def by_block(self) -> dict[tuple[str, int], MotionModule]:
        """``{("input", 1): module, ...}``: the module that ends each LDM block."""
        return {site.block: self.module_at(site) for site in self.sites}

    def load_official(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Load normalised official weights (see :func:`read_motion_weights`): every motion tensor must be there
        with its shape (:class:`MotionWeightsError` otherwise). Returns the ignored keys (base U-Net tensors a
        motion file may carry cannot be applied to a separate U-Net; they are logged)."""
        target = self.state_dict()
        check_motion_state({k: v.shape for k, v in target.items()}, state)
        for key in target:
            if not state[key].is_floating_point():
                raise MotionWeightsError(f"motion tensor {key} has dtype {state[key].dtype}; expected floating point")
        self.load_state_dict({k: state[k] for k in target}, strict=True)
        ignored = sorted(k for k in state if k not in target)
        if ignored:
            log.warning("ignored %d keys of the motion file that are not motion-module weights (e.g. %s)",
                        len(ignored), ", ".join(ignored[:4]))
        return ignored
