"""Recipes by name: ``TrainConfig.recipe`` is a name registered here or ``package.module:Class``."""
from __future__ import annotations

import importlib

RECIPES = {
    "cococo": "cococo_core.training.cococo.recipe:CoCoCoRecipe",
    "lgvi": "cococo_core.training.lgvi.recipes:LGVIRecipe",
    "lgvi-i": "cococo_core.training.lgvi.recipes:LGVIIRecipe",
}


def resolve_recipe(name: str):
    """A new recipe object for ``name`` (a key of :data:`RECIPES` or ``package.module:Class``)."""
    target = RECIPES.get(name, name)
    module_name, sep, attribute = target.partition(":")
    if not sep:
        raise ValueError(f"unknown training recipe {name!r}; choose one of {sorted(RECIPES)} or give package.module:Class")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"training recipe {name!r}: cannot import {target} ({error})") from error
    return factory()
