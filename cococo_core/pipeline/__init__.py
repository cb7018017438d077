"""CoCoCo inpainting pipeline: conditioning, DDIM + CFG sampler with context windows, paste-back."""
from .ddim import ddim_schedule, ddim_step
from .pipeline import CoCoCoPipeline
from .sampler import denoise, dga_tokens_per_frame, max_window_frames, resolve_context

__all__ = ["CoCoCoPipeline", "ddim_schedule", "ddim_step", "denoise", "dga_tokens_per_frame", "max_window_frames",
           "resolve_context"]
