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
    assert {"cococo", "grounding-dino", "lgvi", "sams"} <= set(comfyui.get("/models"))  # the pack's model folders


def test_status_text_of_output_nodes_is_shown_by_the_packs_frontend_extension(comfyui):
    """The stock frontend shows ``ui.text`` only on its own preview nodes: the pack serves an extension that
    shows it on Release Models / Save Checkpoint / Convert Motion, whose text reaches the executed message."""
    extensions = comfyui.get("/extensions")
    script = "/extensions/ComfyUI-CoCoCo/cococo_status_text.js"
    assert script in extensions, extensions
    import urllib.request

    with urllib.request.urlopen(comfyui.url + script, timeout=30) as response:
        source = response.read().decode()
    for node_id in ("CoCoCoReleaseModels", "CoCoCoSaveCheckpoint", "CoCoCoConvertMotion"):
        assert node_id in source and nodes.NODE_CLASS_MAPPINGS[node_id].OUTPUT_NODE
    entry = comfyui.run({"1": {"class_type": "CoCoCoReleaseModels", "inputs": {}}})
    assert entry["outputs"]["1"]["text"][0].startswith("Released ")
    comfyui.wait_for(lambda: any(m["data"]["node"] == "1" and (m["data"].get("output") or {}).get("text")
                                 == entry["outputs"]["1"]["text"] for m in comfyui.messages(entry["prompt_id"], "executed")),
                     timeout=30, what=f"the executed message: {comfyui.messages(entry['prompt_id'])}")


def _kind(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) or str(kind).endswith("COMBO") or "COMBO_" in str(kind) else kind


def test_core_node_doubles_agree_with_the_real_nodes(comfyui, tmp_path):
    """The fast tests' doubles of core nodes (workflow_executor.CORE_NODES) declare only inputs the real nodes have,
    with the same types, and outputs in the real nodes' slot order (API links address outputs by slot)."""
    import workflow_executor as wx

    info = comfyui.get("/object_info")
    with wx.fake_comfyui(tmp_path):
        for name, double in wx.CORE_NODES.items():
            real = info[name]["input"]
            real_inputs = {**real.get("required", {}), **real.get("optional", {})}
            for category, inputs in double.INPUT_TYPES().items():
                for input_name, spec in inputs.items():
                    assert input_name in real_inputs, f"{name}.{input_name}: not an input of the real node"
                    assert _kind(spec) == _kind(real_inputs[input_name]), f"{name}.{input_name}"
            assert info[name]["output"][:len(double.RETURN_TYPES)] == list(double.RETURN_TYPES), name
