"""ComfyUI nodes of the pack: thin adapters over ``cococo_core``."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
