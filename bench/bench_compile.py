"""``torch.compile`` (Inductor) vs eager for the CoCoCo video U-Net on CPU: compile time, step time, agreement.

One model (random full-size weights, or ``--tiny``), compiled in place the way ``CoCoCoPipeline(compile_unet=True)``
does it (:func:`cococo_core.models.compilation.compile_unet`). In one run:

* the graph-break count of the whole U-Net call (``torch._dynamo.explain``, after one eager step has filled the
  position-encoding cache);
* the first compiled guided step (both CFG halves batched, B = 2) at ``--size`` x ``--frames``: compilation plus
  one step; compile time ≈ first call − steady compiled step;
* ``--repeat`` alternated rounds of one eager and one compiled guided step (fastest kept, wall and CPU seconds);
* agreement: rel-L2 of the compiled step's output against the eager one (same inputs).

Writes ``bench/results/bench_compile.json``. Run alone (~7-8 GB at full size):

    flock /tmp/cococo-bench.lock timeout 3600 .venv/bin/python bench/bench_compile.py --threads 1 --size 128
    .venv/bin/python bench/bench_compile.py --tiny     # tiny model: checks the script
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve a busy CPU
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _models  # noqa: E402
from bench.bench_bf16 import _inputs, _timed, rel_l2  # noqa: E402
from cococo_core.models.compilation import compile_unavailable_reason, compile_unet  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402


@contextlib.contextmanager
def eager(unet):
    """Run ``unet`` (compiled in place) uncompiled inside the block."""
    inner = unet.unet
    compiled, inner._compiled_call_impl = inner._compiled_call_impl, None
    try:
        yield unet
    finally:
        inner._compiled_call_impl = compiled


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="alternated timing rounds (default 3)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--mode", help="torch.compile mode (default: Inductor's default)")
    parser.add_argument("--layout-optimization", action="store_true",
                        help="keep Inductor's channels-last layout optimisation (compile_unet turns it off on CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_compile.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reason = compile_unavailable_reason("cpu")
    if reason:
        print(f"cannot compile here: {reason}")
        return 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}",
          flush=True)
    unet = _models.video_unet(tiny=args.tiny)
    weights_gib = peak_rss_gib()
    noise, masked, mask, prompt, negative = _inputs(args.frames, args.size // 8, _models.text_width(args.tiny))
    step = lambda: denoise(unet, noise, masked, mask, prompt, negative, 1, 14.0)  # noqa: E731

    with torch.no_grad():
        reference, eager_first_s, _ = _timed(step)  # also fills the position-encoding cache
        sample = torch.cat([noise, mask, masked], 1).repeat(2, 1, 1, 1, 1)
        explained = torch._dynamo.explain(unet)(sample, 999, prompt.repeat(2, 1, 1))
        breaks = dict(graphs=explained.graph_count, graph_breaks=explained.graph_break_count,
                      reasons=[str(b.reason) for b in explained.break_reasons])
        print(f"dynamo: {breaks['graphs']} graph(s), {breaks['graph_breaks']} graph break(s)", flush=True)
        torch._dynamo.reset()

        options = {"mode": args.mode} if args.mode else {}
        if args.layout_optimization:
            options["options"] = {"layout_optimization": True}
        compile_unet(unet, **options)
        compiled_out, first_s, first_cpu_s = _timed(step)
        print(f"first compiled step (compile + run): {first_s:.1f} s wall, {first_cpu_s:.1f} s CPU", flush=True)
        timing = {name: dict(step_s=float("inf"), step_cpu_s=float("inf")) for name in ("eager", "compiled")}
        for round_ in range(args.repeat):
            for name in timing:
                with eager(unet) if name == "eager" else contextlib.nullcontext():
                    _, wall, cpu = _timed(step)
                row = timing[name]
                row.update(step_s=min(row["step_s"], wall), step_cpu_s=min(row["step_cpu_s"], cpu))
                print(f"  round {round_ + 1} {name}: guided step {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    compile_s = first_s - timing["compiled"]["step_s"]
    compile_cpu_s = first_cpu_s - timing["compiled"]["step_cpu_s"]
    agreement = rel_l2(compiled_out, reference)
    ratios = {key: timing["compiled"][key] / timing["eager"][key] for key in timing["eager"]}
    peak = peak_rss_gib()
    print(f"\n{args.size}² x {args.frames} frames, guided step (B = 2), fp32, {torch.get_num_threads()} thread(s)")
    print("| variant | step wall (s) | step CPU (s) |\n|---|---:|---:|")
    for name, row in timing.items():
        print(f"| {name} | {row['step_s']:.2f} | {row['step_cpu_s']:.2f} |")
    print(f"| compiled / eager | {ratios['step_s']:.2f} | {ratios['step_cpu_s']:.2f} |")
    print(f"\ncompile time ≈ {compile_s:.1f} s wall, {compile_cpu_s:.1f} s CPU (first compiled step minus a steady "
          f"one); rel-L2 compiled vs eager output {agreement:.2e}; peak RSS {peak:.2f} GiB "
          f"(after building the model {weights_gib:.2f} GiB)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), tiny=args.tiny,
                                   size=args.size, frames=args.frames, mode=args.mode,
                                   layout_optimization=args.layout_optimization, dynamo=breaks,
                                   eager_first_step_s=eager_first_s, compiled_first_step_s=first_s,
                                   compiled_first_step_cpu_s=first_cpu_s, compile_s=compile_s,
                                   compile_cpu_s=compile_cpu_s, timing=timing, ratios=ratios,
                                   rel_l2_compiled_vs_eager=agreement, peak_rss_gib=peak,
                                   rss_after_build_gib=weights_gib), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
