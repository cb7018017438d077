"""Outputs stay whole when runs overlap, crash or meet a full or read-only disk (cococo_core.output_files through
every writer: merge .safetensors, video files, PNG folders, JSON).

* two writers to one new output at once: exactly one wins, the output is one complete result, the other fails
  with a clear error (exit 2 from the command line) unless overwriting was asked for;
* a writer killed with SIGKILL at any file-system step of a file or folder replacement leaves the old output or
  the new one, complete;
* Ctrl-C at the moment a merge creates its staging file leaves nothing;
* a read-only output folder is refused before a model loads; a full disk names the output file.

The save node's refusal of a prefix linked out of ComfyUI's output folder is in tests/test_output_files.py.
"""
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import tiny_models
from cococo_core import cli, output_files
from cococo_core.video_io import read_frames, write_video

REPO = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 16, 24


def _solid(frames: int, value: int) -> np.ndarray:
    """Grey frames value, value + 8, ... (distinct, so a GIF stores each one)."""
    return np.stack([np.full((HEIGHT, WIDTH, 3), value + 8 * i, np.uint8) for i in range(frames)])


def _which_clip(path: Path) -> tuple[int, int]:
    """(frames, grey level of the first frame) of a written clip."""
    frames = read_frames(path).frames
    return frames.shape[0], int(round(frames[0].mean()))


def _meet_after(monkeypatch, owner, name: str, parties: int = 2, when=lambda *args: True):
    """Make ``parties`` threads wait for each other right after each call of ``owner.name`` (that ``when`` accepts),
    so all of them pass a check before any of them goes on: the race of two runs, made certain."""
    barrier = threading.Barrier(parties, timeout=60)
    original = getattr(owner, name)

    def meeting(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args):
            barrier.wait()
        return result

    meeting.__wrapped__ = original
    monkeypatch.setattr(owner, name, meeting)


def _race(*jobs):
    """Run the jobs in threads at once; returns each one's result or raised exception."""
    outcomes = [None] * len(jobs)

    def run(index, job):
        try:
            outcomes[index] = job()
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


def _staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".probe-" in p.name)


# --- two writers, one new output ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return {"base": str(tiny_models.ldm_file(in_channels=4)), "inpaint": str(tiny_models.ldm_file(in_channels=9))}


def _merge_command(models, out, alpha, *extra):
    return ["merge", "--base", models["base"], "--inpaint", models["inpaint"], "--alpha", str(alpha), "--quiet",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def merged(models, tmp_path_factory):
    """The two merges the racing runs write, each made alone."""
    folder = tmp_path_factory.mktemp("alone")
    for alpha in (0.5, 1.0):
        assert cli.main(_merge_command(models, folder / f"{alpha}.safetensors", alpha)) == 0
    return {alpha: load_file(str(folder / f"{alpha}.safetensors")) for alpha in (0.5, 1.0)}


def _which(state, merged) -> float | None:
    for alpha, want in merged.items():
        if set(state) == set(want) and all(state[k].equal(want[k]) for k in want):
            return alpha
    return None


def test_two_merges_to_one_new_file_one_wins(models, merged, tmp_path, monkeypatch, capsys):
    out = tmp_path / "merged.safetensors"
    _meet_after(monkeypatch, output_files, "check_output")
    codes = _race(lambda: cli.main(_merge_command(models, out, 0.5)), lambda: cli.main(_merge_command(models, out, 1.0)))
    assert sorted(codes) == [0, 2], codes
    error = capsys.readouterr().err
    assert f"{out} exists" in error and "--overwrite" in error
    winner = [0.5, 1.0][codes.index(0)]
    assert _which(load_file(str(out)), merged) == winner  # the whole file of the run that says it wrote it
    assert _staging_leftovers(tmp_path) == []


def test_two_merges_with_overwrite_leave_one_whole_file(models, merged, tmp_path, monkeypatch):
    out = tmp_path / "merged.safetensors"
    _meet_after(monkeypatch, output_files, "check_output")
    codes = _race(lambda: cli.main(_merge_command(models, out, 0.5, "--overwrite")),
                  lambda: cli.main(_merge_command(models, out, 1.0, "--overwrite")))
    assert codes == [0, 0]
    assert _which(load_file(str(out)), merged) in (0.5, 1.0)
    assert _staging_leftovers(tmp_path) == []


@pytest.fixture(params=["renameat2", "portable"])
def renames(request, monkeypatch):
    """Both ways outputs get their names: Linux renameat2, and the portable one (link + unlink for a file, a folder
    lock and a re-check for a folder, two renames for a folder swap) used where renameat2 is missing."""
    if request.param == "portable":
        monkeypatch.setattr(output_files, "_renameat2", lambda *args: False)
    return request.param


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "frames"])
def test_two_video_writers_to_one_new_output_one_wins(tmp_path, monkeypatch, name, renames):
    out = tmp_path / name
    clips = {40: _solid(3, 40), 200: _solid(5, 200)}
    _meet_after(monkeypatch, output_files, "check_output")
    outcomes = _race(*(lambda clip=clip: write_video(out, clip, 8.0) for clip in clips.values()))
    winners = [value for value, outcome in zip(clips, outcomes) if not isinstance(outcome, BaseException)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], ValueError) and "exists" in str(losers[0]) and "--overwrite" in str(losers[0])
    count, level = _which_clip(out)
    assert count == clips[winners[0]].shape[0] and abs(level - winners[0]) <= 2
    assert _staging_leftovers(tmp_path) == []


def test_two_png_writers_to_one_empty_folder_never_mix(tmp_path, monkeypatch, renames):
    """An existing folder without frames may be written without --overwrite, by one run only."""
    out = tmp_path / "frames"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _meet_after(monkeypatch, output_files, "check_output")
    outcomes = _race(lambda: write_video(out, _solid(3, 40), 8.0), lambda: write_video(out, _solid(5, 200), 8.0))
    assert sum(isinstance(o, ValueError) and "exists" in str(o) for o in outcomes) == 1, outcomes
    assert _which_clip(out) in ((3, 40), (5, 200))
    assert (out / "notes.txt").read_text() == "mine"
    monkeypatch.setattr(output_files, "check_output", output_files.check_output.__wrapped__)
    write_video(out, _solid(2, 100), 8.0, overwrite=True)  # a replacement: the swap
    assert _which_clip(out) == (2, 100) and (out / "notes.txt").read_text() == "mine"
    assert _staging_leftovers(tmp_path) == []


def test_two_evaluations_starting_in_one_folder_do_not_mix_settings(tmp_path, monkeypatch):
    """JSON outputs: two first runs record their settings at once; the second must see the first's, not mix."""
    from cococo_core.evaluation.results import ResultStore

    store = ResultStore(tmp_path / "results")
    store.prepare()
    _meet_after(monkeypatch, Path, "is_file", when=lambda path: path.name == "settings.json")
    settings = [{"metrics": "psnr", "stride": 1}, {"metrics": "psnr", "stride": 2}]
    outcomes = _race(*(lambda s=s: store.check_settings(s) for s in settings))
    refused = [o for o in outcomes if isinstance(o, ValueError)]
    assert len(refused) == 1 and "other settings" in str(refused[0]), outcomes
    recorded = json.loads((store.folder / "settings.json").read_text())
    assert recorded == settings[outcomes.index(None)]
    assert _staging_leftovers(store.folder) == []


def test_json_writer_never_replaces_unasked(tmp_path, monkeypatch):
    out = tmp_path / "summary.json"
    big = [{"value": i} for i in range(20000)]  # long enough that two interleaved writes would show
    _meet_after(monkeypatch, output_files, "_sync", when=lambda path: ".partial" in Path(path).name)
    outcomes = _race(lambda: output_files.write_json(out, big), lambda: output_files.write_json(out, big[::-1]))
    assert sum(isinstance(o, output_files.OutputExistsError) for o in outcomes) == 1, outcomes
    assert json.loads(out.read_text()) in (big, big[::-1])
    monkeypatch.undo()
    output_files.write_json(out, {"a": 1}, overwrite=True)
    assert json.loads(out.read_text()) == {"a": 1} and _staging_leftovers(tmp_path) == []


# --- a writer killed at every step ----------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from cococo_core import output_files
    from cococo_core.video_io import write_video

    out, frames, value, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    steps = 0

    def step(function):
        def counted(*args, **kwargs):
            global steps
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return counted

    for name in ("rename", "replace", "link", "unlink", "rmdir", "mkdir", "symlink"):
        setattr(os, name, step(getattr(os, name)))
    if hasattr(output_files, "_renameat2"):
        output_files._renameat2 = step(output_files._renameat2)
    clip = np.stack([np.full((16, 24, 3), value + 8 * i, np.uint8) for i in range(frames)])
    write_video(out, clip, 8.0, overwrite=True)
    print("steps", steps)
""")


def _write_in_child(out: Path, frames: int, value: int, kill_at: int) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out), str(frames), str(value), str(kill_at)],
                          capture_output=True, text=True, timeout=120, env=environment, cwd=out.parent)


@pytest.mark.parametrize("name", ["frames", "out.gif"])
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_output(tmp_path, name):
    out = tmp_path / name
    old, new = (4, 60), (3, 180)  # (frames, first grey level): the old output has more frames than the new one

    def only_the_old_output():
        for entry in tmp_path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        write_video(out, _solid(*old), 8.0)
        if not out.suffix:
            (out / "notes.txt").write_text("the user's own file")

    def state():
        if not out.suffix:
            assert (out / "notes.txt").read_text() == "the user's own file"
        return _which_clip(out)

    only_the_old_output()
    finished = _write_in_child(out, *new, kill_at=0)
    assert finished.returncode == 0, finished.stderr
    assert state() == new
    steps = int(finished.stdout.split()[-1])
    seen = set()
    for kill_at in range(1, steps + 1):
        only_the_old_output()
        killed = _write_in_child(out, *new, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        seen.add(state())
        assert seen <= {old, new}, f"killed at step {kill_at} of {steps}: {seen - {old, new}} is neither {old} nor {new}"
    assert old in seen  # kill points before the switch (a file's rename is its last step; a folder has more after)


# --- Ctrl-C, read-only folders, full disks ----------------------------------------------------------------------


def test_ctrl_c_when_a_merge_creates_its_staging_file_leaves_nothing(models, tmp_path, monkeypatch):
    import builtins

    from cococo_core.personalize import MergeRecipe, save_merged

    real_os_open, real_open = os.open, builtins.open

    def interrupted(path) -> bool:
        return Path(path).parent == tmp_path and ".partial" in Path(path).name

    def os_open(path, flags, *args, **kwargs):
        handle = real_os_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and interrupted(path):
            os.close(handle)
            raise KeyboardInterrupt
        return handle

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax") and interrupted(file):
            handle.close()
            raise KeyboardInterrupt
        return handle

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    with pytest.raises(KeyboardInterrupt):
        save_merged(MergeRecipe(inpaint=models["inpaint"], base=models["base"]), tmp_path / "out.safetensors")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir()
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True).returncode == 0
    except OSError:  # no mount command
        return False


@contextlib.contextmanager
def _mounted_tmpfs(folder: Path, options: str):
    if not _mount_tmpfs(folder, options):
        pytest.skip("cannot mount a tmpfs here (needs root with mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder no file can be created in: a read-only tmpfs as root (root ignores permissions), else mode 555;
    as root where mounting is not allowed, creating a file there fails with EROFS as on a read-only file system."""
    folder = tmp_path / "read-only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount_tmpfs(folder, "ro,size=1m"):
        yield folder
        subprocess.run(["umount", str(folder)], check=False)
    else:
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and Path(path).parent == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
        yield folder


def test_a_read_only_output_folder_is_refused_before_loading(read_only_folder, tmp_path, models, capsys, no_loading,
                                                            monkeypatch):
    video, mask = write_video(tmp_path / "in.mp4", _solid(2, 90), 8.0), write_video(tmp_path / "mask.mp4", _solid(2, 240), 8.0)
    base = ["inpaint", "--base", str(tiny_models.sd_folder()), "--motion", str(tiny_models.motion_folder()),
            "--video", str(video), "--mask", str(mask), "--prompt", "a car", "--steps", "1"]
    for out in (read_only_folder / "out.mp4", read_only_folder / "frames"):
        assert cli.main(base + ["--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert str(out) in error and "not writable" in error

    from cococo_core.personalize import save as merge_module

    def no_merge(*args, **kwargs):
        raise AssertionError("the merge started before the output folder was checked")

    monkeypatch.setattr(merge_module, "MergePlan", no_merge)
    out = read_only_folder / "merged.safetensors"
    assert cli.main(_merge_command(models, out, 1.0)) == 2
    assert str(out) in capsys.readouterr().err and not out.exists()


def _assert_full_disk_reported(models, out: Path, capsys):
    assert cli.main(_merge_command(models, out, 1.0)) == 1
    error = capsys.readouterr().err
    assert f"could not write {out}" in error
    assert not out.exists() and _staging_leftovers(out.parent) == []
    return error


def test_a_full_disk_names_the_merge_output(models, tmp_path, capsys):
    """A real full disk: a 2 MB tmpfs, far too small for the 11 MB merge."""
    with _mounted_tmpfs(tmp_path / "small", "size=2m") as small:
        error = _assert_full_disk_reported(models, small / "merged.safetensors", capsys)
    assert "No space left on device" in error


def test_a_write_error_names_the_merge_output(models, tmp_path, capsys):
    """The same without root: a file-size limit (RLIMIT_FSIZE) makes the write fail with EFBIG."""
    resource = pytest.importorskip("resource")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    try:
        error = _assert_full_disk_reported(models, tmp_path / "merged.safetensors", capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert "File too large" in error
