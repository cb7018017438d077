"""The noise scheduler named in the checkpoint's ``scheduler/scheduler_config.json`` (official
``DiffusionPipeline.from_pretrained`` behaviour, spec §1.9): PNDM for the released folders unless the
JSON says otherwise. As the official pipeline does, ``steps_offset`` is forced to 1 and
``clip_sample`` to False where the config has them.
"""
from __future__ import annotations

import json
import os

import diffusers


def load_scheduler(checkpoint: str | os.PathLike):
    folder = os.path.join(os.fspath(checkpoint), "scheduler")
    path = os.path.join(folder, "scheduler_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no scheduler in {checkpoint}: expected {path}")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    name = str(config.get("_class_name", "PNDMScheduler"))
    # the name comes from an untrusted file: only diffusers' own scheduler classes are accepted
    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") and name.isidentifier() else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{path}: unknown scheduler class {name!r}; expected a diffusers scheduler such as PNDMScheduler")
    if "steps_offset" in config:
        config["steps_offset"] = 1
    if "clip_sample" in config:
        config["clip_sample"] = False
    return cls.from_config(config)
