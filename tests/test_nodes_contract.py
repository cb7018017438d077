"""The V1 node contract of every node the pack registers (comfyui-conventions.md §1.2)."""
import inspect
from pathlib import Path
import subprocess
import sys

import pytest

import nodes
from nodes.common import PACK_TYPES

CORE_TYPES = {"IMAGE", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN", "*",
              "MODEL", "CONDITIONING", "LATENT", "VAE"}  # ComfyUI types the native nodes take and give
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODE_IDS = sorted(nodes.NODE_CLASS_MAPPINGS)


def test_pack_registers_nodes_without_heavy_imports():
    assert NODE_IDS, "no nodes registered"
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
    code = "import sys, nodes; print(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", "importing the nodes must not import diffusers/transformers (slow start-up)"


def test_root_package_exports_the_mappings():
    source = open("__init__.py").read()
    assert "from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS" in source


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_contract(node_id):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("CoCoCo")
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith(("CoCoCo", "LGVI"))
    assert cls.CATEGORY.split("/")[0] == "CoCoCo"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert callable(getattr(cls, cls.FUNCTION))
    assert all(isinstance(a, str) for a in getattr(cls, "SEARCH_ALIASES", []))
    assert isinstance(cls.RETURN_TYPES, tuple)
    for kind in cls.RETURN_TYPES:
        assert kind in CORE_TYPES | set(PACK_TYPES), f"unknown output type {kind}"
    for attribute in ("RETURN_NAMES", "OUTPUT_TOOLTIPS"):
        assert len(getattr(cls, attribute)) == len(cls.RETURN_TYPES), attribute
    if not cls.RETURN_TYPES:
        assert getattr(cls, "OUTPUT_NODE", False), "a node without outputs must be an output node"

    declared = cls.INPUT_TYPES()
    assert set(declared) <= {"required", "optional", "hidden"}
    arguments = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in arguments.values())
    for category in ("required", "optional"):
        for name, spec in declared.get(category, {}).items():
            kind, options = spec[0], spec[1]
            assert options.get("tooltip"), f"{name}: no tooltip"
            assert name in arguments or takes_any, f"{name} is not an argument of {cls.FUNCTION}"
            if category == "optional" and name in arguments:
                assert arguments[name].default is not inspect.Parameter.empty, f"optional {name} needs a default"
            if isinstance(kind, list):
                assert all(isinstance(item, str) for item in kind)
                if "default" in options:
                    assert options["default"] in kind
                continue
            assert kind in CORE_TYPES | set(PACK_TYPES), f"{name}: unknown type {kind}"
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], name
                number = int if kind == "INT" else (int, float)
                assert all(isinstance(options[k], number) for k in ("min", "max", "default")), name
            if kind in WIDGETS:
                assert "default" in options, f"{name}: widget without a default"
    required = [n for n, p in arguments.items() if n != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    assert set(required) <= set(declared.get("required", {})) | set(declared.get("hidden", {}))
    if hasattr(cls, "VALIDATE_INPUTS"):
        names = inspect.getfullargspec(cls.VALIDATE_INPUTS).args[1:]
        assert set(names) <= set(declared.get("required", {})) | set(declared.get("optional", {}))


def test_release_node_empties_the_cache():
    from nodes.comfy_adapter import MODEL_CACHE

    MODEL_CACHE.release()
    MODEL_CACHE.get_or_load("test", "a", object)
    node = nodes.NODE_CLASS_MAPPINGS["CoCoCoReleaseModels"]
    assert node().release() == {"ui": {"text": ["Released 1 loaded CoCoCo model(s)."]}, "result": ()}
    assert len(MODEL_CACHE) == 0
    assert node.IS_CHANGED() != node.IS_CHANGED()  # NaN: runs on every queue


def test_node_reference_is_generated_from_the_nodes(tmp_path):
    import workflow_executor as wx

    with wx.fake_comfyui(tmp_path):
        generated = wx.node_reference(nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    for doc in wx.REFERENCE_DOCS:
        reference = open(doc).read()
        assert reference.endswith(wx.REFERENCE_HEADING + generated), f"{doc}: regenerate with: python tests/workflow_executor.py"
        for node_id in NODE_IDS:
            assert f"`{node_id}`" in reference
