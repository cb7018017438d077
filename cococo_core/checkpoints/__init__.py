"""Checkpoint I/O for SD-1.x: safe reading, LDM <-> diffusers key mapping, detection, component loading.

Importing this package needs only torch (and safetensors); diffusers / transformers are imported when
modules are built.
"""
from .base import SDComponents, SDState, load_sd_components, load_sd_state, load_tokenizer
from .detect import CheckpointInfo, detect_checkpoint, detect_state, require_sd1
from .ldm_keys import (
    KeyMapping, LDMConversion, SDKeyMap, UNetKeyMap, UnknownKeyError, VAEKeyMap, diffusers_to_ldm, ema_key,
    ldm_to_diffusers,
)
from .finite import check_module, check_tensor
from .safe_load import (
    CheckpointError, NonFiniteWeightsError, StateReader, UnsafeCheckpointError, load_state_dict, open_state,
    read_metadata,
)
from .stream import SDStream, open_sd

__all__ = [
    "CheckpointError", "CheckpointInfo", "KeyMapping", "LDMConversion", "NonFiniteWeightsError", "SDComponents",
    "SDKeyMap", "SDState", "SDStream", "StateReader", "UNetKeyMap", "UnknownKeyError", "UnsafeCheckpointError",
    "VAEKeyMap", "check_module", "check_tensor", "detect_checkpoint", "detect_state", "diffusers_to_ldm", "ema_key",
    "ldm_to_diffusers", "load_sd_components", "load_sd_state", "load_state_dict", "load_tokenizer", "open_sd",
    "open_state", "read_metadata", "require_sd1",
]
