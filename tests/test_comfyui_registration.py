"""In the real ComfyUI server: the pack loads, and every node appears in GET /object_info with the inputs and
outputs it declares."""
import comfyui_server

comfyui_server.require()

import nodes  # noqa: E402


def test_every_node_is_registered_with_its_inputs(comfyui):
    info = comfyui.get("/object_info")
    missing = sorted(set(nodes.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered (IMPORT FAILED?): {missing}; log:\n{comfyui.log()[-3000:]}"
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        for category in ("required", "optional"):
            assert set(info[node_id]["input"].get(category, {})) == set(declared.get(category, {})), node_id
        assert info[node_id]["output"] == list(cls.RETURN_TYPES)
        assert info[node_id]["display_name"] == nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
