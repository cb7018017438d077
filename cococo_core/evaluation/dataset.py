"""Evaluation datasets: which videos, masks, prompts and ground truths to evaluate.

Three layouts:

* **a CSV file** (e.g. WebVid's ``results_10M_val.csv``), one row per video. The video is the ``video``
  column (a path relative to the CSV's folder or to ``video_root``), or WebVid's ``videoid`` (+ ``page_dir``)
  giving ``video_root/[page_dir/]videoid.mp4``. The prompt is the ``prompt`` column, else WebVid's ``name``
  (the caption). Optional columns: ``id`` (default ``videoid`` or the video's file stem), ``mask`` (a mask
  video / image folder / image), ``target`` (the ground truth result, e.g. the video without the object).
* **a ROVI JSON file** (LGVI's ``test.json`` / ``train.json``, ``jianzongwu/rovi``), read by the same field map
  as LGVI training (:func:`cococo_core.training.lgvi.data.read_rovi`): one sample per removed object, the
  prompt its referring expression, the target its inpainted video, the mask its removal mask; paths relative
  to ``video_root`` (default the JSON's folder). The id is the target's path below that folder without its
  suffix (unique per object; a ``--results`` folder holds ``<id>.mp4`` or ``<id>/``).
* **a folder** with ``videos/`` (video files or frame folders, one per sample; the id is the stem), and
  optionally ``masks/<id>.*`` or ``masks/<id>/``, ``targets/<id>.*`` (ground truths) and the prompts in
  ``prompts.json`` (``{"<id>": "prompt"}``) or ``prompts.csv`` (columns ``id,prompt``).

Paths are only opened as files; every path must stay inside the dataset's folder (or ``video_root``).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..video_io import FFMPEG_SUFFIXES, GIF_SUFFIXES, IMAGE_SUFFIXES

VIDEO_SUFFIXES = FFMPEG_SUFFIXES | GIF_SUFFIXES


@dataclass(frozen=True)
class Sample:
    id: str
    video: Path
    prompt: str | None = None
    mask: Path | None = None
    target: Path | None = None


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{what} {relative!r} points outside {root}")
    return path


def _media(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` as a frame folder or a video/image file with any known suffix."""
    if (folder / stem).is_dir():
        return folder / stem
    for suffix in sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]


def _from_csv(path: Path, video_root: Path | None) -> list[Sample]:
    root = video_root or path.parent
    samples = []
    for number, row in enumerate(_read_csv(path), start=2):
        if row.get("video"):
            video = _inside(root, row["video"], "video")
        elif row.get("videoid"):
            folder = _inside(root, row.get("page_dir") or ".", "page_dir")
            video = _inside(folder, f"{row['videoid']}.mp4", "videoid")
        else:
            raise ValueError(f"{path}, line {number}: no 'video' or 'videoid' column value")
        sample_id = row.get("id") or row.get("videoid") or video.stem
        samples.append(Sample(
            sample_id, video, row.get("prompt") or row.get("name") or None,
            _inside(path.parent, row["mask"], "mask") if row.get("mask") else None,
            _inside(path.parent, row["target"], "target") if row.get("target") else None,
        ))
    return samples


def _from_rovi(path: Path, video_root: Path | None) -> list[Sample]:
    from ..training.lgvi.data import read_rovi  # noqa: PLC0415

    root = (video_root or path.parent).resolve()
    samples = []
    for record in read_rovi(path, root):
        video = _inside(root, record.video, "video")
        target = _inside(root, record.target, "target")
        mask = _inside(root, record.mask, "mask") if record.mask else None
        sample_id = target.relative_to(root).with_suffix("").as_posix()
        samples.append(Sample(sample_id, video, record.expression, mask, target))
    return samples


def _prompts(folder: Path) -> dict[str, str]:
    if (folder / "prompts.json").is_file():
        data = json.loads((folder / "prompts.json").read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{folder / 'prompts.json'} must map ids to prompts")
        return {str(k): str(v) for k, v in data.items()}
    if (folder / "prompts.csv").is_file():
        return {row["id"]: row["prompt"] for row in _read_csv(folder / "prompts.csv") if row.get("id")}
    return {}


def _from_folder(folder: Path) -> list[Sample]:
    videos = folder / "videos"
    if not videos.is_dir():
        raise FileNotFoundError(f"{folder}: a dataset folder needs a videos/ subfolder (or give a CSV file)")
    prompts = _prompts(folder)
    samples = []
    for entry in sorted(videos.iterdir()):
        if entry.name.startswith(".") or not (entry.is_dir() or entry.suffix.lower() in VIDEO_SUFFIXES):
            continue
        stem = entry.name if entry.is_dir() else entry.stem
        samples.append(Sample(stem, entry, prompts.get(stem), _media(folder / "masks", stem),
                              _media(folder / "targets", stem)))
    return samples


def read_dataset(path: str | os.PathLike, *, video_root: str | os.PathLike | None = None) -> list[Sample]:
    """The samples of a CSV file or dataset folder (module docstring), in file order; ids must be unique."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        samples = _from_csv(path, Path(video_root) if video_root else None)
    elif path.is_file() and path.suffix.lower() == ".json":
        samples = _from_rovi(path, Path(video_root) if video_root else None)
    elif path.is_dir():
        samples = _from_folder(path)
    else:
        raise FileNotFoundError(f"dataset not found (a .csv file, a ROVI .json file or a folder with videos/): {path}")
    if not samples:
        raise ValueError(f"the dataset {path} lists no videos")
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"the dataset {path} lists the id {sample.id!r} twice")
        seen.add(sample.id)
    return samples
