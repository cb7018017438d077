"""One way to write output files and folders without losing data.

Rules, the same for every command and node that writes:

* an output that resolves to one of the inputs (same path, a link to it, a hard link, or a PNG folder whose
  frame files are inputs) is refused, even when overwriting is allowed: writing there would destroy the input;
* an existing output file is replaced only when the caller allows it (``--overwrite``);
* everything is first written under a temporary name in the target folder (same file system, so the
  final rename is atomic), checked by re-opening it (the caller's ``verify``), and only then renamed to
  the final name; a failed write or check removes the temporary file and leaves any earlier file intact;
* a folder output (PNG frames) never mixes runs: an existing folder holding files the pack writes
  (``owned``) is refused unless overwriting is allowed, and then only those files are replaced; other
  files in the folder are left alone.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

GLOB_CHARACTERS = set("*?[")


class OutputError(OSError):
    """Writing an output failed (disk full, write error, or the written file did not read back)."""


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
        if path.is_dir() and owned is not None and owned_files(path, owned) and not overwrite:
            raise ValueError(f"{path} already holds frames of an earlier run; pass --overwrite to replace them "
                             "(only the frame files the pack wrote are removed) or choose a new folder")
    elif path.exists() or path.is_symlink():
        if path.is_dir():
            raise ValueError(f"{what} {path} is a folder; give a file path")
        if not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    return path


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{secrets.token_hex(4)}{path.suffix}")


def _failure(path: Path, error: BaseException) -> OutputError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return OutputError(f"could not write {path}: {reason or type(error).__name__}; nothing was written under that "
                       "name (is the disk full?)")


@contextlib.contextmanager
def staged_file(path, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block, ``verify(temporary)`` and rename it to ``path``.
    Any failure removes the temporary file, keeps an earlier ``path`` as it was and raises :class:`OutputError`
    (cancellation and other non-``Exception`` errors pass through unchanged)."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        yield temporary
        if verify is not None:
            verify(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, (OSError, ValueError, RuntimeError)) and not isinstance(error, OutputError):
            raise _failure(path, error) from error
        raise


@contextlib.contextmanager
def staged_folder(path, owned: re.Pattern, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; after the block, ``verify(temporary)``, then it becomes
    ``path`` (new folder), or its files replace the ``owned`` files of an existing ``path``."""
    path = Path(path)
    temporary = _temporary_name(path)
    temporary.mkdir()
    try:
        yield temporary
        if verify is not None:
            verify(temporary)
        if path.is_dir():
            for stale in owned_files(path, owned):
                stale.unlink()
            for written in sorted(temporary.iterdir()):
                os.replace(written, path / written.name)
            temporary.rmdir()
        else:
            os.replace(temporary, path)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, (OSError, ValueError, RuntimeError)) and not isinstance(error, OutputError):
            raise _failure(path, error) from error
        raise


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
