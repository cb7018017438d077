"""The checkout's root ``__init__.py`` (ComfyUI's entry point) also imports as a plain file: pytest imports it
that way when the folder name is not a Python identifier (``ComfyUI-CoCoCo``, as the README clones it)."""
import importlib.util
from pathlib import Path

import nodes

ROOT = Path(__file__).resolve().parent.parent


def test_root_init_imports_outside_a_package():
    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS
