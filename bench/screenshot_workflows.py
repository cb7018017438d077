"""Open every UI workflow in the real ComfyUI frontend (headless Chromium), screenshot it and measure the
nodes as the frontend draws them; fails when two nodes overlap. Too heavy for CI (a browser), run by hand:

    COMFYUI_DIR=../shared/comfyui .comfyui-venv/bin/python bench/screenshot_workflows.py [OUT_DIR]

Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``). Writes ``<name>.png`` and
``node_bounds.json`` (per workflow: node type -> [x, y, width, height] with the title bar) to OUT_DIR
(default bench/results/screenshots). The same tiny models as the server tests are installed, so the
combo widgets hold the names the workflows use.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import comfyui_server  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1800,1100"]
RUN_IN_BROWSER = {"cococo_inpaint_drawn_mask": 60, "cococo_text_mask_inpaint": 90, "status_text": 10}  # seconds
# the status text shown by the pack's frontend extension (web/cococo_status_text.js) after a run
STATUS_TEXT_WORKFLOW = {
    "last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "version": 0.4,
    "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
    "nodes": [{"id": 1, "type": "CoCoCoReleaseModels", "pos": [300, 200], "size": [340, 80], "flags": {}, "order": 0,
               "mode": 0, "inputs": [{"name": "after", "type": "*", "link": None}], "outputs": [],
               "properties": {}, "widgets_values": []}],
}
BOUNDS_JS = """JSON.stringify(app.graph._nodes.map(n => ({id: n.id, type: n.type, bounds: Array.from(n.getBounding())})))"""


async def _cdp(port: int, workflows: dict, out: Path, url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [p for p in await response.json() if p["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            counter = 0

            async def call(method, **params):
                nonlocal counter
                counter += 1
                await ws.send_json({"id": counter, "method": method, "params": params})
                async for message in ws:
                    data = json.loads(message.data)
                    if data.get("id") == counter:
                        if "error" in data:
                            raise RuntimeError(f"{method}: {data['error']}")
                        return data["result"]

            async def evaluate(expression):
                result = await call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
                return result["result"].get("value")

            await call("Page.navigate", url=url)
            for _ in range(200):
                await asyncio.sleep(0.5)
                if await evaluate("typeof app !== 'undefined' && !!window.app?.graph && !!LiteGraph"):
                    break
            await asyncio.sleep(3)
            async def shoot(name):
                await evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); "
                               "app.canvas.ds.offset = [0, 40]; app.canvas.ds.scale = 0.6; app.canvas.setDirty(true, true)")
                for kind in ("mousePressed", "mouseReleased"):  # the templates dialog's close button, if shown
                    await call("Input.dispatchMouseEvent", type=kind, x=1556, y=132, button="left", clickCount=1)
                await asyncio.sleep(1)
                shot = await call("Page.captureScreenshot", format="png")
                (out / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
                return json.loads(await evaluate(BOUNDS_JS))

            bounds = {}
            for name, workflow in workflows.items():
                await evaluate(f"app.loadGraphData({json.dumps(workflow)})")
                await asyncio.sleep(6)  # previews (video, mask image) load and grow their nodes
                bounds[name] = await shoot(name)
                if name in RUN_IN_BROWSER:  # output nodes grow to show their results
                    await evaluate("app.queuePrompt(0, 1)")
                    await asyncio.sleep(RUN_IN_BROWSER[name])
                    bounds[f"{name} (after a run)"] = await shoot(f"{name}_after_run")
            return bounds


def overlaps(nodes: list[dict]) -> list[tuple]:
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["bounds"]
            bx, by, bw, bh = b["bounds"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append((a["type"], b["type"]))
    return found


def main(out: Path) -> int:
    import test_comfyui_workflows as server_tests

    out.mkdir(parents=True, exist_ok=True)
    workflows = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "workflows").glob("*.json"))}
    workflows["status_text"] = STATUS_TEXT_WORKFLOW
    with tempfile.TemporaryDirectory(prefix="comfyui-shots-") as scratch:
        server = comfyui_server.ComfyUIServer(Path(scratch) / "base").start()
        browser = None
        try:
            server_tests.install_tiny_models(server.base)  # the same tiny models as the server tests
            port = comfyui_server.free_port()
            browser = subprocess.Popen([shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile",
                                        f"--remote-debugging-port={port}", "about:blank"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bounds = asyncio.run(_cdp(port, workflows, out, server.url))
        finally:
            if browser is not None:
                browser.terminate()
                browser.wait(timeout=30)
            server.stop()
    (out / "node_bounds.json").write_text(json.dumps(bounds, indent=1))
    bad = {name: overlaps(nodes) for name, nodes in bounds.items() if overlaps(nodes)}
    for name, nodes in bounds.items():
        print(f"{name}: {len(nodes)} nodes, overlapping: {overlaps(nodes) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "screenshots"))
