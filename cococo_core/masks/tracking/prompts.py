"""Prompts written as text, shared by the command line and the node.

* box: ``x0,y0,x1,y1`` or ``x0,y0,x1,y1@frame`` (pixels of the input frames; frame 0 when omitted);
* point: ``x,y``, ``x,y@frame``, with ``:neg`` (or ``:pos``) appended for a negative (positive) click;
* either may end with ``#id`` to name the object it refines, e.g. ``120,80@5:neg#2``.

Several prompts in one string are separated by ``;`` or new lines (the node's text fields).
"""
from __future__ import annotations

import math
import re

from .base import BoxPrompt, PointPrompt

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}(?:@\s*(\d+)\s*)?(?:#\s*(\d+)\s*)?$")
_POINT = re.compile(rf"^{_NUMBER},{_NUMBER}(?:@\s*(\d+)\s*)?(?::\s*(neg|pos)\s*)?(?:#\s*(\d+)\s*)?$")


def _finite(values, text: str) -> list[float]:
    numbers = [float(v) for v in values]
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{text!r}: coordinates must be finite numbers")
    return numbers


def parse_box(text: str) -> BoxPrompt:
    match = _BOX.match(text)
    if not match:
        raise ValueError(f"box {text!r}: write x0,y0,x1,y1 or x0,y0,x1,y1@frame (pixels, frame from 0), "
                         "optionally ending with #object_id")
    x0, y0, x1, y1 = _finite(match.group(1, 2, 3, 4), text)
    frame, object_id = match.group(5, 6)
    return BoxPrompt(x0, y0, x1, y1, int(frame or 0), None if object_id is None else int(object_id))


def parse_point(text: str) -> PointPrompt:
    match = _POINT.match(text)
    if not match:
        raise ValueError(f"point {text!r}: write x,y or x,y@frame, add :neg for a negative click (e.g. "
                         "120,80@5:neg), optionally ending with #object_id")
    x, y = _finite(match.group(1, 2), text)
    frame, sign, object_id = match.group(3, 4, 5)
    return PointPrompt(x, y, int(frame or 0), sign != "neg", None if object_id is None else int(object_id))


def split_list(text: str | None) -> list[str]:
    """The non-empty items of a ``;``/newline separated string."""
    return [item.strip() for item in re.split(r"[;\n]", text or "") if item.strip()]


def parse_boxes(text: str | None) -> list[BoxPrompt]:
    return [parse_box(item) for item in split_list(text)]


def parse_points(text: str | None) -> list[PointPrompt]:
    return [parse_point(item) for item in split_list(text)]


def parse_objects(text: str | None):
    """Which objects to keep: 'all', 'top' / 'top:N' (by score), or ids '1, 3' -> (objects, top_k) for
    :func:`~.api.track_masks`."""
    text = (text or "all").strip().lower()
    if text in ("", "all"):
        return "all", 1
    if text.startswith("top"):
        count = text[3:].lstrip(":").strip() or "1"
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"objects {text!r}: write top or top:N with N >= 1")
        return "top", int(count)
    try:
        return [int(part) for part in re.split(r"[,;\s]+", text) if part], 1
    except ValueError:
        raise ValueError(f"objects {text!r}: write all, top, top:N or object ids such as 1,3") from None
