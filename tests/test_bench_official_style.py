"""The official-style U-Net step of ``bench/official_style.py`` computes what the pack computes.

It is the baseline of ``bench/bench_unet.py``, so it must be the same function with the official code's
structure: explicit score matrices, the prompt repeated per location, CFG as two calls. Compared in float64
with the pack's batched SDPA call on a tiny U-Net with random motion weights, at a latent large enough that
damped global attention resizes (16 > 12 rows at the top level).
"""
import torch

from bench import _models, official_style


class _CountCalls(torch.overrides.TorchFunctionMode):
    def __init__(self, *names):
        super().__init__()
        self.counts = dict.fromkeys(names, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.counts:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _inputs(frames=3, latent=16, width=32):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 9, frames, latent, latent + 4, generator=generator, dtype=torch.float64)
    positive, negative = torch.randn(2, 1, 77, width, generator=generator, dtype=torch.float64)
    return sample, positive, negative


def test_official_style_step_equals_the_pack_in_float64():
    unet = _models.video_unet(tiny=True, dtype=torch.float64)
    sample, positive, negative = _inputs()
    with torch.no_grad():
        both = unet(torch.cat([sample, sample]), 501, torch.cat([negative, positive]))
        ours = both[0:1] + 14.0 * (both[1:2] - both[0:1])
        with official_style.official_structure(unet), _CountCalls("baddbmm", "scaled_dot_product_attention") as calls:
            official = official_style.guided_noise(unet, sample, 501, negative, positive, 14.0)
    assert calls.counts["scaled_dot_product_attention"] == 0  # no SDPA left anywhere
    # one explicit score matrix per attention layer and U-Net call: the spatial self/cross attentions of the
    # 2-D blocks and the 4 attentions of each of the 21 motion modules
    from diffusers.models.attention_processor import Attention

    spatial = sum(isinstance(m, Attention) for m in unet.unet.modules())
    assert unet.num_motion_modules == 21 and spatial == 32
    assert calls.counts["baddbmm"] == 2 * (spatial + 4 * 21)
    torch.testing.assert_close(official, ours, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # the patch is undone
        again = unet(torch.cat([sample, sample]), 501, torch.cat([negative, positive]))
    assert torch.equal(again, both)
