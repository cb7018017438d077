"""LGVI / LGVI-I language-driven video object removal (Wu et al., CVPR 2024).

Public API (heavy modules are imported on first use):

* :class:`LGVIPipeline` - referring removal ("remove the man in the white outfit") and the diffusion
  stage of LGVI-I; :class:`RemovalResult` holds frames and the predicted mask.
* :class:`LGVIChat` - the LLaVA-1.5 chat stage of LGVI-I (reply, removal phrase, conditioning).
* :func:`remove_with_chat` - LGVI-I end to end with staged memory (chat model freed before diffusion).
* :func:`load_lgvi_unet`, :class:`LGVIUNet`, :class:`LGVIUNetConfig`, :class:`CheckpointKeyError`.
* :func:`combine_guidance` - the three-way InstructPix2Pix guidance.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "LGVIPipeline": ".pipeline",
    "RemovalResult": ".pipeline",
    "LGVIUNet": ".unet",
    "LGVIUNetConfig": ".unet_config",
    "load_lgvi_unet": ".unet_loading",
    "CheckpointKeyError": ".unet_loading",
    "combine_guidance": ".guidance",
    "LGVIChat": ".chat",
    "ChatTurn": ".chat",
    "Conversation": ".prompting",
    "remove_with_chat": ".interactive",
    "InteractiveResult": ".interactive",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
