"""A test-only custom node for the real-server tests (linked into ``custom_nodes/`` by tests/comfyui_server.py,
never shipped): it reports what ComfyUI's model management holds, from inside the server process.

``CoCoCoTestProbe`` (an output node that runs on every queue) optionally asks ComfyUI to free ``free_bytes`` on
its device first, as another node needing memory would, then returns as its ``ui.text`` a JSON object:
``loaded``: the class names of the models in ``comfy.model_management.current_loaded_models``; ``replaced``: the
functions defined in comfy/model_management.py whose attribute now holds something else (a pack replacing one).
"""
import ast
import inspect
import json
import types


def _defined_functions(module) -> list[str]:
    with open(module.__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]


def _replaced(module) -> list[str]:
    replaced = []
    for name in _defined_functions(module):
        value = getattr(module, name, None)
        code = getattr(inspect.unwrap(value), "__code__", None) if callable(value) else None  # decorators unwrapped
        if not (isinstance(value, types.FunctionType) and value.__module__ == module.__name__
                and value.__qualname__ == name and code is not None and code.co_filename == module.__file__):
            replaced.append(name)
    return replaced


class CoCoCoTestProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"free_bytes": ("INT", {"default": 0, "min": 0, "max": 1 << 62})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "probe"
    CATEGORY = "testing"

    def probe(self, free_bytes):
        import comfy.model_management as mm

        if free_bytes:
            mm.free_memory(free_bytes, mm.get_torch_device())
        loaded = [type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None]
        return {"ui": {"text": [json.dumps({"loaded": loaded, "replaced": _replaced(mm)})]}, "result": ()}


NODE_CLASS_MAPPINGS = {"CoCoCoTestProbe": CoCoCoTestProbe}
