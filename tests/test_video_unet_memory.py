"""Working memory of the video U-Net: no token-by-token score matrix, and frame-chunked execution."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import _models, official_style


class _SquareOutputs(TorchDispatchMode):
    """Records the ops that produce a tensor whose last two dims are (L, L) with L >= ``tokens``."""

    def __init__(self, tokens):
        super().__init__()
        self.tokens, self.found = tokens, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                rows, cols = tensor.shape[-2:]
                if rows == cols >= self.tokens:
                    self.found.append((str(func), tuple(tensor.shape)))
        return out


def test_no_score_matrix_over_the_spatial_tokens_is_materialised():
    unet = _models.video_unet(tiny=True)
    latent = 32  # 1024 spatial tokens per frame at the top level
    sample = torch.randn(2, 9, 2, latent, latent)
    text = torch.randn(2, 77, 32)
    with torch.no_grad(), _SquareOutputs(latent * latent) as ours:
        unet(sample, 500, text)
    assert ours.found == []
    # the detector sees the (batch·heads, 1024, 1024) matrices of the explicit-score structure
    with torch.no_grad(), official_style.official_structure(unet), _SquareOutputs(latent * latent) as official:
        unet(sample, 500, text)
    assert (2 * 2 * 8, latent * latent, latent * latent) in {shape for _, shape in official.found}
