"""GroundingDINO's iterative box refinement with the ORIGINAL inverse sigmoid, on transformers' model.

The original (IDEA-Research/GroundingDINO) refines the reference boxes in every decoder layer l and computes the
final boxes with the same step (``transformer.py`` ``TransformerDecoder.forward``, ``groundingdino.py``)::

    reference_{l+1} = sigmoid(bbox_embed_l(h_l) + inverse_sigmoid(reference_l))
    inverse_sigmoid(x) = log(max(x, 1e-3) / max(1 - x, 1e-3)),  x clamped to [0, 1]   (util/misc.py, eps=1e-3)

transformers' ``GroundingDinoDecoder`` / ``GroundingDinoForObjectDetection`` use ``torch.special.logit(x,
eps=1e-5)`` instead (clamp x to [1e-5, 1 - 1e-5]). For every coordinate within 1e-3 of 0 or 1, i.e. every box
touching the image border, the two differ, and the difference feeds the next decoder layer's sampling points.

:func:`install_original_box_refinement` fixes this without touching transformers' code: forward hooks on the
box-delta heads ``bbox_embed`` (in the decoder loop and in the final head, which call them once per level, in
level order) add ``inverse_sigmoid(reference_l) - logit(reference_l)`` to the delta, so transformers' own sum
becomes the original's (to float rounding). A pre-hook on the decoder records the initial references; no weight
or state-dict key changes. The Hugging Face GroundingDINO checkpoints (``IDEA-Research/grounding-dino-tiny`` /
``-base``) were converted from the original ``groundingdino_swint_ogc.pth`` / ``groundingdino_swinb_cogcoor.pth``
by transformers' own conversion script, so the original formula is right for both layouts.
"""
from __future__ import annotations

import torch

ORIGINAL_EPS = 1e-3  # groundingdino.util.misc.inverse_sigmoid
TRANSFORMERS_EPS = 1e-5  # torch.special.logit(..., eps=1e-5) in transformers' GroundingDINO
_ATTRIBUTE = "_cococo_original_box_refinement"


def original_inverse_sigmoid(x: torch.Tensor, eps: float = ORIGINAL_EPS) -> torch.Tensor:
    """``groundingdino.util.misc.inverse_sigmoid``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def transformers_logit(x: torch.Tensor) -> torch.Tensor:
    """What transformers adds to the box delta (the term the hooks replace)."""
    return torch.special.logit(x, eps=TRANSFORMERS_EPS)


class OriginalBoxRefinement:
    """The hooks of one model; ``remove()`` restores transformers' behaviour."""

    def __init__(self, model):
        base = model.model
        self.levels = len(base.decoder.layers)
        self.references: list[torch.Tensor] = []
        self.calls = -1  # -1: outside a detection forward (e.g. a shared head called by the encoder)
        self.handles = [base.decoder.register_forward_pre_hook(self._start, with_kwargs=True)]
        heads = {}
        for head_list in (base.decoder.bbox_embed, model.bbox_embed):
            for head in head_list or ():
                heads[id(head)] = head
        self.handles += [head.register_forward_hook(self._correct) for head in heads.values()]

    def _start(self, module, args, kwargs):
        reference = kwargs.get("reference_points")
        if reference is None or reference.shape[-1] != 4:
            self.calls = -1
            return
        self.references, self.calls = [reference], 0

    def _correct(self, module, args, delta):
        if self.calls < 0:
            return None
        level = self.calls % self.levels
        in_decoder = self.calls < self.levels
        self.calls = self.calls + 1 if self.calls + 1 < 2 * self.levels else -1
        reference = self.references[level]
        corrected = delta + (original_inverse_sigmoid(reference) - transformers_logit(reference)).to(delta.dtype)
        if in_decoder:  # the next layer's reference, computed exactly as transformers does
            self.references.append((corrected + transformers_logit(reference)).sigmoid().detach())
        return corrected

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install_original_box_refinement(model) -> OriginalBoxRefinement | None:
    """Install the hooks on a ``GroundingDinoForObjectDetection`` once; returns them (None for other models)."""
    from transformers import GroundingDinoForObjectDetection

    if not isinstance(model, GroundingDinoForObjectDetection):
        return None
    existing = getattr(model, _ATTRIBUTE, None)
    if existing is None:
        existing = OriginalBoxRefinement(model)
        object.__setattr__(model, _ATTRIBUTE, existing)
    return existing
