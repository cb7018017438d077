"""Loading a full-size SD-1.5-inpainting single-file checkpoint on CPU: ours vs the classic route, one run.

* ours: ``cococo_core.checkpoints.load_sd_components`` (modules built on the meta device, every key checked,
  the file's tensors copied into the modules in the stored dtype);
* classic: build the modules with random initialisation on the CPU, ``load_state_dict``, then ``.half()``.

The benchmark writes its own file first: random fp16 weights with the real LDM key names and shapes
(U-Net 9 channels + VAE + CLIP-L text encoder, 2.13 GB). Each variant runs in a fresh process, alternating,
``--repeats`` times; peak memory is the process's peak RSS (which includes the file's reclaimable page cache).

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_checkpoints.py [--workdir DIR] [--repeats 2]

Prints a table and writes ``bench/results/bench_checkpoints.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_checkpoint(path: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768))
    generator = torch.Generator().manual_seed(0)
    components = {
        name: {k: (torch.randn(v.shape, generator=generator) * 0.02).half() for k, v in module.state_dict().items()}
        for name, module in (("unet", unet), ("vae", vae), ("text_encoder", clip))
    }
    save_file(diffusers_to_ldm(components), str(path))


def ours(path: Path) -> int:
    from cococo_core.checkpoints import load_sd_components

    parts = load_sd_components(path, components=("unet", "vae", "text_encoder"))
    return sum(p.numel() for m in (parts.unet, parts.vae, parts.text_encoder) for p in m.parameters())


def classic(path: Path) -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cococo_core.checkpoints import load_sd_state

    state = load_sd_state(path)
    modules = {
        "unet": UNet2DConditionModel.from_config(state.configs["unet"]),
        "vae": AutoencoderKL.from_config(state.configs["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**state.configs["text_encoder"])),
    }
    for name, module in modules.items():
        result = module.load_state_dict(state[name], strict=False)
        assert not result.missing_keys and not result.unexpected_keys, name
        module.half()
    return sum(p.numel() for m in modules.values() for p in m.parameters())


VARIANTS = {"ours": ours, "classic": classic}


def child(variant: str, path: Path) -> None:
    import diffusers  # noqa: F401 - imports stay outside the timing
    import transformers  # noqa: F401

    import cococo_core.checkpoints.base  # noqa: F401

    start = time.perf_counter()
    params = VARIANTS[variant](path)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_gb": peak, "params": params}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the 2.1 GB checkpoint is written (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.file)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        path = Path(scratch) / "sd15-inpainting-random-fp16.safetensors"
        start = time.perf_counter()
        write_checkpoint(path)
        print(f"wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")
        rows = []
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                command = [sys.executable, __file__, "--child", variant, "--file", str(path), "--threads", str(args.threads)]
                out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
                rows.append({"repeat": repeat + 1, **json.loads(out.stdout.strip().splitlines()[-1])})
    print("\n| variant | repeat | seconds | peak RSS GB |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['repeat']} | {row['seconds']:.1f} | {row['peak_rss_gb']:.2f} |")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "bench_checkpoints.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
