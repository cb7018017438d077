"""Against a real ComfyUI (only where one is given): the pack loads, every node appears in GET /object_info
with the inputs it declares, and the drawn-mask workflow runs to completion on tiny models.

Run with ``COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_nodes_comfyui_server.py``.
ComfyUI runs with ``--cpu`` on a loopback port, with a temporary ``--base-directory`` holding only this pack,
the tiny models and the input files, so the user's install is not touched. Skipped when COMFYUI_DIR is unset.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import nodes

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import test_workflows  # the tiny models and input files of the workflow tests

    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / "ComfyUI-CoCoCo")
    test_workflows.install_test_files(base)
    port = _free_port()
    command = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(port), "--base-directory", str(base), "--disable-auto-launch"]
    log = open(base / "comfyui.log", "w")
    process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited: {(base / 'comfyui.log').read_text()[-3000:]}")
            try:
                _get(f"{url}/system_stats")
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("ComfyUI did not start within 300 s")
        yield url, base
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_every_node_is_registered_with_its_inputs(server):
    url, base = server
    info = _get(f"{url}/object_info")
    missing = sorted(set(nodes.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered (IMPORT FAILED?): {missing}; log: {(base / 'comfyui.log').read_text()[-3000:]}"
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        for category in ("required", "optional"):
            assert set(info[node_id]["input"].get(category, {})) == set(declared.get(category, {})), node_id
        assert info[node_id]["output"] == list(cls.RETURN_TYPES)


def test_drawn_mask_workflow_runs(server):
    url, base = server
    prompt = json.loads((ROOT / "workflows" / "api" / "cococo_inpaint_drawn_mask.json").read_text())
    prompt["5"]["inputs"]["steps"] = 2
    queued = _post(f"{url}/prompt", {"prompt": prompt, "client_id": "cococo-test"})
    assert not queued.get("node_errors"), queued
    for _ in range(600):
        history = _get(f"{url}/history/{queued['prompt_id']}")
        if queued["prompt_id"] in history and history[queued["prompt_id"]].get("status", {}).get("completed"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the workflow did not finish; log: {(base / 'comfyui.log').read_text()[-3000:]}")
    assert list((base / "output" / "video").glob("cococo_inpaint_*.mp4"))
    metrics_table = history[queued["prompt_id"]]["outputs"]["8"]["text"][0]  # CoCoCo Video Metrics' table
    assert "PSNR" in metrics_table and "BP" in metrics_table
