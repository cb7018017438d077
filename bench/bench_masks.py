"""Masks from text on CPU with FULL-SIZE random-weight models: frames per second at 512x512.

Models: GroundingDINO Swin-T (+ BERT-base, 900 queries) and SAM ViT-B, optionally SAM ViT-H (``--vit-h``).
Compared in one run, on the same frames:

* detection with the caption BERT-encoded once per clip vs once per frame (one frame per forward);
* detection one frame per forward vs the frames batched;
* the SAM image encoder one frame per pass vs the frames batched;
* the whole ``masks_from_text`` (detection + SAM + union) with the default options.

Compared variants run alternately, ``--repeat`` rounds each, and the fastest round is kept, so a change of machine
load during the run does not favour one of them. Random weights make the detections meaningless but the work per frame is the real one (``max_boxes`` caps the SAM
decoder at 20 boxes per frame either way). Run under the shared lock so only one big benchmark runs at a time:

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_masks.py [--frames 2] [--vit-h] [--fast-row]

Prints a table and writes ``bench/results/bench_masks.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bert_folder(root: Path) -> Path:
    """A bert-base-sized WordPiece vocabulary (30522 entries, bert-base-uncased's special ids) + config."""
    from transformers import BertConfig

    words = ["the", "a", "dog", "cat", "person", "car", "on", "left", "right", "red", "big", "and"]
    vocab = [f"[unused{i}]" for i in range(30522)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[1012], vocab[1029] = ".", "?"
    vocab[2000:2000 + len(words)] = words
    folder = root / "bert-base-uncased"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig().to_json_file(str(folder / "config.json"))
    return folder


def _timed(function, repeat: int = 1):
    """(seconds of the fastest of ``repeat`` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def _rss_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    except ImportError:  # pragma: no cover - not on Linux
        return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2, help="frames per measurement (default 2)")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels (default 512)")
    parser.add_argument("--vit-h", action="store_true", help="also time the SAM ViT-H image encoder (2.5 GB)")
    parser.add_argument("--fast-row", action="store_true",
                        help="also time masks_from_text with detection at the frame size instead of 800")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per compared variant, fastest kept (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, SamConfig,
                              SamModel, SamVisionConfig)

    from cococo_core.masks import detect as dino
    from cococo_core.masks import segment
    from cococo_core.masks.loading import Detector, Segmenter
    from cococo_core.masks.text_masks import MaskOptions, masks_from_text

    rows, frames_n = [], args.frames
    frames = torch.rand(frames_n, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    text = "the dog . the person on the left"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = BertTokenizer.from_pretrained(str(_bert_folder(Path(tmp))))
    started = time.perf_counter()
    detector = Detector(GroundingDinoForObjectDetection(GroundingDinoConfig()).eval().requires_grad_(False),
                        tokenizer, "swin_t", "random")
    segmenter = Segmenter(SamModel(SamConfig()).eval().requires_grad_(False), "vit_b", "random")
    print(f"built GroundingDINO Swin-T + SAM ViT-B with random weights in {time.perf_counter() - started:.0f} s",
          flush=True)
    prompt = dino.encode_prompt(tokenizer, text)
    size = dino.detection_size(args.size, args.size, detector.model.config)

    def detect(batch: int, once: bool):
        def run():
            context = dino.text_encoded_once(detector.model) if once else nullcontext()
            with context:
                for start in range(0, frames_n, batch):
                    pixels = dino.preprocess(frames[start:start + batch], size)
                    dino.detect(detector.model, tokenizer, pixels, prompt, (args.size, args.size))
        return run

    def record(stage: str, variant: str, seconds: float, frames: int = frames_n) -> None:
        rows.append({"stage": stage, "variant": variant, "s_per_frame": seconds / frames, "fps": frames / seconds})
        print(rows[-1], flush=True)

    def interleaved(runs: dict) -> dict:
        """Fastest of ``--repeat`` rounds per variant, the variants alternating (load drifts hit all alike)."""
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                best[name] = min(best[name], _timed(run)[0])
        return best

    with torch.no_grad():
        dino.detect(detector.model, tokenizer, dino.preprocess(frames[:1], size), prompt, (args.size, args.size))
        stage = f"GroundingDINO Swin-T @{size[1]}x{size[0]}"
        best = interleaved({"text encoded per frame, 1 frame/forward": detect(1, False),
                            "text encoded once, 1 frame/forward": detect(1, True),
                            f"text encoded once, {frames_n} frames/forward": detect(frames_n, True)})
        for variant, seconds in best.items():
            record(stage, variant, seconds)
        text_inputs = tokenizer(prompt.caption, return_tensors="pt")
        seconds, _ = _timed(lambda: detector.model.model.text_backbone(**text_inputs), repeat=5)
        record(f"BERT-base text encoder ({text_inputs['input_ids'].shape[1]} tokens)", "one call (saved per frame "
               "by encoding once)", seconds, frames=1)

        def embed(model, batch):
            return lambda: segment.image_embeddings(model, frames, batch_size=batch)

        best = interleaved({"1 frame/pass": embed(segmenter.model, 1),
                            f"{frames_n} frames/pass": embed(segmenter.model, frames_n)})
        for variant, seconds in best.items():
            record("SAM ViT-B image encoder @1024", variant, seconds)

        options = MaskOptions(chunk_size=frames_n)
        seconds, result = _timed(lambda: masks_from_text(frames, text, detector, segmenter, options))
        boxes = sum(int(b.shape[0]) for b in result.boxes)
        record("masks_from_text Swin-T + ViT-B (defaults)", f"{boxes} boxes in all", seconds)
        if args.fast_row:
            fast = MaskOptions(chunk_size=frames_n, detection_short_side=args.size)
            seconds, _ = _timed(lambda: masks_from_text(frames, text, detector, segmenter, fast))
            record("masks_from_text Swin-T + ViT-B", f"--detection-size {args.size}", seconds)

        if args.vit_h:
            del segmenter
            vision = SamVisionConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                     global_attn_indexes=[7, 15, 23, 31])
            huge = SamModel(SamConfig(vision_config=vision)).eval().requires_grad_(False)
            seconds, _ = _timed(embed(huge, 1))
            record("SAM ViT-H image encoder @1024", "1 frame/pass", seconds)

    table = ["| stage | variant | s/frame | frames/s |", "|---|---|---:|---:|"]
    table += [f"| {r['stage']} | {r['variant']} | {r['s_per_frame']:.3f} | {r['fps']:.3f} |" for r in rows]
    print("\n".join(table))
    out = ROOT / "bench" / "results" / "bench_masks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out.write_text(json.dumps({
        "frames": frames_n, "size": args.size, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_average": load,
        "peak_rss_gb": _rss_gb(), "rows": rows,
    }, indent=2))
    print(f"wrote {out}; peak RSS {_rss_gb():.1f} GB; load average {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
