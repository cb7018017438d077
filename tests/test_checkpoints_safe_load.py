"""Safe checkpoint reading: formats, wrappers, truncated/corrupt files, malicious pickles, streaming."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from cococo_core.checkpoints.safe_load import (
    CheckpointError, UnsafeCheckpointError, load_state_dict, open_state, read_metadata,
)

STATE = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.ones(2, dtype=torch.float16)}


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("name,writer", [
    ("m.safetensors", lambda s, p: save_file(s, p, metadata={"modelspec.predict_key": "v"})),
    ("m.ckpt", lambda s, p: torch.save({"state_dict": s, "global_step": 7, "epoch": 1}, p)),
    ("m.pth", lambda s, p: torch.save(s, p)),
    ("m.bin", lambda s, p: torch.save(s, p, _use_new_zipfile_serialization=False)),
    ("misnamed.ckpt", lambda s, p: save_file(s, p)),
])
def test_formats_load_and_stream(tmp_path, name, writer):
    path = tmp_path / name
    writer(STATE, str(path))
    assert _equal(load_state_dict(path), STATE)
    with open_state(path) as state:
        assert sorted(state.keys()) == sorted(STATE)
        assert "w" in state and "nope" not in state
        assert state.shape("w") == (3, 4) and state.dtype("h") == torch.float16 and state.dtype("b") == torch.int64
        assert torch.equal(state.get("w"), STATE["w"])
        with pytest.raises(KeyError, match="nope"):
            state.get("nope")
    expected_meta = {"modelspec.predict_key": "v"} if name == "m.safetensors" else {}
    assert read_metadata(path) == expected_meta


def test_nested_state_dict_wrapper_unwrapped(tmp_path):
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {"state_dict": STATE}}, path)
    assert _equal(load_state_dict(path), STATE)


@pytest.mark.parametrize("name,writer", [
    ("t.safetensors", lambda s, p: save_file(s, p)),
    ("t.ckpt", lambda s, p: torch.save(s, p)),
    ("t.pt", lambda s, p: torch.save(s, p, _use_new_zipfile_serialization=False)),
])
def test_truncated_files_give_clear_error(tmp_path, name, writer):
    full = tmp_path / ("full_" + name)
    writer({"w": torch.randn(64, 64)}, str(full))
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=name):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match=name):
        with open_state(path) as state:
            state.get("w")


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b'{"a": 1}' * 4])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.safetensors"):
        load_state_dict(path)


def test_pickle_without_tensors_rejected(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load_state_dict("/nonexistent/nowhere.ckpt")


class _Payload:
    """Unpickling this would create a marker file (an attacker would run anything instead)."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_rejected_without_running(tmp_path):
    marker = tmp_path / "executed"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(STATE), "callback": _Payload()}, path)
    # the payload really would run with an unrestricted unpickler (proves the test can fail)
    with open(path, "rb") as handle:
        assert handle.read(2) == b"PK"
    for loader in (load_state_dict, open_state):
        with pytest.raises(UnsafeCheckpointError, match="evil.ckpt.*(open|builtins)"):
            loader(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_legacy_pickle_with_global_rejected(tmp_path):
    path = tmp_path / "evil_legacy.pt"
    with open(path, "wb") as handle:
        pickle.dump({"x": os.getcwd}, handle, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="evil_legacy.pt.*getcwd"):
        load_state_dict(path)


def test_lightning_callback_beside_weights_loads_inert(tmp_path, monkeypatch):
    """RunwayML SD-1.x .ckpt files pickle a Lightning ModelCheckpoint callback next to the weights. It is read
    as an inert placeholder: the file loads, and the callback's own code never runs."""
    import importlib
    import sys

    package = tmp_path / "fake" / "pytorch_lightning" / "callbacks"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    marker = tmp_path / "callback_code_ran"
    (package / "model_checkpoint.py").write_text(
        "class ModelCheckpoint:\n"
        "    def __setstate__(self, state):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        self.__dict__.update(state)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    callback_class = importlib.import_module("pytorch_lightning.callbacks.model_checkpoint").ModelCheckpoint
    callback = callback_class.__new__(callback_class)
    callback.__dict__.update(monitor="val/loss", best_k_models={})
    path = tmp_path / "sd-v1-5-like.ckpt"
    torch.save({"state_dict": dict(STATE), "global_step": 1, "callbacks": {callback_class: {"best": torch.tensor(0.5)}},
                "trainer_callback": callback}, path)
    for name in [m for m in sys.modules if m.split(".")[0] == "pytorch_lightning"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))  # the fake package must not be importable while loading
    sys.path.remove(str(tmp_path / "fake"))

    assert _equal(load_state_dict(path), STATE)
    with open_state(path) as state:
        assert sorted(state.keys()) == sorted(STATE)
    assert not marker.exists()
    sys.path.insert(0, str(tmp_path / "fake"))  # with the class importable an unrestricted load runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()
