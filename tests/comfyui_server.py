"""The real ComfyUI server for the tests named ``tests/test_comfyui_*.py``.

Those tests run in ComfyUI's own Python (the pack's ``requirements.txt`` installed into it, as ComfyUI-Manager
does) with ``COMFYUI_DIR`` pointing at a ComfyUI checkout and, optionally, ``COMFYUI_PYTHON`` at the Python that
runs it (default: the one running pytest). ``.ci/stage-10-comfyui.sh`` sets both. Without ``COMFYUI_DIR`` they
are skipped, except under ``CI``, where a missing or broken environment fails them. The main ``pytest`` run
never collects them (``tests/conftest.py``): name the files to run them.

The API, kept small on purpose::

    import comfyui_server as cs                     # 1. at the top of a test_comfyui_*.py file
    cs.require()                                    #    skip / fail the module without a usable COMFYUI_DIR

    def test_x(comfyui):                            # 2. the session-wide server fixture (tests/conftest.py)
        comfyui.base                                #    its --base-directory: models/, input/, output/, custom_nodes/
        entry = comfyui.run(prompt)                 #    queue, wait, return the /history entry (raises PromptFailed)
        prompt_id = comfyui.queue(prompt)           #    or step by step: queue ...
        comfyui.wait_for(lambda: ...)               #    ... poll any condition (e.g. on comfyui.messages(prompt_id))
        comfyui.interrupt(); comfyui.free()         #    POST /interrupt, POST /free
        comfyui.probe(free_bytes=0)                 #    what ComfyUI's model management holds (tests/comfyui_probe)
        comfyui.get("/object_info"), comfyui.post("/prompt", {...}), comfyui.log()

The server listens on 127.0.0.1 only, runs with ``--cpu`` and a temporary ``--base-directory`` holding this pack
(linked into ``custom_nodes/``), so neither the ComfyUI checkout nor a user's install is written to. Tests put
their (tiny) model files under ``comfyui.base / "models"``; ComfyUI rescans its folders on each request.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-CoCoCo"
PROBE_NAME = "cococo_test_probe"
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600


def comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR")
    return Path(value).resolve() if value else None


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def problem() -> str | None:
    """Why the real-server tests cannot run here (None when they can)."""
    folder = comfyui_dir()
    if folder is None:
        return "COMFYUI_DIR is not set (point it at a ComfyUI checkout; .ci/stage-10-comfyui.sh does)"
    if not (folder / "main.py").is_file() or not (folder / "folder_paths.py").is_file():
        return f"COMFYUI_DIR={folder} is not a ComfyUI checkout (no main.py / folder_paths.py)"
    if not Path(comfyui_python()).is_file():
        return f"COMFYUI_PYTHON={comfyui_python()} does not exist"
    return None


def require() -> None:
    """Call at module level: skip the module without a usable ComfyUI, fail it when ``CI`` is set."""
    reason = problem()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the real-ComfyUI tests but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


class PromptFailed(AssertionError):
    """ComfyUI refused a prompt or its execution ended with an error; the message carries ComfyUI's words."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_directory(base: Path) -> Path:
    """A ComfyUI ``--base-directory`` with this pack and the test probe node linked in ``custom_nodes/`` and empty
    model folders."""
    base = Path(base)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        os.symlink(ROOT, link)
    probe = base / "custom_nodes" / PROBE_NAME  # test-only: reports ComfyUI's loaded models (tests/comfyui_probe)
    if not probe.exists():
        os.symlink(ROOT / "tests" / "comfyui_probe", probe)
    for folder in ("input", "output", "temp", "user", "models/checkpoints", "models/diffusers", "models/loras"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    return base


class ComfyUIServer:
    """One ComfyUI process (``main.py`` of ``COMFYUI_DIR``) on a free loopback port."""

    def __init__(self, base: Path, extra_args: tuple[str, ...] = ()):
        self.base = make_base_directory(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self._log_path = self.base / "comfyui.log"
        self._messages: list[dict] = []
        self._binary_frames = 0
        self._listener: threading.Thread | None = None

    # --- process --------------------------------------------------------------------------------
    def start(self) -> "ComfyUIServer":
        command = [comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
                   "--disable-auto-launch", "--preview-method", "latent2rgb", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tests/conftest.py
        with open(self._log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=comfyui_dir(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")
                time.sleep(0.5)
        self._listen()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    # --- HTTP -----------------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data.strip() else None

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id, or raises :class:`PromptFailed` with ComfyUI's validation errors."""
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            raise PromptFailed(f"ComfyUI refused the prompt: {error.read().decode(errors='replace')}") from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
        """The /history entry of ``prompt_id`` once it ran (successfully or not)."""
        return self.wait_for(lambda: self.history(prompt_id), timeout, f"prompt {prompt_id} to finish")

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT_S) -> dict:
        """Queue ``prompt``, wait for it, return its /history entry; :class:`PromptFailed` unless it succeeded."""
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout)
        if entry["status"]["status_str"] != "success":
            errors = [f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                      f"{data.get('exception_message')}"
                      for kind, data in entry["status"]["messages"] if kind == "execution_error"]
            raise PromptFailed(f"prompt {prompt_id} failed: {errors or entry['status']}\nlog:\n{self.log()[-3000:]}")
        entry["prompt_id"] = prompt_id
        return entry

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free (what the frontend's *Free model and node cache* sends); ComfyUI acts on it when idle."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def probe(self, free_bytes: int = 0) -> dict:
        """Run the test probe node: ``{"loaded": [model class names in current_loaded_models], "replaced": [...]}``
        (after ComfyUI freed ``free_bytes`` on its device, when given)."""
        entry = self.run({"1": {"class_type": "CoCoCoTestProbe", "inputs": {"free_bytes": int(free_bytes)}}})
        return json.loads(entry["outputs"]["1"]["text"][0])

    def wait_for(self, condition, timeout: float = RUN_TIMEOUT_S, what: str = "a condition"):
        """Poll ``condition()`` until it returns something truthy (returned); fails with the server log."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while waiting for {what}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}; log:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    # --- websocket messages -----------------------------------------------------------------------
    def messages(self, prompt_id: str | None = None, kind: str | None = None) -> list[dict]:
        """The JSON messages ComfyUI sent this client (``{"type", "data"}``), optionally for one prompt / type."""
        return [m for m in list(self._messages)
                if (kind is None or m.get("type") == kind)
                and (prompt_id is None or (m.get("data") or {}).get("prompt_id") == prompt_id)]

    @property
    def binary_frames(self) -> int:
        """How many binary websocket frames (latent previews) arrived."""
        return self._binary_frames

    def _listen(self) -> None:
        import asyncio

        import aiohttp  # a ComfyUI requirement: present in the Python that runs these tests

        connected = threading.Event()

        async def listen():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                              max_msg_size=0) as socket_:
                    connected.set()
                    async for message in socket_:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self._messages.append(json.loads(message.data))
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            self._binary_frames += 1

        def run():
            try:
                asyncio.run(listen())
            except Exception:  # the server went away: nothing more to record
                pass
            finally:
                connected.set()

        self._listener = threading.Thread(target=run, name="comfyui-websocket", daemon=True)
        self._listener.start()
        if not connected.wait(30):
            raise RuntimeError("could not open ComfyUI's websocket")


@pytest.fixture(scope="session")
def comfyui():
    """One real ComfyUI server for the whole test session (started on first use, stopped at the end)."""
    require()
    with tempfile.TemporaryDirectory(prefix="comfyui-base-") as base:
        server = ComfyUIServer(Path(base)).start()
        try:
            yield server
        finally:
            server.stop()
