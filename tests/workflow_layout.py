"""Where the nodes of a shipped UI workflow go, and the view it opens in.

The graph flows left to right by dependency depth; each depth is a stack of nodes (split in two when it would
grow taller than a row should), and the stacks wrap into rows, so a graph reads in two or three rows instead of
one 3,000 px line. Of all the arrangements tried, the one that fits the assumed browser page
(:data:`comfyui_frontend.VIEWPORT` less the frontend's bars) at the largest zoom is kept, and the saved view
(``extra.ds``) opens on the whole graph at that zoom: at least :data:`MIN_SCALE`, above the zoom at which the
frontend stops drawing text (its font-size level of detail: 8 px of a 14 px font).

Node sizes are estimates from the node's widgets and texts (checked against what the real frontend draws by
``tests/test_comfyui_frontend.py``): the height from the widget and slot rows, the width from the longest
"label value" line and the title, and at least the sizes measured in the real frontend for nodes that grow
to show a preview or a result (:data:`DRAWN_SIZES`).
"""
from __future__ import annotations

import math

from comfyui_frontend import SIDE_BAR, TOP_BAR, VIEWPORT

NODE_WIDTH = 340
TITLE_HEIGHT = 30  # drawn above ``pos``
GAP = 50
MARGIN = 20  # screen pixels around the graph in the saved view
MIN_SCALE = 0.62
ROW_HEIGHT = 22  # one widget or slot row
MULTILINE_HEIGHT = 60  # a multiline text box beyond its row
WIDGET_CHAR = 7.0  # screen-independent width of one character of LiteGraph's 12 px widget font (generous)
WIDGET_PADDING = 100  # margins, arrows and the gap between a widget's label and its value
TITLE_CHAR, TITLE_PADDING = 8.0, 60
# Node sizes (width, body height) the ComfyUI frontend draws where they exceed the widget estimate, measured in
# the real frontend (tests/comfyui_frontend.py): loaders of files show a preview and grow once the file loads;
# output nodes and the samplers (latent preview) grow to show their result during and after a run.
DRAWN_SIZES = {
    "LoadVideo": (340, 414),
    "LoadImageMask": (431, 318),
    "LoadImage": (431, 318),
    "PreviewAny": (340, 122),
    "SaveVideo": (340, 438),
    "PreviewImage": (340, 318),
    "CoCoCoSampler": (340, 674),  # the widgets' 540 + the preview's 134
    "CoCoCoLGVIRemove": (340, 540),
    "CoCoCoLGVIChat": (340, 614),
}
# samplers show a latent preview under their widgets while they run (when ComfyUI's preview method is not "none"):
# room for it on top of the widgets, so the prompt boxes keep their height
LATENT_PREVIEW_NODES = ("CoCoCoSampler", "CoCoCoLGVIRemove", "CoCoCoLGVIChat", "KSampler")
LATENT_PREVIEW_HEIGHT = 160
# nodes whose status text the pack's web extension (web/cococo_status_text.js) adds after a run
STATUS_TEXT_HEIGHT = 110
NOTE_WIDTH, NOTE_CHARS_PER_LINE, NOTE_LINE = 420, 52, 16
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}


def text_width(label: str, value) -> float:
    """Width a widget needs to draw ``label`` and ``value`` side by side without cutting either."""
    return WIDGET_CHAR * (len(label) + len(str(value))) + WIDGET_PADDING


def node_size(node_type: str, title: str, rows: int, multiline: int, texts: list[tuple[str, object]],
              status_text: bool = False) -> list[float]:
    """(width, body height) of a node with ``rows`` widget/slot rows, ``multiline`` text boxes and the
    ``(label, value)`` pairs its widgets draw."""
    width = max([NODE_WIDTH, TITLE_CHAR * len(title) + TITLE_PADDING] + [text_width(*t) for t in texts])
    height = 46 + ROW_HEIGHT * rows + MULTILINE_HEIGHT * multiline + (STATUS_TEXT_HEIGHT if status_text else 0)
    height += LATENT_PREVIEW_HEIGHT if node_type in LATENT_PREVIEW_NODES else 0
    drawn_width, drawn_height = DRAWN_SIZES.get(node_type, (0, 0))
    return [math.ceil(max(width, drawn_width)), math.ceil(max(height, drawn_height))]


def note_node(node_id: int, text: str, order: int) -> dict:
    """A frontend Note node (not sent to the server) holding the workflow's instructions."""
    lines = sum(max(1, math.ceil(len(line) / NOTE_CHARS_PER_LINE)) for line in text.split("\n"))
    return {"id": node_id, "type": "Note", "pos": [0, 0], "size": [NOTE_WIDTH, 40 + NOTE_LINE * lines],
            "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text], **NOTE_COLORS}


def _wrap(items: list, extent, limit: float) -> list[list]:
    """``items`` in order, cut into groups whose extents (plus a GAP between neighbours) stay within ``limit``."""
    groups, current, used = [], [], 0.0
    for item in items:
        size = extent(item)
        if current and used + size > limit:
            groups.append(current)
            current, used = [], 0.0
        current.append(item)
        used += size + GAP
    groups.append(current)
    return groups


def _stack_width(stack: list[dict]) -> float:
    return max(node["size"][0] for node in stack)


def _stacks(columns: list[list[dict]], column_max: float) -> list[list[dict]]:
    """Each depth's nodes stacked top to bottom, split into further stacks beyond ``column_max``."""
    return [stack for column in columns for stack in _wrap(column, lambda node: node["size"][1] + TITLE_HEIGHT, column_max)]


def _arrange(stacks: list[list[dict]], row_max: float) -> tuple[dict, float, float, int]:
    """Positions {id: [x, y]} for ``stacks`` wrapped into rows no wider than ``row_max``; with the bounding
    width, height and the number of rows."""
    rows = _wrap(stacks, _stack_width, row_max)
    positions, y, total_width = {}, 0.0, 0.0
    for row in rows:
        x, row_height = 0.0, 0.0
        for stack in row:
            stack_y = y
            for node in stack:
                positions[node["id"]] = [x, stack_y + TITLE_HEIGHT]
                stack_y += node["size"][1] + TITLE_HEIGHT + GAP
            row_height = max(row_height, stack_y - y - GAP)
            x += _stack_width(stack) + GAP
        total_width = max(total_width, x - GAP)
        y += row_height + GAP + TITLE_HEIGHT
    return positions, total_width, y - GAP - TITLE_HEIGHT, len(rows)


def _room() -> tuple[float, float]:
    return VIEWPORT[0] - SIDE_BAR - 2 * MARGIN, VIEWPORT[1] - TOP_BAR - 2 * MARGIN


def lay_out(columns: list[list[dict]]) -> dict:
    """Set ``pos`` of the UI nodes in ``columns`` (one list per dependency depth, ``size`` already set) and
    return the saved view ``{"scale", "offset"}`` that shows them all."""
    room_width, room_height = _room()
    tallest = max(node["size"][1] + TITLE_HEIGHT for column in columns for node in column)
    best = None
    for column_max in sorted({tallest, 700, 900, 1100, 1300, 1600}):
        if column_max < tallest:
            continue
        stacks = _stacks(columns, column_max)
        for row_max in range(600, 6001, 100):
            positions, width, height, rows = _arrange(stacks, row_max)
            scale = min(1.0, room_width / width, room_height / height)
            key = (round(scale, 3), -rows)
            if best is None or key > best[0]:
                best = (key, positions, width, height)
    _, positions, width, height = best
    for column in columns:
        for node in column:
            node["pos"] = [round(v) for v in positions[node["id"]]]
    scale = best[0][0]
    left = SIDE_BAR + MARGIN + (room_width - width * scale) / 2
    top = TOP_BAR + MARGIN + (room_height - height * scale) / 2
    return {"scale": scale, "offset": [round(left / scale, 1), round(top / scale, 1)]}
