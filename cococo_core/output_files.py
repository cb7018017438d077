"""One way to write output files and folders without losing data, also when runs overlap or crash.

Rules, the same for every command and node that writes (videos, PNG folders, safetensors, JSON):

* an output that resolves to one of the inputs (same path, a link to it, a hard link, or a PNG folder whose
  frame files are inputs) is refused, even when overwriting is allowed: writing there would destroy the input;
* an output whose folder is missing or not writable is refused by :func:`check_output`, which every command
  calls before it loads a model (a probe file is created there and removed);
* an existing output is replaced only when the caller allows it (``--overwrite``), and this is checked twice:
  before any work and again at the moment the output appears under its name, so of two runs writing the same new
  output at once exactly one wins and the other fails with :class:`OutputExistsError` (never a blend of both);
* everything is first written under a unique staging name beside the output (created exclusively, so no two
  writers share it; same file system, so the final rename is atomic), checked by re-opening it (the caller's
  ``verify``), flushed to disk, and only then given its name: with a no-replace rename for a new output
  (Linux ``renameat2(RENAME_NOREPLACE)``; elsewhere ``link`` + ``unlink``, which also fails on an existing name,
  or a lock and a re-check), or an atomic rename over an earlier file;
* a folder output (PNG frames) is replaced as a whole: the new frames are written into a staging folder, the
  other entries of an existing folder (those whose names do not match ``owned``, the names the pack writes:
  the user's own files) are hard-linked into it, and the two folders are swapped in one step
  (``renameat2(RENAME_EXCHANGE)``), so a crash at any point leaves the old folder or the new one, never a mix;
* any failure or interruption (Ctrl-C included) removes the staging file or folder and leaves an earlier output
  as it was; a failed write raises :class:`OutputError` naming the output path the user gave.

A process killed with SIGKILL cannot clean up: it may leave a hidden ``.<name>.partial-*`` entry beside the
output (and, killed during a folder swap, the old folder under that name), never a damaged output.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

GLOB_CHARACTERS = set("*?[")
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
_AT_FDCWD = -100


class OutputError(OSError):
    """Writing an output failed (disk full, write error, or the written file did not read back)."""


class OutputExistsError(FileExistsError, ValueError):
    """The output exists (another run may have written it meanwhile) and overwriting was not allowed.
    A ``ValueError`` too, so the commands report it as a usage error (exit 2), as the early check does."""


# --- checks before any work ------------------------------------------------------------------------


def _input_locations(source) -> list[Path]:
    """The resolved paths an input names: the path itself, or for a glob pattern its folder and matches."""
    text = os.fspath(source)
    path = Path(text)
    if not path.exists() and GLOB_CHARACTERS & set(text):
        return [Path(text).parent.resolve(), *(Path(match).resolve() for match in glob.glob(text))]
    return [path.resolve()]


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(path, inputs: Iterable, *, owned: re.Pattern | None = None, what: str = "the output") -> None:
    """Raise when ``path`` resolves to one of ``inputs``, or, for a folder output whose files match ``owned``,
    when one of its files that a write would replace is an input."""
    target = Path(path).resolve()
    for source in inputs:
        if source is None:
            continue
        for location in _input_locations(source):
            replaced = owned is not None and location.parent == target and owned.fullmatch(location.name)
            if _same_file(target, location) or replaced:
                raise ValueError(f"{what} {path} is the input {source}: writing there would destroy it; "
                                 "choose another output path (--overwrite does not allow this)")


def owned_files(folder: Path, owned: re.Pattern) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and owned.fullmatch(p.name))


def _staging_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer uses (64 random bits; created exclusively)."""
    return path.with_name(f".{path.stem}.partial-{secrets.token_hex(8)}{path.suffix}")


def check_writable(path, *, what: str = "the output", folder=None) -> None:
    """Raise when no file can be created in ``folder`` (default: the folder of ``path``), where ``path`` will be
    staged and renamed (read-only folder or file system, no permission): found now, not after the models ran.
    A probe file is created there and removed."""
    folder = Path(path).parent if folder is None else Path(folder)
    probe = folder / f".{Path(path).name}.probe-{secrets.token_hex(8)}"
    try:
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError as error:
            raise ValueError(f"cannot write {what} {path}: its folder {folder} is not writable "
                             f"({error.strerror or error}); choose another output path or make the folder writable"
                             ) from error
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _holds_working_folder(folder: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == folder or folder in cwd.parents


def check_output(path, *, inputs: Iterable = (), overwrite: bool = False, folder: bool = False,
                 owned: re.Pattern | None = None, what: str = "the output") -> Path:
    """Raise before any work when ``path`` may not be written (see the module docstring); returns it as a Path."""
    path = Path(path)
    refuse_inputs(path, inputs, owned=owned if folder else None, what=what)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the output folder {path.parent} of {path} does not exist; create it first")
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"cannot write PNG frames into {path}: it is a file, not a folder")
        if _holds_working_folder(path.resolve()):
            raise ValueError(f"cannot write PNG frames into {path}: it is (or holds) the current folder, and a frame "
                             "folder is replaced as a whole; give a sub-folder, e.g. frames/")
        if path.is_dir() and owned is not None and owned_files(path, owned) and not overwrite:
            raise ValueError(f"{path} already holds frames of an earlier run; pass --overwrite to replace them "
                             "(only the frame files the pack wrote are removed) or choose a new folder")
        check_writable(path, what=what, folder=path.resolve().parent)  # a linked folder is swapped where it lies
    else:
        if path.exists() or path.is_symlink():
            if path.is_dir():
                raise ValueError(f"{what} {path} is a folder; give a file path")
            if not overwrite:
                raise ValueError(f"{path} exists; pass --overwrite to replace it")
        check_writable(path, what=what)
    return path


def check_distinct(paths: Iterable) -> None:
    """Raise when two outputs of one command resolve to the same path."""
    seen: dict[Path, str] = {}
    for path in paths:
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ValueError(f"two outputs name the same path: {seen[resolved]} and {path}")
        seen[resolved] = os.fspath(path)


# --- renames: the only steps that change what the user sees ------------------------------------------


@functools.lru_cache(maxsize=1)
def _renameat2_function():
    """The C library's ``renameat2`` (glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """``renameat2(source, target, flags)``; False where the C library, kernel or file system lacks it."""
    function = _renameat2_function()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` among the pack's writers (``flock``; a no-op where there is none)."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
        handle = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(errno.EEXIST, f"{path} exists (another run wrote it while this one worked); "
                                           "pass --overwrite to replace it, or choose another output path")


def rename_no_replace(source: Path, target: Path, *, locked: bool = False) -> None:
    """Give ``source`` the name ``target``, failing with :class:`OutputExistsError` if that name exists.
    ``locked``: the caller holds :func:`_folder_lock` on the target's folder already."""
    try:
        if _renameat2(source, target, RENAME_NOREPLACE):
            return
        if os.name == "nt":  # Windows' rename never replaces
            os.rename(source, target)
            return
        if source.is_file() and not source.is_symlink():
            try:
                os.link(source, target)
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
            else:
                os.unlink(source)
                return
        with contextlib.nullcontext() if locked else _folder_lock(target.parent):
            if os.path.lexists(target):
                raise _exists_error(target)
            os.rename(source, target)
    except FileExistsError as error:
        if isinstance(error, OutputExistsError):
            raise
        raise _exists_error(target) from error
    except OSError as error:
        if error.errno == errno.ENOTEMPTY:  # rename onto a non-empty folder
            raise _exists_error(target) from error
        raise


def _exchange(new: Path, old: Path) -> None:
    """Swap the names of two folders in one step; without ``RENAME_EXCHANGE``, two renames."""
    if _renameat2(new, old, RENAME_EXCHANGE):
        return
    aside = _staging_name(old)
    os.rename(old, aside)
    os.rename(new, old)
    os.rename(aside, new)


def _sync(path: Path) -> None:
    """Flush a written file (or a folder's entries) to disk, so a power cut cannot leave it empty after the rename."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync folders
    finally:
        os.close(handle)


def _failure(path: Path, error: BaseException) -> OutputError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    failure = OutputError(f"could not write {path}: {reason or type(error).__name__}; nothing was written under that "
                          "name (is the disk full?)")
    failure.errno = error.errno if isinstance(error, OSError) else None  # ENOSPC etc., for callers that check
    return failure


def write_error(path: Path, error: BaseException) -> BaseException:
    """The error to raise for a failed write of ``path``: an :class:`OutputError` naming ``path`` with the system's
    reason (disk full, I/O error, a file that did not read back); cancellation and refusals as they are."""
    if isinstance(error, (OutputError, OutputExistsError)) or not isinstance(error, Exception):
        return error
    if isinstance(error, (OSError, ValueError, RuntimeError)):
        return _failure(path, error)
    return error


@contextlib.contextmanager
def cleanup_on_error(path, cleanup: Callable[[], None]) -> Iterator[None]:
    """On any error or interruption in the block: ``cleanup()`` (drop the staging entry), then raise the error as
    :func:`write_error` reports it for ``path``."""
    try:
        yield
    except BaseException as error:
        cleanup()
        reported = write_error(Path(path), error)
        if reported is error:
            raise
        raise reported from error


# --- one file ----------------------------------------------------------------------------------------


class StagedFile:
    """A file output under construction: :meth:`create` makes the unique staging file, :meth:`commit` gives it
    its name, :meth:`discard` removes it. Nothing is on disk before :meth:`create`; call it inside the block
    that calls :meth:`discard` on failure, so an interruption at any moment leaves nothing behind."""

    def __init__(self, path, *, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        self.temporary: Path | None = None

    def create(self) -> int:
        """Create the staging file exclusively; returns its open descriptor (write only)."""
        while True:
            self.temporary = _staging_name(self.path)
            try:
                return os.open(self.temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o644)
            except FileExistsError:
                continue

    def commit(self, verify: Callable[[Path], None] | None = None) -> Path:
        if verify is not None:
            verify(self.temporary)
        _sync(self.temporary)
        if self.overwrite:
            os.replace(self.temporary, self.path)
        else:
            rename_no_replace(self.temporary, self.path)
        self.temporary = None
        _sync(self.path.parent)
        return self.path

    def discard(self) -> None:
        if self.temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)
            self.temporary = None


@contextlib.contextmanager
def staged_file(path, verify: Callable[[Path], None] | None = None, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a unique staging path beside ``path`` (an empty file, ours alone); after the block, ``verify`` it and
    give it the name ``path`` (an existing ``path`` only with ``overwrite``, else :class:`OutputExistsError`).
    Any failure removes the staging file, keeps an earlier ``path`` as it was and raises :class:`OutputError`
    naming ``path`` (cancellation and other non-``Exception`` errors pass through unchanged)."""
    staged = StagedFile(path, overwrite=overwrite)
    with cleanup_on_error(staged.path, staged.discard):
        os.close(staged.create())
        yield staged.temporary
        staged.commit(verify)


def write_text(path, text: str, *, overwrite: bool = False) -> Path:
    """Write a UTF-8 text file (JSON, CSV, a reply; line ends as given) through :func:`staged_file`, checking that
    it reads back."""
    data = text.encode("utf-8")

    def same(written: Path) -> None:
        if written.read_bytes() != data:
            raise OSError(errno.EIO, "the file does not read back as written")

    with staged_file(path, same, overwrite=overwrite) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json(path, data, *, overwrite: bool = False, **dumps) -> Path:
    """``json.dumps(data, **dumps)`` + newline through :func:`write_text`."""
    import json  # noqa: PLC0415

    return write_text(path, json.dumps(data, **dumps) + "\n", overwrite=overwrite)


# --- one folder ----------------------------------------------------------------------------------------


def _link_file(source, target) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except (OSError, NotImplementedError):  # no hard links on this file system (or for links, on this OS)
        shutil.copy2(source, target, follow_symlinks=False)


def _link_entry(source: Path, target: Path) -> None:
    """Put ``source`` (a file, link or folder tree) at ``target`` as hard links; copies where linking is impossible."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_file)
    else:
        _link_file(source, target)


def _discard_old(old: Path, new: Path, owned: re.Pattern) -> None:
    """Remove the replaced folder; an entry that appeared in it after its files were linked moves to the new one."""
    for entry in old.iterdir():
        if not owned.fullmatch(entry.name) and not os.path.lexists(new / entry.name):
            with contextlib.suppress(OSError):
                rename_no_replace(entry, new / entry.name)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(path, owned: re.Pattern, verify: Callable[[Path], None] | None = None, *,
                  overwrite: bool = False) -> Iterator[Path]:
    """Yield a unique staging folder beside ``path``; after the block, ``verify(staging)``, then it becomes
    ``path`` in one step: a new folder by a no-replace rename, an existing one by swapping the two folders after
    the existing folder's other entries (not matching ``owned``) were linked into the staging folder. An existing
    folder holding ``owned`` files is replaced only with ``overwrite`` (checked again at the swap, under a lock)."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    staging: Path | None = None

    def remove_staging() -> None:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    with cleanup_on_error(path, remove_staging):
        while True:
            staging = _staging_name(target)  # named before it exists, so an interruption here removes it
            try:
                os.mkdir(staging)
                break
            except FileExistsError:
                staging = None
        yield staging
        if verify is not None:
            verify(staging)
        for written in staging.iterdir():
            _sync(written)
        _sync(staging)
        with _folder_lock(target.parent):
            if not os.path.lexists(target):
                rename_no_replace(staging, target, locked=True)
                staging = None
            else:
                if not target.is_dir():
                    raise _exists_error(target)
                if not overwrite and owned_files(target, owned):
                    raise _exists_error(target)
                for entry in target.iterdir():
                    if not owned.fullmatch(entry.name):
                        _link_entry(entry, staging / entry.name)
                _exchange(staging, target)
                old, staging = staging, None
                _discard_old(old, target, owned)
        _sync(target.parent)

