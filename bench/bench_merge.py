"""Benchmark: full-size SD-1.5 task-vector merge, streaming (this pack) vs load-everything, in one run.

Writes three random-weight fp16 single files with the real SD-1.5 / SD-1.5-inpainting key layout and
shapes (1131 tensors, ~2.1 GB each; C ~ N(0, 0.02), inpaint/personal = C + N(0, 0.002)) plus a rank-32
kohya LoRA on every attention / FF / text-encoder layer, then runs each strategy in its own subprocess
and records wall time and peak memory of that process:

* streaming: ``cococo_core.personalize.save_merged`` (safe_open per tensor, fp32 math per tensor,
  incremental safetensors writer);
* load-everything: ``safetensors.torch.load_file`` x3, the same per-key fp32 formula into a dict,
  ``save_file`` (what a straightforward script does);
* streaming + LoRA: the streaming merge with the LoRA added at strength 0.8.

Peak RSS is VmHWM of the child (includes page cache mapped from the model files); peak anonymous
memory is RssAnon sampled every 20 ms (the memory the process itself allocated). The input files are
read once before each run so that every strategy starts with them in the page cache. Run it alone:

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_merge.py [--workdir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def sd15_shapes(in_channels: int) -> dict:
    """LDM key -> shape of a full SD-1.5 single file, from the diffusers / transformers modules built on meta."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm

    with torch.device("meta"):
        components = {
            "unet": UNet2DConditionModel(in_channels=in_channels, cross_attention_dim=768, attention_head_dim=8),
            "vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        }
    states = {name: module.state_dict() for name, module in components.items()}
    return {key: tuple(t.shape) for key, t in diffusers_to_ldm(states).items()}


def _seed(key: str, salt: int) -> int:
    return zlib.crc32(f"{key}#{salt}".encode()) & 0x7FFFFFFF


def write_model(path: Path, shapes: dict, noise_salt: int | None) -> None:
    """C ~ N(0, 0.02) per key (the same for every file), plus N(0, 0.002) noise for inpaint/personal."""
    from cococo_core.personalize.safetensors_stream import SafetensorsStreamWriter

    entries = [(k, torch.int64 if k.endswith("position_ids") else torch.float16, s) for k, s in shapes.items()]
    with SafetensorsStreamWriter(path, entries, {"format": "pt"}) as writer:
        for key, dtype, shape in entries:
            if dtype == torch.int64:
                writer.write(key, torch.arange(shape[1], dtype=torch.int64)[None])
                continue
            base_shape = (shape[0], 4, *shape[2:]) if key.endswith("input_blocks.0.0.weight") else shape
            c = torch.randn(base_shape, generator=torch.Generator().manual_seed(_seed(key, 0))) * 0.02
            if base_shape != shape:
                c = torch.cat([c, torch.randn(shape[0], shape[1] - 4, *shape[2:]) * 0.02], 1)
            if noise_salt is not None:
                c += torch.randn(shape, generator=torch.Generator().manual_seed(_seed(key, noise_salt))) * 0.002
            writer.write(key, c.half())


def write_lora(path: Path, shapes: dict, rank: int = 32) -> int:
    """kohya LoRA (LDM-named UNet modules, lora_te_ text modules) on every attention / FF / proj layer."""
    from safetensors.torch import save_file

    state, gen = {}, torch.Generator().manual_seed(7)
    for key, shape in shapes.items():
        unet = key.startswith("model.diffusion_model.") and ("transformer_blocks" in key or ".proj_" in key)
        text = key.startswith("cond_stage_model.") and ("self_attn" in key or ".mlp." in key)
        if not (unet or text) or not key.endswith(".weight") or len(shape) < 2:
            continue
        module = key[: -len(".weight")]
        name = ("lora_unet_" + module[len("model.diffusion_model."):].replace(".", "_") if unet else
                "lora_te_" + module[len("cond_stage_model.transformer."):].replace(".", "_"))
        extra = shape[2:]
        state[f"{name}.lora_down.weight"] = (torch.randn(rank, shape[1], *extra, generator=gen) * 0.01).half()
        state[f"{name}.lora_up.weight"] = (torch.randn(shape[0], rank, *[1] * len(extra), generator=gen) * 0.01).half()
        state[f"{name}.alpha"] = torch.tensor(float(rank // 2))
    save_file(state, str(path))
    return len(state) // 3


# ----------------------------------------------------------------------------- children
class _AnonSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        while not self.stop:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.02)


def _hwm() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child_streaming(work: Path, out: Path, lora: bool) -> None:
    from cococo_core.personalize import LoraSpec, MergeRecipe, save_merged

    recipe = MergeRecipe(inpaint=work / "inpaint.safetensors", base=work / "base.safetensors",
                         personal=work / "personal.safetensors", alpha=0.8, beta=1.2,
                         loras=[LoraSpec(work / "lora.safetensors", 0.8)] if lora else [])
    save_merged(recipe, out)


def child_baseline(work: Path, out: Path) -> None:
    """Load everything, merge per key with the same formula (fp32), save_file."""
    from safetensors.torch import load_file, save_file

    base, inp, pers = (load_file(str(work / f"{n}.safetensors")) for n in ("base", "inpaint", "personal"))
    merged = {}
    alpha, beta = 0.8, 1.2
    for key, a in inp.items():
        if not a.is_floating_point():
            merged[key] = a
            continue
        c, b = base[key].float(), pers[key].float()
        padded = torch.zeros(a.shape) if c.shape != a.shape else None
        if padded is not None:
            padded[:, : c.shape[1]] = c
        cp = c if padded is None else padded
        out_t = cp + alpha * (a.float() - cp)
        tau = b - c
        if padded is not None:
            tau = torch.cat([tau, torch.zeros(a.shape[0], a.shape[1] - c.shape[1], *a.shape[2:])], 1)
        merged[key] = (out_t + beta * tau).to(a.dtype)
    save_file(merged, str(out))


def run_child(mode: str, work: Path) -> dict:
    sampler = _AnonSampler()
    sampler.start()
    out = work / f"out-{mode}.safetensors"
    start = time.perf_counter()
    if mode == "baseline":
        child_baseline(work, out)
    else:
        child_streaming(work, out, lora=mode == "streaming+lora")
    wall = time.perf_counter() - start
    sampler.stop = True
    sampler.join()
    return {"mode": mode, "wall_s": wall, "peak_rss_bytes": _hwm(), "peak_anon_bytes": sampler.peak,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- parent
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to write the ~6.5 GB of models (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models for another run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.workdir)))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cococo-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < 14e9:
        print(f"need ~14 GB free in {work}, found {free / 1e9:.1f} GB", file=sys.stderr)
        return 1
    try:
        start = time.perf_counter()
        shapes9, shapes4 = sd15_shapes(9), sd15_shapes(4)
        for name, shapes, salt in (("base", shapes4, None), ("inpaint", shapes9, 1), ("personal", shapes4, 2)):
            if not (work / f"{name}.safetensors").exists():
                write_model(work / f"{name}.safetensors", shapes, salt)
        modules = write_lora(work / "lora.safetensors", shapes4) if not (work / "lora.safetensors").exists() else None
        print(f"generated inputs in {time.perf_counter() - start:.0f}s ({len(shapes9)} tensors per model"
              + (f", LoRA with {modules} modules" if modules else "") + ")", flush=True)
        results = []
        for mode in ("streaming", "baseline", "streaming+lora"):
            _warm(work)  # every run starts with the inputs in the page cache (no cold-read advantage either way)
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--workdir", str(work)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {mode}: {results[-1]['wall_s']:.1f}s", flush=True)
        same = _files_equal(work / "out-streaming.safetensors", work / "out-baseline.safetensors")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    gb = 1e9
    streaming = results[0]
    baseline = results[1]
    print("\n| strategy | wall s | time vs load-everything | peak RSS GB | peak anon GB | anon vs load-everything |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {r['wall_s'] / baseline['wall_s']:.2f}x | "
              f"{r['peak_rss_bytes'] / gb:.2f} | {r['peak_anon_bytes'] / gb:.2f} | "
              f"{r['peak_anon_bytes'] / baseline['peak_anon_bytes']:.2f}x |")
    print(f"\nstreaming output == load-everything output (all tensors): {same}; "
          f"time ratio streaming / load-everything = {streaming['wall_s'] / results[1]['wall_s']:.2f}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "merge.json").write_text(json.dumps({"results": results, "outputs_equal": same,
                                                    "cpu_count": os.cpu_count()}, indent=2))
    return 0


def _warm(work: Path) -> None:
    for name in ("base", "inpaint", "personal", "lora"):
        with open(work / f"{name}.safetensors", "rb") as handle:
            while handle.read(64 << 20):
                pass


def _files_equal(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


if __name__ == "__main__":
    sys.exit(main())
