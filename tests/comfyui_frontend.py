"""The real ComfyUI frontend in headless Chromium: load a UI workflow in ComfyUI's page, read what the page draws.

Driven through Chromium's DevTools protocol (a websocket, with ``aiohttp``, a ComfyUI requirement), so nothing
beyond the Debian ``chromium`` package is needed. What is read comes from the page itself (LiteGraph's
``app.graph`` and ``app.canvas``):

- each node's drawn rectangle (``node.getBounding()``: title bar included, after previews grew the node);
- the texts the canvas really drew (``fillText`` calls recorded during one full redraw, with their screen
  positions), so a widget label cut to "b…" or not drawn at all (the frontend drops text when zoomed out)
  is seen as the user sees it;
- the view (``app.canvas.ds``) the workflow opened in, and the canvas's size.

:func:`problems` turns one measurement into the list of what a user would see wrong: overlapping nodes,
hidden widget labels, nodes outside the opened view. Used by ``tests/test_comfyui_frontend.py`` (CI) and
runnable by hand::

    COMFYUI_DIR=../shared/comfyui .comfyui-venv/bin/python tests/comfyui_frontend.py [OUT_DIR]
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# The browser window the check (and the saved views, tests/workflow_layout.py) assume: a 1920x1080 screen's
# browser page. The frontend's top bar covers the canvas's first TOP_BAR pixels, its side bar the first SIDE_BAR.
VIEWPORT = (1920, 960)
TOP_BAR, SIDE_BAR = 40, 50
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}")
# first-start dialogs that would cover the canvas in the screenshots
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Workflow.ShowMissingNodesWarning": False}
# widget types whose label LiteGraph draws on the canvas (multiline texts and previews are DOM elements)
LABELLED_WIDGETS = ("combo", "number", "toggle", "text", "slider", "boolean", "asset")

MEASURE_JS = """(() => {
  const canvas = app.canvas, ds = canvas.ds, element = canvas.canvas;
  const drawn = [];
  const proto = CanvasRenderingContext2D.prototype, fillText = proto.fillText;
  proto.fillText = function (text, x, y, ...rest) {
    if (this.canvas === element) {
      const m = this.getTransform();
      drawn.push([String(text), m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
    }
    return fillText.call(this, text, x, y, ...rest);
  };
  try { canvas.draw(true, true); } finally { proto.fillText = fillText; }
  const ratio = window.devicePixelRatio || 1;
  const labelled = new Set(%s);
  const nodes = app.graph._nodes.map((node) => {
    const b = Array.from(node.getBounding());
    const screen = [(b[0] + ds.offset[0]) * ds.scale, (b[1] + ds.offset[1]) * ds.scale, b[2] * ds.scale, b[3] * ds.scale];
    const texts = drawn.filter(([, x, y]) => x / ratio >= screen[0] - 2 && x / ratio <= screen[0] + screen[2] + 2
                                         && y / ratio >= screen[1] - 2 && y / ratio <= screen[1] + screen[3] + 2)
                       .map(([text]) => text);
    const widgets = (node.widgets || []).filter((w) => labelled.has(w.type) && !w.hidden && !w.options?.hidden)
      .map((w) => { const label = w.label || w.name; return {name: w.name, label, shown: texts.includes(label)}; });
    const status = node.widgets?.find((w) => w.name === "cococo_status")?.value ?? null;
    return {id: node.id, type: node.type, title: node.title, bounds: b, screen, widgets, texts, status};
  });
  const rect = element.getBoundingClientRect();
  return JSON.stringify({scale: ds.scale, offset: Array.from(ds.offset), canvas: [rect.width, rect.height], nodes});
})()""" % json.dumps(list(LABELLED_WIDGETS))


def chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` or ``chromium`` on PATH (Debian's package)."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# --- what a user would see wrong -----------------------------------------------------------------------

def overlaps(nodes: list[dict]) -> list[str]:
    """Pairs of nodes whose drawn rectangles (title bar included) intersect."""
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["bounds"]
            bx, by, bw, bh = b["bounds"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"'{a['title']}' (#{a['id']}) overlaps '{b['title']}' (#{b['id']})")
    return found


def hidden_labels(nodes: list[dict]) -> list[str]:
    """Widgets whose label the canvas did not draw in full (cut with '…', or no text drawn at all)."""
    return [f"'{node['title']}' (#{node['id']}): the label '{w['label']}' is not drawn in full"
            for node in nodes for w in node["widgets"] if not w["shown"]]


def outside_view(view: dict) -> list[str]:
    """Nodes not wholly inside the canvas beside the side bar and below the top bar, in the view the workflow opened in."""
    width, height = view["canvas"]
    found = []
    for node in view["nodes"]:
        x, y, w, h = node["screen"]
        if x < SIDE_BAR or y < TOP_BAR or x + w > width or y + h > height:
            found.append(f"'{node['title']}' (#{node['id']}) is outside the opened view "
                         f"(drawn at {x:.0f},{y:.0f} size {w:.0f}x{h:.0f} in a {width:.0f}x{height:.0f} canvas)")
    return found


def problems(view: dict) -> list[str]:
    """Everything :func:`overlaps`, :func:`hidden_labels` and :func:`outside_view` find in one measurement."""
    return overlaps(view["nodes"]) + hidden_labels(view["nodes"]) + outside_view(view)


# --- the browser ---------------------------------------------------------------------------------------

class Frontend:
    """One headless Chromium showing ComfyUI's page; ``load``, ``measure``, ``screenshot``, ``queue``."""

    def __init__(self, server, scratch: Path):
        self.server = server
        self.scratch = Path(scratch)
        self.loop = asyncio.new_event_loop()
        self.process = None
        self._session = self._socket = None
        self._counter = 0

    def __enter__(self) -> "Frontend":
        settings = self.server.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(SETTINGS))
        profile = self.scratch / "chromium-profile"
        self.process = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.loop.run_until_complete(self._connect(profile / "DevToolsActivePort"))
            self.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                      deviceScaleFactor=1, mobile=False)
            self.call("Page.navigate", url=self.server.url)
            self.wait_for("window.app?.graph && window.app?.canvas && window.LiteGraph && "
                          "document.querySelector('canvas') && true", 120, "ComfyUI's page to start")
            time.sleep(2)  # extensions finish registering
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._session is not None:
            self.loop.run_until_complete(self._session.close())
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.loop.close()

    async def _connect(self, port_file: Path) -> None:
        import aiohttp

        deadline = time.monotonic() + 60
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium ({chromium()}) did not start (exit code {self.process.poll()})")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        self._session = aiohttp.ClientSession()
        for _ in range(100):
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [p for p in await response.json() if p["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self._socket = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self._counter += 1
        await self._socket.send_json({"id": self._counter, "method": method, "params": params})
        async for message in self._socket:
            data = json.loads(message.data)
            if data.get("id") == self._counter:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("Chromium closed the DevTools connection")

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(asyncio.wait_for(self._call(method, params), 120))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"{expression[:120]}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
            time.sleep(0.3)

    # --- workflows ---------------------------------------------------------------------------------
    def load(self, workflow: dict) -> None:
        """Open ``workflow`` as the user does (its saved view restored), then wait until previews stopped growing
        the nodes."""
        self.evaluate(f"app.loadGraphData({json.dumps(workflow)}, true, true).then(() => true)")
        self.settle()

    def settle(self, quiet_s: float = 2.0, timeout: float = 30.0) -> None:
        """Wait until the nodes' sizes stayed the same for ``quiet_s`` (videos and images load asynchronously)."""
        self.close_dialogs()
        shape = "JSON.stringify(app.graph._nodes.map(n => [n.id, Array.from(n.getBounding())]))"
        deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            now = self.evaluate(shape)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.25)
        self.close_dialogs()

    def close_dialogs(self) -> None:
        self.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); true")

    def measure(self) -> dict:
        return json.loads(self.evaluate(MEASURE_JS))

    def screenshot(self, path: Path) -> None:
        self.evaluate("app.canvas.setDirty(true, true); true")
        time.sleep(0.3)
        shot = self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def queue(self, widget_values: dict[str, dict] | None = None) -> str:
        """Queue the open workflow as the Run button does (the frontend's graphToPrompt and queuePrompt), after
        setting ``{node type: {widget: value}}``; waits for the run and returns its prompt id."""
        for node_type, values in (widget_values or {}).items():
            for name, value in values.items():
                self.evaluate(f"app.graph._nodes.filter(n => n.type === {json.dumps(node_type)}).forEach(n => "
                              f"n.widgets?.filter(w => w.name === {json.dumps(name)}).forEach(w => "
                              f"w.value = {json.dumps(value)})); true")
        answer = self.evaluate("(async () => { const {api} = await import('/scripts/api.js'); "
                               "const prompt = await app.graphToPrompt(); "
                               "try { return JSON.stringify(await api.queuePrompt(0, prompt)); } "
                               "catch (error) { return JSON.stringify({error: String(error), "
                               "details: error.response ?? null}); } })()")
        answer = json.loads(answer)
        if "prompt_id" not in answer:
            raise RuntimeError(f"ComfyUI refused the workflow: {answer}")
        self.server.wait(answer["prompt_id"])
        return answer["prompt_id"]


def check_all(server, workflows: dict[str, dict], out: Path, runs: dict[str, dict] | None = None) -> dict:
    """Load each workflow, measure and screenshot it (and again after a run for those in ``runs``: name ->
    widget values to set first). Returns {name (or "name after a run"): {"problems": [...], "view": measurement}}."""
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    with tempfile.TemporaryDirectory(prefix="comfyui-frontend-") as scratch, Frontend(server, Path(scratch)) as page:
        for name, workflow in workflows.items():
            start = time.monotonic()
            page.load(workflow)
            view = page.measure()
            page.screenshot(out / f"{name}.png")
            found[name] = {"problems": problems(view), "view": view}
            if runs and name in runs:
                prompt_id = page.queue(runs[name])
                status = server.history(prompt_id)["status"]
                page.settle()
                view = page.measure()
                page.screenshot(out / f"{name}_after_run.png")
                failed = [] if status["status_str"] == "success" else [f"the run failed: {status['messages'][-1]}"]
                found[f"{name} after a run"] = {"problems": problems(view) + failed, "view": view}
            print(f"{name}: checked in {time.monotonic() - start:.1f} s", flush=True)
    return found


def main(out: Path) -> int:
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
    import comfyui_server
    import test_comfyui_workflows as server_tests

    workflows = {p.stem: json.loads(p.read_text()) for p in sorted((comfyui_server.ROOT / "workflows").glob("*.json"))}
    with tempfile.TemporaryDirectory(prefix="comfyui-base-") as base:
        server = comfyui_server.ComfyUIServer(Path(base)).start()
        try:
            server_tests.install_tiny_models(server.base)
            found = check_all(server, workflows, out)
        finally:
            server.stop()
    for name, result in found.items():
        print(f"{name}: {'; '.join(result['problems']) or 'ok'}")
    return 1 if any(result["problems"] for result in found.values()) else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results/frontend")))
