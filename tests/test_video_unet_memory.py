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


def test_fp32_sampling_makes_no_float64_tensor():
    """No float64/float32 round trip in the sampler: every tensor of an fp32 denoise stays fp32 (or integer)."""
    from cococo_core.pipeline.sampler import denoise

    class _Float64(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
                   for t in (out if isinstance(out, (tuple, list)) else (out,))):
                self.ops.add(str(func))
            return out

    unet = _models.video_unet(tiny=True)
    noise = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad(), _Float64() as seen:
        denoise(unet, noise, noise, torch.zeros(1, 1, 3, 8, 8), torch.randn(1, 77, 32), torch.randn(1, 77, 32), 2, 14.0)
    assert seen.ops == set()


def test_fused_position_encoding_adds_match_the_unfused_formula():
    """The permute + PE add written in one pass equals the copy-then-add it replaced, bit for bit."""
    from cococo_core.models.motion_attention import _with_encoding
    from cococo_core.models.position import sinusoidal_encoding

    hidden = torch.randn(2 * 3, 20, 16)  # (b f) d c
    view = hidden.view(2, 3, 20, 16).transpose(1, 2)
    expected = view.reshape(40, 3, 16) + sinusoidal_encoding(3, 16)
    assert torch.equal(_with_encoding(view, 2).view(40, 3, 16), expected)
    planes = torch.randn(6, 16, 4, 5).permute(0, 2, 3, 1)  # (b f) h w c
    expected = planes.reshape(2, 60, 16) + sinusoidal_encoding(60, 16)
    assert torch.equal(_with_encoding(planes.view(2, 3, 4, 5, 16), 1, 4).view(2, 60, 16), expected)
    grads = view.clone().requires_grad_()
    assert torch.equal(_with_encoding(grads, 2).detach().view(40, 3, 16), _with_encoding(view, 2).view(40, 3, 16))
