"""The README's Python example runs as written, with the model paths pointed at tiny models."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tiny_models
from test_masks_tiny import write_dino_both, write_sam_both

from cococo_core.video_io import write_video

ROOT = Path(__file__).resolve().parent.parent


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    code = readme_python_example()
    dino, _, _ = write_dino_both(tmp_path / "dino")
    sam, _, _ = write_sam_both(tmp_path / "sam")
    paths = {
        "models/grounding-dino/grounding-dino-tiny": dino,
        "models/sams/sam-vit-base": sam,
        "models/diffusers/stable-diffusion-v1-5-inpainting": tiny_models.sd_folder(),
        "models/cococo/official": tiny_models.motion_folder(),
    }
    for name, path in paths.items():
        assert f'"{name}"' in code, f"the README example no longer loads {name}"
        code = code.replace(f'"{name}"', repr(str(path)))
    code = code.replace('device="cuda", dtype=torch.float16', 'device="cpu", dtype=torch.float32')
    code = code.replace("num_inference_steps=50", "num_inference_steps=2")
    y, x = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([(x + 4 * t) % 64 * 4, y * 4, (x + y) * 2], -1) for t in range(4)]).astype(np.uint8)
    write_video(tmp_path / "in.mp4", frames, 8)
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    from cococo_core.video_io import read_frames

    out = read_frames(tmp_path / "out.mp4")
    assert out.frames.shape == frames.shape and out.fps == 8
