"""The CoCoCo video U-Net and its motion-module attention on CPU: time and peak memory, ours vs official-style.

Two parts, each comparing in the same run:

1. The FULL-SIZE video U-Net (SD-1.5-inpainting config + 21 motion modules, random weights, fp32),
   B videos x F frames at a given resolution:
   * ours: torch SDPA everywhere (motion modules through ``cococo_core.attention``, diffusers' SDPA processor);
   * official-style: explicit score matrices everywhere (``naive`` motion attention + diffusers' classic
     ``AttnProcessor``, i.e. baddbmm + softmax as diffusers 0.11.1 computes it in the official code).
2. One attention layer of the motion module at the top level (C=320, the largest token counts) on
   (B·F, H·W, C) tokens: temporal-only (Temporal_Self), damped global attention (DGA), full 3-D attention over
   all F·H·W tokens; each with SDPA and with the explicit score matrix. Configurations whose score matrix or
   FLOPs would not fit this machine are skipped with the estimate printed instead.

Times are wall seconds and process CPU seconds (the tables use CPU seconds, which other processes competing
for the cores disturb less). Peak memory = the highest resident set size sampled (every ~2 ms) during the call, minus the RSS before it.
Run under the shared lock so only one big benchmark runs at a time:

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_unet.py [--frames 8] [--size 256] [--quick]

Prints tables and writes ``bench/results/bench_unet.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve a busy CPU
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _models, official_style  # noqa: E402
from cococo_core.attention import attention_backend  # noqa: E402
from cococo_core.models.motion_attention import (  # noqa: E402
    DampedGlobalAttention,
    TemporalSelfAttention,
    VideoGeometry,
    dga_grid,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1024**3


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the resident set size in a thread while the ``with`` block runs (torch releases the GIL)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_gib(self) -> float:
        return (self.peak - self.start) / GIB


def _measure(function, repeat: int):
    """(best wall seconds, best process CPU seconds, peak extra GiB over the runs). CPU seconds are less
    sensitive than wall time to other processes competing for the cores."""
    best, best_cpu, peak = float("inf"), float("inf"), 0.0
    for _ in range(repeat):
        with torch.no_grad(), PeakRSS() as memory:
            started, started_cpu = time.perf_counter(), time.process_time()
            function()
            best = min(best, time.perf_counter() - started)
            best_cpu = min(best_cpu, time.process_time() - started_cpu)
        peak = max(peak, memory.extra_gib)
    return best, best_cpu, peak


# ---------------------------------------------------------------------------------------------- full U-Net
def _guided_variants(video, sample, text, frame_chunk: int, with_official: bool = True, only=()):
    """One guided denoising step's U-Net work (CFG g = 14), per variant: name -> (setup context, function)."""
    negative, positive = text[:1], text[1:]
    both_text = torch.cat([negative, positive])

    def ours_batched():
        both = video(torch.cat([sample, sample]), 500, both_text)
        return both[:1] + 14.0 * (both[1:] - both[:1])

    def ours_chunked():
        video.frame_chunk = frame_chunk
        try:
            return ours_batched()
        finally:
            video.frame_chunk = None

    def two_calls():
        return official_style.guided_noise(video, sample, 500, negative, positive, 14.0)

    def two_calls_chunked():
        video.frame_chunk = frame_chunk
        try:
            return two_calls()
        finally:
            video.frame_chunk = None

    variants = {
        "ours: SDPA, CFG batched (1 call, B=2)": (contextlib.nullcontext, ours_batched),
        f"ours: SDPA, CFG batched, frame_chunk={frame_chunk}": (contextlib.nullcontext, ours_chunked),
        "ours: SDPA, CFG split (2 calls, B=1)": (contextlib.nullcontext, two_calls),
        f"ours: SDPA, CFG split, frame_chunk={frame_chunk}": (contextlib.nullcontext, two_calls_chunked),
        "official-style: explicit scores, text K/V per location, CFG 2 calls": (
            lambda: official_style.official_structure(video), two_calls),
    }
    if not with_official:
        variants = {name: v for name, v in variants.items() if not name.startswith("official")}
    if only:
        variants = {name: v for word in only for name, v in variants.items() if word in name}
    return variants


def bench_full_unet(batch: int, frames: int, size: int, repeat: int, frame_chunk: int = 4,
                    with_official: bool = True, only=()) -> list[dict]:
    """One guided step (both CFG halves) of the full-size U-Net per variant; the variants alternate within each
    round, the fastest round and the highest peak are kept."""
    started = time.perf_counter()
    video = _models.video_unet()
    params = sum(p.numel() for p in video.parameters())
    print(f"built the full-size video U-Net: {params / 1e6:.1f} M params, {video.num_motion_modules} motion modules, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if batch != 2:
        print("  (the guided step always has the 2 CFG halves; --batch is ignored here)")
    latent = size // 8
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 9, frames, latent, latent, generator=generator)
    text = torch.randn(2, 77, 768, generator=generator)
    variants = _guided_variants(video, sample, text, frame_chunk, with_official, only)
    with torch.no_grad():  # warm-up (first-call allocations, kernel selection)
        video(sample[:, :, :1], 500, text[:1])
    best = {name: dict(seconds=float("inf"), cpu_seconds=float("inf"), peak_extra_gib=0.0) for name in variants}
    for round_ in range(repeat):
        for name, (context, function) in variants.items():
            with context():
                seconds, cpu, peak = _measure(function, 1)
            row = best[name]
            row.update(seconds=min(row["seconds"], seconds), cpu_seconds=min(row["cpu_seconds"], cpu),
                       peak_extra_gib=max(row["peak_extra_gib"], peak))
            print(f"  round {round_ + 1}: {name:70s} {seconds:7.2f} s wall  {cpu:7.2f} s CPU  peak +{peak:5.2f} GiB",
                  flush=True)
    return [dict(variant=name, batch=2, frames=frames, size=size, **row) for name, row in best.items()]


# ---------------------------------------------------------------------------------------------- attention layer
def _tokens_of(kind: str, frames: int, height: int, width: int) -> int:
    if kind == "temporal":
        return frames
    if kind == "dga":
        grid = dga_grid(height, width)
        return frames * grid[0] * grid[1]
    return frames * height * width


def _cost(kind: str, batch: int, frames: int, height: int, width: int, dim: int):
    """(score-matrix GiB of the explicit variant, attention GFLOP) for one layer call."""
    length = _tokens_of(kind, frames, height, width)
    sequences = batch * (height * width if kind == "temporal" else 1)
    scores = sequences * 8 * length * length * 4 / GIB
    flops = 4 * sequences * length * length * dim / 1e9
    return scores, flops


def _layer(kind: str, dim: int):
    if kind == "temporal":
        return TemporalSelfAttention(dim)
    layer = DampedGlobalAttention(dim)
    if kind == "full3d":
        layer.damped_height = None
    return layer


def bench_layers(batch: int, dim: int, shapes, repeat: int, max_scores_gib: float, max_gflop: float) -> list[dict]:
    rows = []
    for latent, frames in shapes:
        hidden = torch.randn(batch * frames, latent * latent, dim)
        geometry = VideoGeometry(frames, latent, latent)
        for kind in ("temporal", "dga", "full3d"):
            layer = _layer(kind, dim).eval()
            scores, gflop = _cost(kind, batch, frames, latent, latent, dim)
            for backend in ("sdpa", "naive"):
                row = dict(latent=latent, frames=frames, kind=kind, backend=backend,
                           tokens=_tokens_of(kind, frames, latent, latent), scores_gib=scores, gflop=gflop)
                too_big = gflop > max_gflop or (backend == "naive" and 2 * scores > max_scores_gib)
                if too_big:
                    row.update(seconds=None, cpu_seconds=None, peak_extra_gib=None, skipped=True)
                else:
                    with attention_backend(backend):
                        seconds, cpu, peak = _measure(lambda: layer(hidden, geometry), repeat)
                    row.update(seconds=seconds, cpu_seconds=cpu, peak_extra_gib=peak, skipped=False)
                rows.append(row)
                shown = ("skipped" if too_big else
                         f"{row['seconds']:8.3f} s  {row['cpu_seconds']:8.3f} s CPU  +{row['peak_extra_gib']:6.2f} GiB")
                print(f"  {latent:3d}x{latent:<3d} F={frames:<3d} {kind:8s} {backend:5s} tokens/seq {row['tokens']:6d}  "
                      f"scores {scores:7.2f} GiB  {gflop:8.1f} GFLOP  {shown}")
    return rows


def _table_full(rows) -> str:
    base = next((r for r in rows if r["variant"].startswith("official")), rows[0])
    lines = [f"| variant (one guided step) | F, size | wall (s) | CPU (s) | peak extra RAM (GiB) | wall / {base['variant'][:8]} | "
             f"CPU / {base['variant'][:8]} | memory / {base['variant'][:8]} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['frames']}, {r['size']}x{r['size']} | {r['seconds']:.2f} | "
                     f"{r['cpu_seconds']:.2f} | {r['peak_extra_gib']:.2f} | {r['seconds'] / base['seconds']:.2f} | "
                     f"{r['cpu_seconds'] / base['cpu_seconds']:.2f} | "
                     f"{r['peak_extra_gib'] / max(base['peak_extra_gib'], 1e-9):.2f} |")
    return "\n".join(lines)


def _fmt(row, key, pattern):
    return "—" if row.get("skipped") else pattern.format(row[key])


def _table_layers(rows) -> str:
    lines = ["| latent | F | attention | tokens per sequence | score matrix (GiB) | SDPA CPU (s) | SDPA peak (GiB) | "
             "explicit CPU (s) | explicit peak (GiB) | explicit / SDPA CPU time | CPU time vs DGA (SDPA) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    index = {(r["latent"], r["frames"], r["kind"], r["backend"]): r for r in rows}
    for (latent, frames, kind, backend), sdpa in index.items():
        if backend != "sdpa":
            continue
        naive = index[(latent, frames, kind, "naive")]
        dga = index[(latent, frames, "dga", "sdpa")]
        ratio = ("—" if sdpa.get("skipped") or naive.get("skipped") else
                 f"{naive['cpu_seconds'] / sdpa['cpu_seconds']:.2f}x")
        vs_dga = ("—" if sdpa.get("skipped") or dga.get("skipped") else f"{sdpa['cpu_seconds'] / dga['cpu_seconds']:.2f}x")
        lines.append(
            f"| {latent}x{latent} | {frames} | {kind} | {sdpa['tokens']} | {sdpa['scores_gib']:.2f} | "
            f"{_fmt(sdpa, 'cpu_seconds', '{:.3f}')} | {_fmt(sdpa, 'peak_extra_gib', '{:.2f}')} | "
            f"{_fmt(naive, 'cpu_seconds', '{:.3f}')} | {_fmt(naive, 'peak_extra_gib', '{:.2f}')} | {ratio} | {vs_dga} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="videos per U-Net call (default 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video for the full U-Net (default 8)")
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels for the full U-Net (default 256)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per configuration, best is kept (default 1; attention layers at least 2)")
    parser.add_argument("--quick", action="store_true", help="small layer shapes only and no full U-Net (smoke run)")
    parser.add_argument("--skip-unet", action="store_true", help="only the attention-layer table")
    parser.add_argument("--frame-chunk", type=int, default=4, help="frame_chunk of the chunked variant (default 4)")
    parser.add_argument("--no-official", action="store_true",
                        help="leave out the official-style variant (it runs out of memory at 512x512 x 16 frames)")
    parser.add_argument("--variants", nargs="+", default=(), metavar="WORD",
                        help="run only the U-Net variants whose name contains one of these words, in this order")
    parser.add_argument("--skip-layers", action="store_true", help="only the full U-Net table")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy machine)")
    parser.add_argument("--max-scores-gib", type=float, default=6.0,
                        help="skip explicit-score runs whose score matrix + softmax copy exceed this (default 6)")
    parser.add_argument("--max-gflop", type=float, default=400.0, help="skip layer runs above this many GFLOP")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "bench_unet.json"), help="JSON file")
    args = parser.parse_args(argv)

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                device="cpu", dtype="float32")
    print(f"torch {info['torch']}, {info['threads']} threads, CPU fp32")
    results = dict(info=info)
    shapes = [(16, 8), (32, 8)] if args.quick else [(16, 8), (32, 8), (32, 16), (64, 8), (64, 16)]
    print("\nOne motion attention layer (C=320, batch %d):" % args.batch)
    results["layers"] = [] if args.skip_layers else bench_layers(args.batch, 320, shapes, max(2, args.repeat),
                                                                 args.max_scores_gib, args.max_gflop)
    if not (args.quick or args.skip_unet):
        print(f"\nFull-size video U-Net, B={args.batch}, F={args.frames}, {args.size}x{args.size}:")
        results["full_unet"] = bench_full_unet(args.batch, args.frames, args.size, args.repeat, args.frame_chunk,
                                               not args.no_official, args.variants)
        print("\n" + _table_full(results["full_unet"]))
    if results["layers"]:
        print("\n" + _table_layers(results["layers"]))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
