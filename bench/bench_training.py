"""CoCoCo training on CPU: step time and peak memory of the full-size model, and data-preparation throughput.

Training step: the recipe's model (SD-1.5-inpainting U-Net + 21 motion modules, VAE, CLIP-L text encoder) with
RANDOM weights at full size, one clip of ``--frames`` x 256 x 384 (paper: 16), the recipe's loss (two VAE
encodes, text encoding, U-Net forward) + backward + an optimizer step on the 606 M motion parameters. Cases:
gradient checkpointing off/on x fp32 / bf16 autocast (frozen weights stored in bf16, as the recipe does under
bf16). Each case runs in a fresh process (one warm-up step, then ``--steps`` timed steps); peak memory
is that process's peak RSS, sampled by the parent, which stops a case that exceeds ``--max-rss-gb``.
The optimizer is SGD (no state) so that the fp32 case fits on a small machine; AdamW adds 2 x 4 bytes x 606 M =
4.85 GB of state on top (reported, not allocated).

Data preparation: ``prepare()`` on a synthetic WebVid-layout set (moving shapes, ``--videos`` clips of 64 frames at
96x160) with a tiny random GroundingDINO, with and without PySceneDetect's scene filter: videos per minute.

    timeout 3600 .venv/bin/python bench/bench_training.py [--frames 16] [--steps 1] [--max-rss-gb 10]
    .venv/bin/python bench/bench_training.py --tiny     # the same code on the tiny test models (seconds)

Prints a table and writes ``bench/results/bench_training_<frames>f.json``.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CASES = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
ADAMW_STATE_BYTES_PER_PARAM = 8


def build_model(tiny: bool, precision: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cococo_core.models.sd15 import SD15_INPAINT_UNET_CONFIG
    from cococo_core.models.video_unet import VideoUNet
    from cococo_core.training.cococo.motion_init import kaiming_init_new_layers
    from cococo_core.training.cococo.recipe import CoCoCoTrainModel, freeze_all_but_motion, store_frozen_in

    if tiny:
        import tiny_models

        parts = tiny_models.components()
        unet, vae, text = parts["unet"], parts["vae"], parts["text_encoder"]
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD15_INPAINT_UNET_CONFIG)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768))
    video = VideoUNet(unet)
    kaiming_init_new_layers(video, torch.Generator().manual_seed(0))
    model = CoCoCoTrainModel(video, vae, text, vae_chunk=8)
    if precision == "bf16":
        store_frozen_in(model, torch.bfloat16)
    freeze_all_but_motion(model)
    return model


def child(args) -> None:
    from cococo_core.training.cococo.recipe import CoCoCoRecipe

    torch.set_num_threads(args.threads)
    precision, checkpointing = args.child.split(":")
    model = build_model(args.tiny, precision)
    recipe = CoCoCoRecipe()
    if checkpointing == "1":
        recipe.enable_gradient_checkpointing(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-4)
    height, width = (32, 48) if args.tiny else (256, 384)
    vocab = model.text_encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batch = {"pixels": torch.rand(1, args.frames, 3, height, width, generator=generator),
             "mask": (torch.rand(1, args.frames, 1, height, width, generator=generator) > 0.5).float(),
             "ids": torch.randint(0, vocab, (1, 77), generator=generator), "sample_seeds": torch.tensor([1])}

    def step() -> float:
        steps, noise, posterior = recipe.draw(batch["sample_seeds"], args.frames, (height // 8, width // 8))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            prediction = model(batch["pixels"], batch["mask"], batch["ids"], steps, noise, posterior)
            loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"case": args.child, "seconds": min(times), "peak_rss_gb": peak,
                      "motion_params": sum(p.numel() for p in trained)}))


def rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_case(case: str, args) -> dict:
    command = [sys.executable, __file__, "--child", case, "--frames", str(args.frames), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    peak, over = 0.0, False
    while process.poll() is None:
        peak = max(peak, rss_gb(process.pid))
        if peak > args.max_rss_gb:
            process.kill()
            over = True
            break
        time.sleep(0.2)
    out, err = process.communicate()
    if over:
        return {"case": case, "seconds": None, "peak_rss_gb": peak, "note": f"stopped above {args.max_rss_gb} GB"}
    if process.returncode != 0:
        return {"case": case, "seconds": None, "peak_rss_gb": peak, "note": err.strip().splitlines()[-1][:200]}
    return json.loads(out.strip().splitlines()[-1])


def data_preparation(videos: int) -> list[dict]:
    from test_masks_tiny import shared_files
    from training_data import write_webvid

    from cococo_core.masks import load_detector
    from cococo_core.training.cococo.prepare import PrepareOptions, prepare

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        csv = write_webvid(root, good=videos, frames=64, height=96, width=160)
        detector = load_detector(shared_files("dino")[0])
        for scene_filter in (True, False):
            out = root / f"shards-{scene_filter}"
            summary = prepare(PrepareOptions(csv=str(csv), video_root=str(root / "videos"), output=str(out),
                                             scene_filter=scene_filter, min_frames=16, max_frames=16,
                                             detection_size=(96, 160)), detector)
            run = summary["this_run"]
            rows.append({"scene_filter": scene_filter, "videos": run["seen"], "written": run["written"],
                         "seconds": run["seconds"], "videos_per_minute": run["videos_per_minute"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (0: time the first step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-rss-gb", type=float, default=10.0)
    parser.add_argument("--videos", type=int, default=8, help="videos for the data-preparation measurement")
    parser.add_argument("--cases", default=",".join(f"{p}:{int(c)}" for p, c in CASES),
                        help="precision:checkpointing list, e.g. fp32:1,bf16:1")
    parser.add_argument("--tiny", action="store_true", help="tiny test models at 32x48 (checks the script)")
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    rows = [run_case(case, args) for case in args.cases.split(",") if case]
    size = "32x48 (tiny models)" if args.tiny else "256x384"
    print(f"\ntraining step, {args.frames} frames x {size}, batch 1, CPU {args.threads} threads, SGD (AdamW: "
          f"+{ADAMW_STATE_BYTES_PER_PARAM} B per motion parameter)\n")
    print("| precision | gradient checkpointing | step s | peak RSS GB | note |\n|---|---|---:|---:|---|" if rows else "")
    for row in rows:
        precision, checkpointing = row["case"].split(":")
        seconds = f"{row['seconds']:.1f}" if row.get("seconds") is not None else "-"
        print(f"| {precision} | {'on' if checkpointing == '1' else 'off'} | {seconds} | {row['peak_rss_gb']:.2f} "
              f"| {row.get('note', '')} |")
    data = [] if args.skip_data else data_preparation(args.videos)
    if data:
        print("\n| data preparation (tiny GroundingDINO, 64-frame 96x160 clips) | videos read | written | s "
              "| videos/min |\n|---|---:|---:|---:|---:|")
        for row in data:
            print(f"| scene filter {'on' if row['scene_filter'] else 'off'} | {row['videos']} | {row['written']} "
                  f"| {row['seconds']:.1f} | {row['videos_per_minute']:.1f} |")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = f"bench_training{'_tiny' if args.tiny else ''}_{args.frames}f.json" if rows else "bench_training_data.json"
    (results / name).write_text(json.dumps({"frames": args.frames, "threads": args.threads, "training": rows,
                                            "data_preparation": data}, indent=1))


if __name__ == "__main__":
    main()
