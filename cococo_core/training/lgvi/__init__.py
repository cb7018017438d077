"""LGVI / LGVI-I training recipes for the shared training loop (paper §4-5.1; see docs/lgvi.md "Training").

* :class:`LGVIRecipe` / :class:`LGVIIRecipe` - the :class:`~cococo_core.training.recipe.Recipe` s;
* :class:`LGVITrainingModel` / :class:`LGVIITrainingModel` - the trainable systems (``forward`` = loss);
* :mod:`.data` - the simple sample layout, the ROVI ``train.json`` reader, 3 : 1 video / image batches;
* :mod:`.objective` - L_diff, L_mask, L_lm and their weights; :mod:`.saving` - the official folder layouts.
"""
from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "LGVIRecipe": ".recipes",
    "LGVIIRecipe": ".recipes",
    "LGVITrainingModel": ".model",
    "LGVIITrainingModel": ".model",
    "LossSettings": ".objective",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
