"""The CoCoCo motion module against references written straight from the spec (cococo-official.md §1.3-§1.5)."""
import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models
from cococo_core.attention import attention, attention_backend
from cococo_core.models import motion_attention
from cococo_core.models.motion_attention import HEADS, dga_grid
from cococo_core.models.motion_module import MotionModule
from cococo_core.models.position import position_encoding, sinusoidal_encoding

C, TEXT = 32, 24
PE_TOLERANCE = dict(rtol=0, atol=1e-6)  # see the float64 fixture; measured: <= 2e-8


def _module(seed=0, dim=C, text_dim=TEXT):
    torch.manual_seed(seed)
    module = MotionModule(dim, text_dim).eval()
    with torch.no_grad():  # non-trivial norms and a non-zero proj_out
        for name, param in module.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param) if name.endswith("weight") else 0.2 * torch.randn_like(param))
            elif "proj_out" in name:
                param.normal_(0, 0.2)
    return module


def _blocks(module):
    return module.temporal_transformer.transformer_blocks[0]



# ---------------------------------------------------------------- references written from the spec text
def ref_pe(length, dim):
    """pe[p, 2i] = sin(p * 10000^(-2i/C)), pe[p, 2i+1] = cos(...), in float64 with explicit loops."""
    table = torch.zeros(length, dim, dtype=torch.float64)
    for p in range(length):
        for i in range(0, dim, 2):
            angle = p * 10000 ** (-i / dim)
            table[p, i], table[p, i + 1] = math.sin(angle), math.cos(angle)
    return table.float()


def ref_mha(attn, queries, context):
    """8-head softmax(q k^T / sqrt(d)) v with an explicit score matrix, then to_out."""
    q, k, v = queries @ attn.to_q.weight.T, context @ attn.to_k.weight.T, context @ attn.to_v.weight.T
    split = lambda t: t.reshape(*t.shape[:-1], HEADS, -1)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1])
    out = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v).reshape(*queries.shape[:-1], -1)
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def ref_temporal_self(attn, n, frames, pe=True):
    """(b f) d c -> (b d) f c, + PE[0:F] on q, k and v's input, attention over frames, back."""
    bf, d, c = n.shape
    seq = n.reshape(bf // frames, frames, d, c).permute(0, 2, 1, 3).reshape(-1, frames, c)
    if pe:
        seq = seq + ref_pe(frames, c)
    out = ref_mha(attn, seq, seq)
    return out.reshape(bf // frames, d, frames, c).permute(0, 2, 1, 3).reshape(bf, d, c)


def nearest_indices(size_in, size_out):
    """torch's legacy 'nearest': source index floor(dst * in / out)."""
    return [min(int(math.floor(i * (size_in / size_out))), size_in - 1) for i in range(size_out)]


def ref_dga(attn, n, frames, height, width):
    """If H > 12, nearest-resize each frame to (12, int(12/H*W)); flatten (frame, row, col); + 1-D PE over the
    whole sequence; global attention; nearest-resize back."""
    bf, d, c = n.shape
    b = bf // frames
    x = n.reshape(b, frames, height, width, c)
    if height > 12:
        h2, w2 = 12, int(12 / height * width)
        x = x[:, :, nearest_indices(height, h2)][:, :, :, nearest_indices(width, w2)]
    else:
        h2, w2 = height, width
    seq = x.reshape(b, frames * h2 * w2, c) + ref_pe(frames * h2 * w2, c)
    out = ref_mha(attn, seq, seq).reshape(b, frames, h2, w2, c)
    if height > 12:
        out = out[:, :, nearest_indices(h2, height)][:, :, :, nearest_indices(w2, width)]
    return out.reshape(bf, d, c)


def ref_text_cross(attn, n, frames, text):
    """Official layout: (b d) f c queries + PE[0:F], the text repeated per location for K/V."""
    bf, d, c = n.shape
    seq = n.reshape(bf // frames, frames, d, c).permute(0, 2, 1, 3).reshape(-1, frames, c) + ref_pe(frames, c)
    repeated = text.repeat_interleave(d, dim=0)
    out = ref_mha(attn, seq, repeated)
    return out.reshape(bf // frames, d, frames, c).permute(0, 2, 1, 3).reshape(bf, d, c)


def ref_module(module, x, frames, text):
    """x + proj_out(Block(proj_in(GroupNorm32(x) per frame))), Block = 4 pre-LN attentions + GEGLU FF."""
    tt = module.temporal_transformer
    block = _blocks(module)
    bf, c, height, width = x.shape
    h = F.group_norm(x, 32, tt.norm.weight, tt.norm.bias, eps=1e-6).permute(0, 2, 3, 1).reshape(bf, -1, c)
    h = h @ tt.proj_in.weight.T + tt.proj_in.bias
    refs = [
        lambda a, n: ref_temporal_self(a, n, frames),
        lambda a, n: ref_temporal_self(a, n, frames),
        lambda a, n: ref_dga(a, n, frames, height, width),
        lambda a, n: ref_text_cross(a, n, frames, text),
    ]
    for attn, norm, ref in zip(block.attention_blocks, block.norms, refs):
        h = h + ref(attn, F.layer_norm(h, (c,), norm.weight, norm.bias, 1e-5))
    n = F.layer_norm(h, (c,), block.ff_norm.weight, block.ff_norm.bias, 1e-5)
    hidden, gate = (n @ block.ff.net[0].proj.weight.T + block.ff.net[0].proj.bias).chunk(2, -1)
    h = h + (hidden * F.gelu(gate)) @ block.ff.net[2].weight.T + block.ff.net[2].bias
    h = h @ tt.proj_out.weight.T + tt.proj_out.bias
    return h.reshape(bf, height, width, c).permute(0, 3, 1, 2) + x


@pytest.fixture
def float64():
    """Module and reference compute with differently shaped matmuls (per-head loops, explicit score matrices):
    in float32 their rounding differs by CPU (AVX2 / AVX-512 kernels), so they are compared in float64. The one
    float32 step left is the module's position-encoding table (float32 by design, as the official buffer): a few
    float32 ulps of values <= 1 (< 1e-6), passed on through layers of gain ~1, hence ``PE_TOLERANCE``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _tokens(batch, frames, height, width, dim=C, scale=1.0):
    return scale * torch.randn(batch * frames, height * width, dim)


# ---------------------------------------------------------------- position encoding and the DGA grid
def test_position_encoding_values_and_unlimited_length():
    assert torch.allclose(sinusoidal_encoding(100, 16), ref_pe(100, 16), atol=2e-5)
    long = position_encoding(20000, 8, device="cpu", dtype=torch.float32)  # official max 10000
    assert long.shape == (20000, 8) and torch.isfinite(long).all()
    assert torch.equal(long[:100], sinusoidal_encoding(100, 8))  # same values whatever the length


@pytest.mark.parametrize("latent, grid", [((64, 64), (12, 12)), ((45, 80), (12, 21)), ((32, 48), (12, 18)),
                                          ((96, 64), (12, 8)), ((12, 20), (12, 20)), ((8, 8), (8, 8)),
                                          ((13, 13), (12, 12))])
def test_dga_grid(latent, grid):
    assert dga_grid(*latent) == grid


def test_dga_grid_uses_python_float_truncation():
    for height in range(13, 200):
        for width in (1, 7, 13, 45, 64, 80, 97):
            assert dga_grid(height, width) == (12, max(1, int(12 / height * width)))


# ---------------------------------------------------------------- each attention type vs its reference
@pytest.mark.parametrize("height, width", [(16, 20), (8, 6)])  # H > 12 (resized) and H <= 12 (not)
def test_dga_matches_reference(height, width, float64):
    attn = _blocks(_module()).attention_blocks[2]
    n = _tokens(2, 3, height, width)
    out = attn(n, motion_attention.VideoGeometry(3, height, width))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_dga(attn, n, 3, height, width), **PE_TOLERANCE)


def test_temporal_self_matches_reference(float64):
    attn = _blocks(_module()).attention_blocks[0]
    n = _tokens(2, 5, 3, 4)
    out = attn(n, motion_attention.VideoGeometry(5, 3, 4))
    torch.testing.assert_close(out, ref_temporal_self(attn, n, 5), **PE_TOLERANCE)


def test_text_cross_matches_per_token_reference(float64):
    attn = _blocks(_module()).attention_blocks[3]
    assert attn.to_k.weight.shape == (C, TEXT) and attn.to_q.weight.shape == (C, C)
    n, text = _tokens(2, 4, 3, 3), torch.randn(2, 7, TEXT)
    out = attn(n, motion_attention.VideoGeometry(4, 3, 3), text)
    torch.testing.assert_close(out, ref_text_cross(attn, n, 4, text), **PE_TOLERANCE)


def test_whole_module_matches_reference(float64):
    module = _module()
    x, text = torch.randn(2 * 3, C, 14, 10), torch.randn(2, 5, TEXT)
    with torch.no_grad():
        torch.testing.assert_close(module(x, frames=3, text=text), ref_module(module, x, 3, text), **PE_TOLERANCE)


# ---------------------------------------------------------------- frame-permutation behaviour per type
def _permute_frames(t, batch, frames, perm):
    return t.reshape(batch, frames, *t.shape[1:])[:, perm].reshape(t.shape)


@pytest.mark.parametrize("index", [0, 2, 3])  # Temporal_Self, DGA, Temporal_Text_Cross
def test_frame_permutation(index, monkeypatch):
    """Without position encodings every attention type treats the frames as a set (permuting the input frames
    permutes the output the same way); the encodings (on q/k/v for Self and DGA, on q only for TextCross) make
    each of them order-aware."""
    attn = _blocks(_module()).attention_blocks[index]
    batch, frames, height, width = 1, 5, 14, 6
    geometry = motion_attention.VideoGeometry(frames, height, width)
    n, text, perm = _tokens(batch, frames, height, width, scale=3.0), torch.randn(batch, 6, TEXT), [3, 0, 4, 1, 2]

    def permuted_gap():
        out = attn(n, geometry, text)
        out_of_permuted = attn(_permute_frames(n, batch, frames, perm), geometry, text)
        return (out_of_permuted - _permute_frames(out, batch, frames, perm)).abs().max().item()

    assert permuted_gap() > 1e-3  # with the encodings: order matters
    monkeypatch.setattr(motion_attention, "position_encoding",
                        lambda length, dim, device, dtype: torch.zeros(length, dim, device=device, dtype=dtype))
    assert permuted_gap() < 1e-5  # without: permutation-equivariant


def test_text_cross_ignores_text_token_order_and_frames_are_independent():
    attn = _blocks(_module()).attention_blocks[3]
    geometry = motion_attention.VideoGeometry(3, 2, 2)
    n, text = _tokens(1, 3, 2, 2), torch.randn(1, 6, TEXT)
    out = attn(n, geometry, text)
    assert torch.allclose(out, attn(n, geometry, text[:, torch.randperm(6)]), atol=1e-6)
    changed = n.clone()
    changed[2] += 1.0  # only frame 2 changes: frames 0 and 1 do not see it (no attention across frames)
    out2 = attn(changed, geometry, text)
    assert torch.allclose(out[:2], out2[:2]) and not torch.allclose(out[2], out2[2])


def test_temporal_self_keeps_locations_apart_dga_mixes_them():
    block = _blocks(_module())
    geometry = motion_attention.VideoGeometry(3, 4, 4)
    n = _tokens(1, 3, 4, 4)
    changed = n.clone()
    changed[:, 0] += 1.0  # location 0 in every frame
    for index, mixes in ((0, False), (2, True)):
        attn = block.attention_blocks[index]
        delta = (attn(changed, geometry) - attn(n, geometry))[:, 1:].abs().max().item()
        assert (delta > 1e-4) == mixes


# ---------------------------------------------------------------- module-level properties
def test_state_dict_names_are_the_official_ones():
    module = MotionModule(64, 32)
    expected = tiny_models.motion_module_shapes(64, 32)
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert got == expected and len(got) == 40


def test_fresh_module_is_identity():
    module = MotionModule(32, 16)
    x = torch.randn(4, 32, 5, 5)
    assert torch.equal(module(x, frames=2, text=torch.randn(2, 3, 16)), x)


def test_sdpa_and_naive_backends_agree(float64):
    module, x, text = _module(), torch.randn(6, C, 16, 16), torch.randn(2, 5, TEXT)
    with torch.no_grad():
        with attention_backend("naive"):
            naive = module(x, frames=3, text=text)
        with attention_backend("sdpa"):
            sdpa = module(x, frames=3, text=text)
    torch.testing.assert_close(naive, sdpa, rtol=0, atol=1e-10)  # same PE table on both sides


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_has_no_nan(dtype):
    module, x, text = _module(), 20 * torch.randn(6, C, 16, 16), torch.randn(2, 5, TEXT)
    with torch.no_grad():
        full = module(x, frames=3, text=text)
        half = module.to(dtype)(x.to(dtype), frames=3, text=text.to(dtype))
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() / full.abs().max() < 0.05


def test_sdpa_avoids_the_fp16_score_overflow_of_the_official_math():
    """The official fp16 path materialises q·k^T in fp16: past 65504 it is inf and the softmax gives NaN."""
    torch.manual_seed(1)
    q, k, v = 60 * torch.randn(1, 8, 64, 40), 60 * torch.randn(1, 8, 64, 40), torch.randn(1, 8, 64, 40)
    assert (q @ k.transpose(-1, -2)).abs().max() > 65504
    half = [t.half() for t in (q, k, v)]
    assert not torch.isfinite(attention(*half, backend="naive")).all()
    assert torch.isfinite(attention(*half, backend="sdpa")).all()


def test_more_than_64_frames_and_10000_dga_tokens():
    module = _module(dim=32, text_dim=8)
    frames = 70  # official limits: 64 frames (temporal PE), 10000 tokens (DGA PE); 70 * 12 * 12 = 10080
    x, text = torch.randn(frames, 32, 12, 12), torch.randn(1, 4, 8)
    with torch.no_grad():
        out = module(x, frames=frames, text=text)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_bad_inputs_are_refused():
    module = MotionModule(32, 8)
    with pytest.raises(ValueError, match="frames"):
        module(torch.randn(5, 32, 4, 4), frames=2, text=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="prompt"):
        module(torch.randn(4, 32, 4, 4), frames=2, text=None)
    with pytest.raises(ValueError, match="divisible"):
        MotionModule(40, 8)
