"""Training shards: WebDataset-layout tar files with a JSON member index for random access.

Why this format: a prepared video dataset has millions of samples; one file each is slow on every file system and
object store, so samples are packed into tar shards of a few hundred MB that are written and copied sequentially.
The tar layout is WebDataset's (members ``<key>.<ext>``, the members of one sample adjacent), so the shards are
readable by ``webdataset``/``wids`` and plain ``tar``. The training loop needs a MAP-style dataset (exact resume at
a data position, the same order for any number of processes), so each ``<name>.tar`` has a ``<name>.index.json``
listing every sample's members with their byte offset and size: reading sample ``i`` is one seek and one read,
no tar scan, and no extra dependency. A shard counts as written only once its index exists (both are written
under temporary names and renamed), so an interrupted preparation never leaves a half shard that looks complete.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import Mapping

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
        self.partial = path.with_name(path.name + ".partial")
        self._tar = tarfile.open(self.partial, "w")
        self.samples: list[dict] = []

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
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data blocks follow the header
            entry["members"][ext] = [self._tar.offset - padded, len(data)]
        self.samples.append(entry)

    def close(self) -> Path:
        self._tar.close()
        index = index_path(self.path)
        partial_index = index.with_name(index.name + ".partial")
        partial_index.write_text(json.dumps({"format": FORMAT, "shard": self.path.name, "samples": self.samples}),
                                 encoding="utf-8")
        os.replace(self.partial, self.path)
        os.replace(partial_index, index)
        return self.path

    def abort(self) -> None:
        self._tar.close()
        self.partial.unlink(missing_ok=True)


def remove_partial(folder: Path) -> list[Path]:
    """Delete the ``*.partial`` leftovers of an interrupted writer; returns what was removed."""
    removed = sorted(Path(folder).glob("*.partial"))
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
