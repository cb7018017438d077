"""Reading and writing videos, image sequences and masks for the inpainting commands.

Sources (all read as RGB uint8 (F, H, W, 3)):

* a video file: .mp4 .m4v .mov .mkv .avi .webm (ffmpeg from the ``imageio-ffmpeg`` wheel, no system
  ffmpeg) or an animated .gif (Pillow);
* a folder of images (.png .jpg .jpeg .bmp .webp .tif .tiff), in natural order (``f2`` before ``f10``);
* a glob pattern of images, e.g. ``frames/*.png`` (expanded in Python, never by a shell);
* a single image (one frame).

Frames are picked as ``start, start + stride, ...`` up to ``max_frames``; the frame rate of a video
is kept (divided by ``stride``, so the clip plays at its real speed). Masks come from the same kinds of
source: luminance in [0, 1], binarized at ``threshold`` (``None`` keeps the grey levels as a soft mask); a mask
image drawn only in its alpha channel is read from the alpha, transparent = fill (ComfyUI's Load Image rule).
An image that cannot be decoded (truncated, corrupt) is an error naming the file.

Writing: .mp4/.m4v/.mov/.mkv (H.264, yuv420p; yuv444p when a side is odd, which 4:2:0 cannot hold),
.webm (VP9), .gif (Pillow; frame durations are whole 1/100 s, so its fps is approximate), or a folder
(``frame_00000.png`` ...) for any path without a suffix.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import output_files
from .output_files import owned_files, staged_file, staged_folder

logger = logging.getLogger(__name__)

FFMPEG_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"}
GIF_SUFFIXES = {".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
GLOB_CHARACTERS = set("*?[")


@dataclass
class Clip:
    """RGB uint8 frames (F, H, W, 3) and their frame rate (None for image sequences)."""

    frames: np.ndarray
    fps: float | None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _image_files(source: str) -> list[Path] | None:
    """The images a folder / glob pattern / image path names, or None for a video file."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder {source}")
        return sorted(files, key=_natural_key)
    if path.exists():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [path]
        if path.suffix.lower() in FFMPEG_SUFFIXES | GIF_SUFFIXES:
            return None
        raise ValueError(f"{source}: unsupported file type {path.suffix!r}; use a video "
                         f"({', '.join(sorted(FFMPEG_SUFFIXES | GIF_SUFFIXES))}), an image folder or an image pattern")
    if GLOB_CHARACTERS & set(source):
        files = [Path(p) for p in glob.glob(source) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"the pattern {source} matches no image files")
        return sorted(files, key=_natural_key)
    raise FileNotFoundError(f"no such video, image folder or image: {source}")


def _picked(index: int, start: int, stride: int) -> bool:
    return index >= start and (index - start) % stride == 0


def _rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.dtype != np.uint8:
        raise ValueError(f"only 8-bit frames are supported, got {frame.dtype}")
    return np.ascontiguousarray(frame[..., :3])


def _iter_video(path: str) -> tuple[Iterator[np.ndarray], float | None, object]:
    import imageio.v2 as iio  # noqa: PLC0415 - optional at import time

    if Path(path).suffix.lower() in GIF_SUFFIXES:
        import imageio.v3 as iio3  # noqa: PLC0415

        duration = iio3.immeta(path).get("duration")
        fps = 1000.0 / duration if duration else None
        return iio3.imiter(path), fps, None
    try:
        reader = iio.get_reader(path, format="FFMPEG")
    except Exception as error:  # imageio raises OSError/RuntimeError variants for unreadable files
        raise ValueError(f"cannot read the video {path}: {error}") from error
    fps = reader.get_meta_data().get("fps")
    return reader.iter_data(), (float(fps) if fps and math.isfinite(fps) else None), reader


def announced_frames(reader) -> int | None:
    """Frames the container announces (its duration times its frame rate), or None when it does not say."""
    meta = reader.get_meta_data()
    duration, fps = meta.get("duration"), meta.get("fps")
    if not duration or not fps or not math.isfinite(duration) or not math.isfinite(fps):
        return None
    return int(round(duration * fps))


def _warn_if_truncated(source: str, reader, decoded: int) -> None:
    """Warn when fewer frames decode than the container announces (a truncated or damaged file)."""
    announced = announced_frames(reader)
    if announced is not None and decoded < announced - max(1, announced // 50):
        logger.warning("%s: the file announces %d frames (%.3g s) but only %d could be decoded; it is truncated or "
                       "damaged, so frames are missing from the end. Re-encode or download it again, or pass "
                       "--max-frames to use only the frames that decode", source, announced,
                       reader.get_meta_data()["duration"], decoded)


def _check_selection(stride: int, start: int, max_frames: int | None) -> None:
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    if start < 0:
        raise ValueError(f"start frame must be >= 0, got {start}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def _read_image(file: Path, mode: str) -> np.ndarray:
    """One image file as ``mode`` ("RGB" or "RGBA": opaque where it has no alpha); errors name the file."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(file) as image:
            return np.asarray(image.convert(mode))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read the image {file}: {error}") from None


def read_frames(source: str | os.PathLike, *, stride: int = 1, start: int = 0, max_frames: int | None = None) -> Clip:
    """Read RGB frames from a video, image folder, glob pattern or image (see the module docstring)."""
    return _read_clip(source, stride=stride, start=start, max_frames=max_frames, mode="RGB")


def _read_clip(source, *, stride: int, start: int, max_frames: int | None, mode: str) -> Clip:
    """:func:`read_frames`; ``mode="RGBA"`` keeps the alpha of image files (videos come back opaque)."""
    _check_selection(stride, start, max_frames)
    source = os.fspath(source)
    files = _image_files(source)
    frames: list[np.ndarray] = []
    if files is not None:
        chosen = [f for i, f in enumerate(files) if _picked(i, start, stride)][:max_frames]
        for file in chosen:
            frames.append(_read_image(file, mode))
        fps = None
    else:
        iterator, fps, reader = _iter_video(source)
        try:
            decoded, complete = 0, True
            for index, frame in enumerate(iterator):
                if max_frames is not None and len(frames) >= max_frames:
                    complete = False
                    break
                decoded = index + 1
                if _picked(index, start, stride):
                    rgb = _rgb(np.asarray(frame))
                    frames.append(rgb if mode == "RGB" else np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
            if complete and reader is not None:
                _warn_if_truncated(source, reader, decoded)
        finally:
            if reader is not None:
                reader.close()
        fps = fps / stride if fps else None
    if not frames:
        raise ValueError(f"{source} has no frames at start={start}, stride={stride}")
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"the frames of {source} differ in size: {sorted(sizes)}")
    return Clip(np.stack(frames), fps)


def read_mask(source: str | os.PathLike, *, stride: int = 1, start: int = 0, max_frames: int | None = None,
              threshold: float | None = 0.5) -> np.ndarray:
    """float32 (F, H, W) mask in [0, 1] (1 = fill) from the luminance of a video / image sequence;
    binarized at ``threshold`` (luminance >= threshold), or the grey levels when ``threshold`` is None.

    A mask image whose colours give an empty mask but which has transparent pixels (a mask drawn only in
    the alpha channel) is read from its alpha as ComfyUI's Load Image reads it: 1 − alpha, transparent = fill,
    with a warning; where colours and transparency both mark regions, the colours are used and a warning
    says the alpha was ignored."""
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"mask threshold must be in [0, 1], got {threshold}")
    rgba = _read_clip(source, stride=stride, start=start, max_frames=max_frames, mode="RGBA").frames
    luma = (rgba[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
    masks = _levels(luma, threshold)
    transparent = 1.0 - rgba[..., 3].astype(np.float32) / 255.0
    drawn_in_alpha = [i for i in range(len(masks)) if not masks[i].any() and transparent[i].any()]
    if drawn_in_alpha:
        masks[drawn_in_alpha] = _levels(transparent[drawn_in_alpha], threshold)
        logger.warning("%s: %d mask frame(s) are empty in colour but have transparent pixels; they were read from "
                       "the alpha channel, transparent = fill, as ComfyUI's Load Image does",
                       source, len(drawn_in_alpha))
    ignored = sum(1 for i in range(len(masks)) if i not in drawn_in_alpha and transparent[i].any())
    if ignored:
        logger.warning("%s: %d mask frame(s) have transparent pixels that were ignored: the mask is read from "
                       "their colours (white = fill); save the mask without transparency to silence this",
                       source, ignored)
    return masks


def _levels(values: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return np.clip(values, 0, 1).astype(np.float32)
    return (values >= threshold).astype(np.float32)


FRAME_FILE = re.compile(r"frame_\d{5,}\.png")  # the files a PNG-folder output is made of


def write_video(path: str | os.PathLike, frames, fps: float = 12.0, *, crf: int | None = None,
                overwrite: bool = False, inputs=()) -> Path:
    """Write (F, H, W, 3) uint8 (or float in [0, 1]) frames; the format follows the suffix (module docstring).
    ``crf``: H.264/VP9 constant rate factor (default 18 for H.264, 30 for VP9; lower = better).

    Written through :mod:`cococo_core.output_files`: under a unique staging name, re-opened and its frames counted,
    then given its name in one step (a PNG folder is swapped as a whole). An existing output needs ``overwrite``,
    checked again at that step; a path that is one of ``inputs`` is always refused."""
    path = check_output(path, fps, overwrite=overwrite, inputs=inputs)
    frames = _as_uint8(frames)
    suffix = path.suffix.lower()
    if suffix == "":
        with staged_folder(path, FRAME_FILE, lambda folder: _verify_folder(folder, len(frames)),
                           overwrite=overwrite) as folder:
            from PIL import Image  # noqa: PLC0415

            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"frame_{index:05d}.png")
        return path
    with staged_file(path, lambda written: _verify_video(written, len(frames), fps), overwrite=overwrite) as temporary:
        if suffix in GIF_SUFFIXES:
            import imageio.v2 as iio  # noqa: PLC0415

            iio.mimsave(temporary, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        else:
            _write_ffmpeg(temporary, frames, fps, crf)
    return path


def check_output(path: str | os.PathLike, fps: float = 12.0, *, overwrite: bool = False, inputs=()) -> Path:
    """Raise before any work if ``write_video(path, ..., fps)`` could not or may not write there."""
    path = Path(path)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if path.suffix and path.suffix.lower() not in FFMPEG_SUFFIXES | GIF_SUFFIXES:
        raise ValueError(f"cannot write {path}: use a video suffix ({', '.join(sorted(FFMPEG_SUFFIXES | GIF_SUFFIXES))}) "
                         "or a folder path without a suffix for PNG frames")
    return output_files.check_output(path, inputs=inputs, overwrite=overwrite, folder=not path.suffix,
                                     owned=FRAME_FILE)


def count_frames(path: str | os.PathLike) -> int:
    """Frames a written video holds (decoded packets for ffmpeg formats, stored images for GIF)."""
    path = Path(path)
    if path.suffix.lower() in GIF_SUFFIXES:
        return len(_gif_durations(path))
    import imageio_ffmpeg  # noqa: PLC0415

    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{path} cannot be read back: {error}") from error


def _gif_durations(path: Path) -> list[int]:
    """The display time (ms) of every image stored in a GIF, each one decoded."""
    from PIL import Image  # noqa: PLC0415

    durations = []
    with Image.open(path) as image:
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
            durations.append(int(image.info.get("duration", 0)))
    return durations


def _verify_video(path: Path, expected: int, fps: float) -> None:
    if path.suffix.lower() not in GIF_SUFFIXES:
        found = count_frames(path)
        if found != expected:
            raise ValueError(f"wrote {expected} frames but the file reads back {found}")
        return
    # Pillow stores identical consecutive frames once with their durations added, and durations are whole
    # centiseconds: check the total play time instead of the image count
    per_frame = sum(_gif_durations(path)) / expected
    low, high = math.floor(100 / fps) * 10, math.ceil(100 / fps) * 10
    if not low - 0.5 <= per_frame <= high + 0.5:
        raise ValueError(f"wrote {expected} frames of {1000 / fps:.4g} ms but the GIF plays {per_frame:.4g} ms per "
                         "frame: frames are missing")


def _verify_folder(folder: Path, expected: int) -> None:
    from PIL import Image  # noqa: PLC0415

    files = owned_files(folder, FRAME_FILE)
    if len(files) != expected:
        raise ValueError(f"wrote {expected} frames but the folder holds {len(files)}")
    for file in files:
        with Image.open(file) as image:
            image.verify()


def _write_ffmpeg(path: Path, frames: np.ndarray, fps: float, crf: int | None) -> None:
    import imageio.v2 as iio  # noqa: PLC0415

    height, width = frames.shape[1:3]
    vp9 = path.suffix.lower() == ".webm"
    pixel_format = "yuv420p"
    if height % 2 or width % 2:
        pixel_format = "yuv444p"
        logger.warning("%dx%d has an odd side: writing 4:4:4 video, which some players cannot show", width, height)
    crf = crf if crf is not None else (30 if vp9 else 18)
    options = ["-crf", str(crf)] + (["-b:v", "0"] if vp9 else [])
    writer = iio.get_writer(path, format="FFMPEG", fps=fps, codec="libvpx-vp9" if vp9 else "libx264",
                            pixelformat=pixel_format, macro_block_size=1, quality=None, output_params=options)
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _as_uint8(frames) -> np.ndarray:
    """(F, H, W, 3) uint8 array from uint8 frames or floats in [0, 1] (rounded, as an image file stores them)."""
    array = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (frames, height, width, 3) array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got {array.dtype}")
    return np.ascontiguousarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


as_uint8 = _as_uint8  # public name, for other modules
