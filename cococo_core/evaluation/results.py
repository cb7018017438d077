"""Resumable, shardable result files of an evaluation run, all under one output folder:

* ``parts/part-<rank>.jsonl``: one JSON row per finished video, appended and flushed as each finishes by
  the process of that rank (a row is the commit point: a video with a row is skipped on resume; rows with an
  ``error`` are retried);
* ``features/<file id>.npz``: the video's I3D features (``reference``, ``result``) for VFID, written before
  its row;
* after every process has finished, the main process gathers the parts into ``rows.csv`` / ``rows.json``
  (per video, in dataset order) and ``summary.json`` / ``summary.csv`` (per metric the dataset's value, VFID
  over the dataset; PSNR / SSIM as the mean of the per-video means or over every frame, by the ``average``
  convention; each number with the conventions it used).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np

from ..metrics.conventions import FRAME_AVERAGED, Conventions
from ..metrics.suite import METRICS

ROW_FIELDS = ("id", "video", "prompt", "frames", "width", "height", "flow", "seconds", "error")


def file_id(sample_id: str) -> str:
    """A file-system-safe, collision-free name for a sample id."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:80]
    return f"{clean}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:8]}"


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def prepare(self) -> None:
        (self.folder / "parts").mkdir(parents=True, exist_ok=True)
        (self.folder / "features").mkdir(exist_ok=True)

    def check_settings(self, settings: dict, *, record: bool = True) -> None:
        """Record the run's settings on the first run; refuse to resume a folder made with other settings
        (its rows would mix two experiments)."""
        path = self.folder / "settings.json"
        current = json.loads(json.dumps(settings))
        if not path.is_file():
            if record:
                path.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
            return
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if changed:
            raise ValueError(f"{self.folder} holds results made with other settings ({', '.join(changed)} differ); "
                             "give a new --out folder, or the same options to resume")

    def rows(self) -> dict[str, dict]:
        """The latest row of every id over all part files (a later success replaces an error)."""
        found: dict[str, dict] = {}
        for part in sorted((self.folder / "parts").glob("part-*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    continue
                previous = found.get(row.get("id"))
                if row.get("id") is not None and (previous is None or previous.get("error")):
                    found[row["id"]] = row
        return found

    def finished(self) -> set[str]:
        return {k for k, row in self.rows().items() if not row.get("error")}

    def features_path(self, sample_id: str) -> Path:
        return self.folder / "features" / f"{file_id(sample_id)}.npz"

    def save_features(self, sample_id: str, reference: np.ndarray, result: np.ndarray) -> None:
        path = self.features_path(sample_id)
        temporary = path.with_name(path.stem + ".tmp.npz")
        np.savez(temporary, reference=reference, result=result)
        temporary.replace(path)

    def append(self, rank: int, row: dict) -> None:
        with open(self.folder / "parts" / f"part-{rank}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")
            handle.flush()

    def gather(self, order: list[str], settings: dict, conventions: Conventions = Conventions()) -> dict:
        """Write rows.csv/json and summary.csv/json for the ids in ``order``; returns the summary."""
        found = self.rows()
        rows = [found[i] for i in order if i in found]
        summary = summarize(rows, self, settings, conventions)
        self._write_rows(rows)
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n", encoding="utf-8")
        with open(self.folder / "summary.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "value", "videos", "convention"])
            for key, entry in summary["metrics"].items():
                writer.writerow([METRICS[key][0], _plain(entry["mean"]), entry["videos"], entry["convention"]])
        return summary

    def _write_rows(self, rows: list[dict]) -> None:
        (self.folder / "rows.json").write_text(json.dumps(rows, indent=1, allow_nan=True) + "\n", encoding="utf-8")
        metric_keys = [k for k in METRICS if any(k in row for row in rows)]
        with open(self.folder / "rows.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*ROW_FIELDS, *(METRICS[k][0] for k in metric_keys)])
            for row in rows:
                writer.writerow([_plain(row.get(f)) for f in ROW_FIELDS] + [_plain(row.get(k)) for k in metric_keys])


def _plain(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _dataset_value(key: str, rows: list[dict], conventions: Conventions) -> dict | None:
    """One metric over the videos with a finite value: the mean of the per-video values, or for PSNR / SSIM
    with ``average="frame"`` the mean over every frame (each video's mean weighted by its frame count, which
    is E2FGVI ``evaluate.py``'s ``sum(total_frame_psnr) / len(total_frame_psnr)``)."""
    found = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not found:
        return None
    values = np.array([r[key] for r in found], np.float64)
    if key in FRAME_AVERAGED and conventions.average == "frame":
        frames = np.array([r["frames"] for r in found], np.float64)
        return {"mean": float((values * frames).sum() / frames.sum()), "videos": len(found), "frames": int(frames.sum())}
    return {"mean": float(values.mean()), "videos": len(found)}


def summarize(rows: list[dict], store: ResultStore, settings: dict, conventions: Conventions = Conventions()) -> dict:
    """Per metric the dataset's value (:func:`_dataset_value`); VFID over every video's I3D features. Every
    entry names the conventions its number used."""
    good = [r for r in rows if not r.get("error")]
    metrics = {}
    for key in METRICS:
        entry = _dataset_value(key, good, conventions)
        if entry is not None:
            metrics[key] = entry
    features = [np.load(store.features_path(r["id"])) for r in good if store.features_path(r["id"]).is_file()]
    if len(features) >= 2:
        from ..metrics.video_fid import vfid  # noqa: PLC0415

        metrics["vfid"] = {"mean": vfid(np.stack([f["reference"] for f in features]),
                                        np.stack([f["result"] for f in features])), "videos": len(features)}
    for key, entry in metrics.items():
        if key not in FRAME_AVERAGED:
            entry["average"] = "dataset" if key == "vfid" else "video"
        else:
            entry["average"] = conventions.average
        entry["conventions"] = conventions.of_metric(key)
        entry["convention"] = conventions.describe(key) or "mean of the per-video values"
    flows = sorted({r["flow"] for r in good if r.get("flow")})
    return {"videos": len(good), "failed": len(rows) - len(good), "metrics": metrics,
            "flow_backend": ",".join(flows) or None, "conventions": conventions.as_dict(), "settings": settings}
