"""Working memory of the video U-Net: no token-by-token score matrix, and frame-chunked execution."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import _models, official_style
from cococo_core.models.chunking import per_frame_layers


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


def test_frame_chunks_give_the_same_result():
    """Equal in float64 to 1e-12 (float32 differs in the last bits only because MKL computes the small
    (B·F, 1280) time-embedding GEMM of the resnets with another kernel for fewer rows)."""
    unet = _models.video_unet(tiny=True, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 9, 5, 16, 12, generator=generator, dtype=torch.float64)  # DGA resizes (16 > 12 rows)
    text = torch.randn(2, 77, 32, generator=generator, dtype=torch.float64)
    timestep = torch.tensor([500, 20])
    with torch.no_grad():
        whole = unet(sample, timestep, text)
        for chunk in (1, 3, 4, 10):  # one frame, chunks straddling the two videos, uneven, larger than B·F
            unet.frame_chunk = chunk
            torch.testing.assert_close(unet(sample, timestep, text), whole, rtol=1e-12, atol=1e-12)
        unet.frame_chunk = 10  # a chunk of all B·F frames is the unchunked path
        assert torch.equal(unet(sample, timestep, text), whole)
        unet.frame_chunk = None
        assert torch.equal(unet(sample, timestep, text), whole)
    layers = per_frame_layers(unet.unet)
    # 22 resnets, 16 spatial transformers, 3 down- and 3 upsamplers; one feed-forward per motion module
    assert len(layers) == 22 + 16 + 6 + 21
    assert not any("forward" in layer.__dict__ for layer in layers)  # unwrapped again


def test_frame_chunks_run_smaller_batches_and_bad_values_are_refused():
    unet = _models.video_unet(tiny=True)
    seen = []
    layer = per_frame_layers(unet.unet)[0].norm1  # inside the first resnet
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    unet.frame_chunk = 4
    with torch.no_grad():
        unet(torch.randn(2, 9, 5, 8, 8), 500, torch.randn(2, 77, 32))
    handle.remove()
    assert seen == [4, 4, 2]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="frame_chunk"):
            unet.frame_chunk = bad
    assert unet.frame_chunk == 4
    plain = unet.release()
    assert not any("forward" in m.__dict__ for m in plain.modules())
