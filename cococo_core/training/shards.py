"""Training shards: WebDataset-layout tar files with a JSON member index for random access.

Why this format: a prepared video dataset has millions of samples; one file each is slow on every file system and
object store, so samples are packed into tar shards of a few hundred MB that are written and copied sequentially.
The tar layout is WebDataset's (members ``<key>.<ext>``, the members of one sample adjacent), so the shards are
readable by ``webdataset``/``wids`` and plain ``tar``. The training loop needs a MAP-style dataset (exact resume at
a data position, the same order for any number of processes), so each ``<name>.tar`` has a ``<name>.index.json``
listing every sample's members with their byte offset and size: reading sample ``i`` is one seek and one read,
no tar scan, and no extra dependency. A shard counts as written only once its index exists (both are written
under unique staging names and renamed without replacing, :mod:`cococo_core.output_files`), so an interrupted
preparation never leaves a half shard that looks complete, and two writers of one shard never blend.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import Mapping

from ..output_files import StagedFile, cleanup_on_error, write_json

INDEX_SUFFIX = ".index.json"
FORMAT = "cococo-shard-1"


def index_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(".tar")] + INDEX_SUFFIX)


class ShardWriter:
    """Writes samples ``{ext: bytes}`` into ``<folder>/<name>.tar`` (+ index) on :meth:`close`."""

    def __init__(self, path: Path):
        if path.suffix != ".tar":
            raise ValueError(f"a shard file name ends in .tar, got {path.name}")
        if path.exists() or index_path(path).exists():
            raise FileExistsError(f"{path} exists already; shards are never overwritten")
        self.path = path
        self.samples: list[dict] = []
        self._file = None
        self._staged = StagedFile(path)
        with cleanup_on_error(path, self.abort):
            self._file = os.fdopen(self._staged.create(), "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def size(self) -> int:
        return self._tar.fileobj.tell()

    def write(self, key: str, members: Mapping[str, bytes], meta: Mapping | None = None) -> None:
        """Add one sample; ``meta`` (small JSON values) goes into the index, e.g. for dataset statistics."""
        if "." in key or "/" in key:
            raise ValueError(f"a sample key may not contain '.' or '/': {key!r}")
        entry = {"key": key, "members": {}, **({"meta": dict(meta)} if meta else {})}
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            with cleanup_on_error(self.path, self.abort):  # a full disk names the shard
                self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data blocks follow the header
            entry["members"][ext] = [self._tar.offset - padded, len(data)]
        self.samples.append(entry)

    def close(self) -> Path:
        with cleanup_on_error(self.path, self.abort):
            self._tar.close()
            self._file.close()
            self._staged.commit()
        write_json(index_path(self.path), {"format": FORMAT, "shard": self.path.name, "samples": self.samples})
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._tar.close()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._staged.discard()


def remove_partial(folder: Path, prefix: str = "") -> list[Path]:
    """Delete the leftovers of interrupted writers whose shard names start with ``prefix`` (staging files
    ``.<name>.partial-*``, and ``<name>.partial`` from earlier versions); returns what was removed."""
    folder = Path(folder)
    removed = sorted({*folder.glob(f"{prefix}*.partial"), *folder.glob(f".{prefix}*.partial-*")})
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def complete_shards(folder: Path) -> list[Path]:
    """The finished shards of a folder (those with an index), in name order."""
    return sorted(p for p in Path(folder).glob("*.tar") if index_path(p).is_file())


class ShardReader:
    """Random access to every sample of the finished shards under ``folder`` (or of a list of shard files)."""

    def __init__(self, source: str | os.PathLike | list):
        shards = [Path(p) for p in source] if isinstance(source, list) else complete_shards(Path(source))
        if not shards:
            raise FileNotFoundError(f"no prepared shards (*.tar with {INDEX_SUFFIX}) in {source}; run prepare-data first")
        self.shards = shards
        self.entries: list[list[dict]] = []
        self.starts: list[int] = []
        total = 0
        for shard in shards:
            data = json.loads(index_path(shard).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"{index_path(shard)} is not a {FORMAT} index")
            self.starts.append(total)
            self.entries.append(data["samples"])
            total += len(data["samples"])
        self.total = total
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.total

    def meta(self, index: int) -> dict:
        return self.locate(index)[1].get("meta", {})

    def keys(self) -> list[str]:
        return [entry["key"] for entries in self.entries for entry in entries]

    def locate(self, index: int) -> tuple[int, dict]:
        if not 0 <= index < self.total:
            raise IndexError(f"sample {index} of {self.total}")
        shard = bisect_right(self.starts, index) - 1
        return shard, self.entries[shard][index - self.starts[shard]]

    def read(self, index: int, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """``{ext: bytes}`` of sample ``index`` (only ``exts`` when given)."""
        shard, entry = self.locate(index)
        if os.getpid() != self._pid:  # data-loader workers: own file handles
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 - kept open for reuse
        out = {}
        for ext, (offset, size) in entry["members"].items():
            if exts is None or ext in exts:
                handle.seek(offset)
                out[ext] = handle.read(size)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
