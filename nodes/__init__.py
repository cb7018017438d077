"""ComfyUI nodes of the pack: thin adapters over ``cococo_core``, one module per concern.

Importing this package is cheap (the library and diffusers load when a node first runs) and
registers the pack's model folders with ComfyUI when it runs inside ComfyUI.
"""
from . import comfy_adapter
from . import (nodes_cococo, nodes_lgvi, nodes_masks, nodes_metrics, nodes_native, nodes_personalize, nodes_tracking,
               nodes_utility)

_MODULES = (nodes_cococo, nodes_masks, nodes_tracking, nodes_personalize, nodes_native, nodes_lgvi, nodes_utility,
            nodes_metrics)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

comfy_adapter.register_model_folders()
