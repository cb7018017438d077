"""ComfyUI entry point of the CoCoCo video-inpainting pack.

ComfyUI imports this folder as a package. ``cococo_core`` is a plain top-level library (also
used from Python and the command line), so this folder is put on ``sys.path`` for it; the node
package is imported relatively because ComfyUI owns the top-level name ``nodes``. The folder is
appended, not prepended, so nothing in it can shadow a module of ComfyUI or of another pack.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # imported as a plain file (pytest does this when the checkout's folder name is not an identifier)
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"  # the frontend extension that shows the status text of the pack's output nodes

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
