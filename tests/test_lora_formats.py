"""LoRA-family deltas (checkpoint-formats.md §6 items 9-18) on the tiny SD-1.5 models with real key names.

Every formula is checked against an independent construction (composed convolutions, explicit
Kronecker blocks, norms), and every file layout against the kohya file built from the same factors.
"""
import pytest
import torch
import torch.nn.functional as F

import tiny_models
from cococo_core.personalize import LoraSpec, MergePlan, MergeRecipe
from cococo_core.personalize import lora_delta



ATTN = "down_blocks.0.attentions.0.transformer_blocks.0."
Q = ATTN + "attn1.to_q.weight"
CONV = "down_blocks.0.resnets.0.conv1.weight"
PROJ_IN = "down_blocks.0.attentions.0.proj_in.weight"
TE_Q = "encoder.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def models():
    return {"inpaint": tiny_models.component_state(9, 1), "base": tiny_models.component_state(4, 0)}


def g(seed):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0):
    return torch.randn(shape, generator=g(seed))


def delta_of(models, lora, key, component="unet", strength=1.0, metadata=None, beta=1.0):
    """θ − θ_inpaint in float32 for one weight after merging ``lora`` (α = 1: no base needed)."""
    recipe = MergeRecipe(inpaint=models["inpaint"], base=models["base"],
                         loras=[LoraSpec(lora, strength, metadata=metadata)], beta=beta)
    with MergePlan(recipe, dtype=torch.float32) as plan:
        return plan.compute(component, key) - models["inpaint"][component][key].float(), plan.report


def kohya_linear(rank=4, alpha=2.0, name="lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"):
    up, down = rand(32, rank, seed=1), rand(rank, 32, seed=2)
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}
    if alpha is not None:
        state[f"{name}.alpha"] = torch.tensor(alpha)
    return state, up, down


def test_kohya_linear_scale_strength_and_missing_or_zero_alpha(models):
    state, up, down = kohya_linear(rank=4, alpha=2.0)
    delta, report = delta_of(models, state, Q)
    torch.testing.assert_close(delta, 0.5 * up @ down, rtol=1e-5, atol=1e-5)
    assert report.lora_modules[next(iter(report.lora_modules))] == {"unet": 1}
    delta3, _ = delta_of(models, state, Q, strength=0.3)
    torch.testing.assert_close(delta3, 0.3 * 0.5 * up @ down, rtol=1e-5, atol=1e-5)
    for alpha in (None, 0.0):  # kohya semantics: no alpha or alpha 0 -> alpha = rank -> scale 1
        state, up, down = kohya_linear(rank=4, alpha=alpha)
        torch.testing.assert_close(delta_of(models, state, Q)[0], up @ down, rtol=1e-5, atol=1e-5)


def test_ldm_named_kohya_equals_diffusers_named(models):
    state, _, _ = kohya_linear()
    ldm, _, _ = kohya_linear(name="lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q")
    assert torch.equal(delta_of(models, state, Q)[0], delta_of(models, ldm, Q)[0])


def test_conv_3x3_locon_equals_composed_convolutions(models):
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    up, down = rand(32, 4, 1, 1, seed=3), rand(4, 32, 3, 3, seed=4)
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(4.0)}
    delta, _ = delta_of(models, state, CONV)
    x = rand(1, 32, 6, 6, seed=5)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), F.conv2d(F.conv2d(x, down, padding=1), up), rtol=1e-4, atol=1e-4)


def test_conv_1x1_proj_in_with_4d_factors(models):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    up, down = rand(32, 8, 1, 1, seed=6), rand(8, 32, 1, 1, seed=7)
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(2.0)}
    delta, _ = delta_of(models, state, PROJ_IN)
    expected = (up[:, :, 0, 0] @ down[:, :, 0, 0] * 2.0 / 8)[:, :, None, None]
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-5)


def test_locon_tucker_mid_equals_conv_chain(models):
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    up, mid, down = rand(32, 4, 1, 1, seed=8), rand(4, 4, 3, 3, seed=9), rand(4, 32, 1, 1, seed=10)
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_mid.weight": mid, f"{name}.lora_down.weight": down,
             f"{name}.alpha": torch.tensor(2.0)}
    delta, _ = delta_of(models, state, CONV)
    x = rand(1, 32, 6, 6, seed=11)
    chain = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up) * 0.5
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), chain, rtol=1e-4, atol=1e-4)


def _cp(t, a, b):
    """Reference CP rebuild: W[p, r, k, l] = Σ_ij t[i, j, k, l] a[i, p] b[j, r], by tensordot."""
    return torch.tensordot(torch.tensordot(a.T, t, dims=([1], [0])), b, dims=([1], [0])).permute(0, 3, 1, 2).contiguous()


def test_loha_plain_and_cp(models):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    f = {k: rand(*s, seed=20 + i) for i, (k, s) in enumerate(
        [("hada_w1_a", (32, 4)), ("hada_w1_b", (4, 32)), ("hada_w2_a", (32, 4)), ("hada_w2_b", (4, 32))])}
    state = {f"{name}.{k}": v for k, v in f.items()} | {f"{name}.alpha": torch.tensor(2.0)}
    expected = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * 0.5
    torch.testing.assert_close(delta_of(models, state, Q)[0], expected, rtol=1e-5, atol=1e-5)

    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    c = {k: rand(*s, seed=30 + i) for i, (k, s) in enumerate(
        [("hada_t1", (4, 4, 3, 3)), ("hada_w1_a", (4, 32)), ("hada_w1_b", (4, 32)),
         ("hada_t2", (4, 4, 3, 3)), ("hada_w2_a", (4, 32)), ("hada_w2_b", (4, 32))])}
    state = {f"{conv}.{k}": v for k, v in c.items()} | {f"{conv}.alpha": torch.tensor(4.0)}
    expected = _cp(c["hada_t1"], c["hada_w1_a"], c["hada_w1_b"]) * _cp(c["hada_t2"], c["hada_w2_a"], c["hada_w2_b"])
    torch.testing.assert_close(delta_of(models, state, CONV)[0], expected, rtol=1e-4, atol=1e-4)


def test_lokr_full_decomposed_and_tucker(models):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    w1, w2a, w2b = rand(4, 4, seed=40), rand(8, 2, seed=41), rand(2, 8, seed=42)
    state = {f"{name}.lokr_w1": w1, f"{name}.lokr_w2_a": w2a, f"{name}.lokr_w2_b": w2b, f"{name}.alpha": torch.tensor(1.0)}
    delta, _ = delta_of(models, state, Q)
    w2 = w2a @ w2b
    for i, j in ((0, 0), (1, 3), (3, 2)):  # block (i, j) of kron(w1, w2) is w1[i, j] * w2, times alpha / r = 1/2
        torch.testing.assert_close(delta[8 * i: 8 * i + 8, 8 * j: 8 * j + 8], w1[i, j] * w2 * 0.5, rtol=1e-5, atol=1e-5)
    full = {f"{name}.lokr_w1": w1, f"{name}.lokr_w2": w2, f"{name}.alpha": torch.tensor(7.0)}
    torch.testing.assert_close(delta_of(models, full, Q)[0], torch.kron(w1, w2), rtol=1e-5, atol=1e-5)  # both full: scale 1

    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    t2, a, b, w1c = rand(2, 2, 3, 3, seed=43), rand(2, 8, seed=44), rand(2, 8, seed=45), rand(4, 4, seed=46)
    state = {f"{conv}.lokr_w1": w1c, f"{conv}.lokr_t2": t2, f"{conv}.lokr_w2_a": a, f"{conv}.lokr_w2_b": b,
             f"{conv}.alpha": torch.tensor(2.0)}
    expected = torch.kron(w1c[:, :, None, None], _cp(t2, a, b))
    torch.testing.assert_close(delta_of(models, state, CONV)[0], expected, rtol=1e-4, atol=1e-4)


def test_dora_column_norms_and_strength(models):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    state, up, down = kohya_linear(rank=4, alpha=4.0)
    magnitude = rand(1, 32, seed=50).abs() + 0.5
    state[f"{name}.dora_scale"] = magnitude
    delta, _ = delta_of(models, state, Q)
    w = models["base"]["unet"][Q].float()  # DoRA is relative to the SD-1.5 weight it was trained on
    merged = w + delta
    torch.testing.assert_close(merged.norm(dim=0), magnitude[0], rtol=1e-4, atol=1e-4)
    half, _ = delta_of(models, state, Q, strength=0.5)
    torch.testing.assert_close(half, 0.5 * delta, rtol=1e-5, atol=1e-5)
    # PEFT stores the magnitude per output row
    peft = {"unet." + Q[:-len(".weight")] + ".lora_A.weight": down, "unet." + Q[:-len(".weight")] + ".lora_B.weight": up,
            "unet." + Q[:-len(".weight")] + ".lora_magnitude_vector": magnitude[0]}
    delta_rows, _ = delta_of(models, peft, Q, metadata={"lora_adapter_metadata": '{"lora_alpha": 4, "r": 4}'})
    torch.testing.assert_close((w + delta_rows).norm(dim=1), magnitude[0], rtol=1e-4, atol=1e-4)


def test_full_diff_and_bias(models):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    key = ATTN + "attn1.to_out.0.weight"
    diff, diff_b = rand(32, 32, seed=60), rand(32, seed=61)
    state = {f"{name}.diff": diff, f"{name}.diff_b": diff_b}
    delta, report = delta_of(models, state, key, strength=2.0)
    torch.testing.assert_close(delta, 2.0 * diff, rtol=1e-6, atol=1e-6)
    bias_delta, _ = delta_of(models, state, key[: -len("weight")] + "bias", strength=2.0)
    torch.testing.assert_close(bias_delta, 2.0 * diff_b, rtol=1e-6, atol=1e-6)
    assert report.components["unet"].lora == 2


def _layouts(up, down):
    """The same rank-4 (alpha 2) attention LoRA in every layout; alpha only where the layout stores it."""
    p = ATTN + "attn1"
    kohya = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return {
        "kohya": ({f"{kohya}.lora_up.weight": up, f"{kohya}.lora_down.weight": down, f"{kohya}.alpha": torch.tensor(2.0)}, None),
        "lycoris-prefix": ({f"lycoris_{kohya[10:]}.lora_up.weight": up, f"lycoris_{kohya[10:]}.lora_down.weight": down,
                            f"lycoris_{kohya[10:]}.alpha": torch.tensor(2.0)}, None),
        "attn-processor": ({f"unet.{p}.processor.to_q_lora.up.weight": up, f"unet.{p}.processor.to_q_lora.down.weight": down,
                            f"unet.{p}.processor.to_q_lora.alpha": torch.tensor(2.0)}, None),
        "diffusers-new": ({f"unet.{p}.to_q.lora.up.weight": up, f"unet.{p}.to_q.lora.down.weight": down}, {"lora_alpha": "2"}),
        "peft": ({f"unet.{p}.to_q.lora_B.weight": up, f"unet.{p}.to_q.lora_A.weight": down},
                 {"lora_adapter_metadata": '{"unet.lora_alpha": 2, "unet.r": 4}'}),
        "peft-native": ({f"base_model.model.{p}.to_q.lora_B.weight": up, f"base_model.model.{p}.to_q.lora_A.weight": down},
                        {"lora_alpha": "2"}),
    }


def test_every_layout_gives_the_kohya_delta(models):
    up, down = rand(32, 4, seed=70), rand(4, 32, seed=71)
    expected = 0.5 * up @ down
    for layout, (state, metadata) in _layouts(up, down).items():
        delta, report = delta_of(models, state, Q, metadata=metadata)
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-5, msg=layout)
        assert not any(report.unused.values()), (layout, report.unused)


def test_text_encoder_layouts(models):
    up, down = rand(32, 4, seed=72), rand(4, 32, seed=73)
    fc_up, fc_down = rand(37, 4, seed=74), rand(4, 32, seed=75)
    layouts = {
        "kohya te": {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
                     "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down},
        "kohya te1": {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
                      "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down},
        "attn-processor": {"text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight": up,
                           "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight": down},
        "peft": {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": up,
                 "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": down},
    }
    for layout, state in layouts.items():
        delta, report = delta_of(models, state, TE_Q, component="text_encoder")
        torch.testing.assert_close(delta, up @ down, rtol=1e-5, atol=1e-5, msg=layout)
    mlp = {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": fc_up,
           "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": fc_down}
    delta, _ = delta_of(models, mlp, "encoder.layers.0.mlp.fc1.weight", component="text_encoder")
    torch.testing.assert_close(delta, fc_up @ fc_down, rtol=1e-5, atol=1e-5)


def test_conv_in_lora_is_zero_padded(models):
    name = "lora_unet_conv_in"
    up, down = rand(32, 2, 1, 1, seed=80), rand(2, 4, 3, 3, seed=81)
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}
    delta, report = delta_of(models, state, "conv_in.weight")
    assert delta.shape == (32, 9, 3, 3)
    torch.testing.assert_close(delta[:, :4], (up.flatten(1) @ down.flatten(1)).reshape(32, 4, 3, 3), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(delta[:, 4:]) == 0
    nine = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": rand(2, 9, 3, 3, seed=82)}
    with pytest.raises(ValueError, match="9-channel inpainting"):
        delta_of(models, nine, "conv_in.weight")


def test_sdxl_and_sd2_loras_are_refused_by_name(models):
    with pytest.raises(ValueError, match="SDXL"):
        delta_of(models, {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": rand(32, 4)}, Q)
    for width, family in ((2048, "SDXL"), (1024, "SD2")):
        name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
        state = {f"{name}.lora_up.weight": rand(32, 4), f"{name}.lora_down.weight": rand(4, width)}
        with pytest.raises(ValueError, match=family):
            delta_of(models, state, Q)


def test_an_sdxl_lora_is_named_before_any_of_its_modules_misfits(models):
    """SDXL blocks are wider than SD-1.5's at the same names: the family, not a shape error, must come first."""
    misfit = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 320 wide in SD-1.5
    cross = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{misfit}.lora_up.weight": rand(640, 4), f"{misfit}.lora_down.weight": rand(4, 640),
             f"{cross}.lora_up.weight": rand(640, 4), f"{cross}.lora_down.weight": rand(4, 2048)}
    with pytest.raises(ValueError, match=r"is not an SD-1.5 LoRA: pick an SD-1.5 one .* Detected SDXL \(2048-wide"):
        delta_of(models, state, Q)


def test_unused_keys_are_reported_with_reasons(models):
    state, _, _ = kohya_linear()
    state.update({
        "garbage.key": torch.zeros(3),
        "lora_unet_no_such_block_to_q.lora_up.weight": rand(32, 4), "lora_unet_no_such_block_to_q.lora_down.weight": rand(4, 32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.on_input": rand(32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.alpha": torch.tensor(1.0),
    })
    _, report = delta_of(models, state, Q)
    (unused,) = [v for k, v in report.unused.items() if k.startswith("LoRA")]
    assert set(unused) == {"garbage.key", "lora_unet_no_such_block_to_q.lora_up.weight",
                           "lora_unet_no_such_block_to_q.lora_down.weight",
                           "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.on_input",
                           "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.alpha"}
    assert "IA³" in unused["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.on_input"]
    assert "no SD-1.5" in unused["lora_unet_no_such_block_to_q.lora_up.weight"]
    assert "garbage.key" in report.summary()


def test_two_loras_commute_and_zero_lora_is_exact(models):
    a, _, _ = kohya_linear(rank=4, alpha=2.0)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    b = {f"{conv}.hada_w1_a": rand(32, 2, seed=90), f"{conv}.hada_w1_b": rand(2, 288, seed=91),
         f"{conv}.hada_w2_a": rand(32, 2, seed=92), f"{conv}.hada_w2_b": rand(2, 288, seed=93)}
    b.update({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.diff": rand(32, 32, seed=94)})

    def merged(loras):
        recipe = MergeRecipe(inpaint=models["inpaint"], base=models["base"], loras=loras, beta=1.0)
        with MergePlan(recipe, dtype=torch.float32) as plan:
            return {k: plan.compute("unet", k) for k in (Q, CONV)}

    ab = merged([LoraSpec(a, 0.7, name="a"), LoraSpec(b, 1.3, name="b")])
    ba = merged([LoraSpec(b, 1.3, name="b"), LoraSpec(a, 0.7, name="a")])
    for key in ab:
        torch.testing.assert_close(ab[key], ba[key], rtol=1e-6, atol=1e-6)
    zero = {k: torch.zeros_like(v) for k, v in a.items()}
    recipe = MergeRecipe(inpaint=models["inpaint"], base=models["base"], loras=[LoraSpec(zero, 1.0)])
    with MergePlan(recipe) as plan:
        assert torch.equal(plan.compute("unet", Q), models["inpaint"]["unet"][Q])


def test_cococo_parity_and_the_deliberate_linear_scale_fix():
    """convert_lora.py: conv Δ = alpha·up@down/rank, Linear Δ = up@down (no scale). Ours scales both."""
    up, down = rand(32, 16, seed=95), rand(16, 32, seed=96)
    official_linear = up @ down
    ours_equal = lora_delta.lora(up, down, (32, 32), alpha=16.0)
    torch.testing.assert_close(ours_equal, official_linear, rtol=1e-6, atol=1e-6)  # alpha == rank: identical
    ours = lora_delta.lora(up, down, (32, 32), alpha=8.0)
    torch.testing.assert_close(official_linear / ours, torch.full((32, 32), 16 / 8), rtol=1e-4, atol=1e-4)
    conv_up, conv_down = rand(32, 16, 1, 1, seed=97), rand(16, 32, 3, 3, seed=98)
    official_conv = 8.0 * (conv_up.permute(0, 2, 3, 1).reshape(32, 16) @ conv_down.reshape(16, -1)).reshape(32, 32, 3, 3) / 16
    torch.testing.assert_close(lora_delta.lora(conv_up, conv_down, (32, 32, 3, 3), alpha=8.0), official_conv, rtol=1e-5, atol=1e-5)


def test_text_encoder_lora_reported_when_text_is_not_merged(models):
    up, down = rand(32, 4, seed=99), rand(4, 32, seed=100)
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    state = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}
    recipe = MergeRecipe(inpaint=models["inpaint"], loras=[LoraSpec(state, 1.0, name="te")], components=("unet", "vae"))
    with MergePlan(recipe) as plan:
        assert "text_encoder" not in plan.keys
        assert plan.report.unused["LoRA te"] == {k: "text_encoder is not being merged" for k in state}


@pytest.mark.parametrize("name, component, key", [
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora", "unet", ATTN + "attn1.to_out.0.weight"),
    ("text_encoder.text_model.encoder.layers.1.self_attn.to_out_lora", "text_encoder", "encoder.layers.1.self_attn.out_proj.weight"),
    ("lora_unet_conv_in", "unet", "conv_in.weight"),
    ("lora_unet_time_embed_0", "unet", "time_embedding.linear_1.weight"),
    ("lora_unet_output_blocks_2_1_conv", "unet", "up_blocks.0.upsamplers.0.conv.weight"),
    ("lora_unet_middle_block_1_proj_out", "unet", "mid_block.attentions.0.proj_out.weight"),
    ("diffusion_model.input_blocks.1.1.proj_in", "unet", PROJ_IN),
    ("lora_te_text_model_encoder_layers_1_mlp_fc2", "text_encoder", "encoder.layers.1.mlp.fc2.weight"),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj", "text_encoder",
     "encoder.layers.0.self_attn.k_proj.weight"),
    ("lora_unet_nonsense", None, None),
])
def test_module_names_resolve(models, name, component, key):
    with MergePlan(MergeRecipe(inpaint=models["inpaint"])) as plan:
        assert plan.lora_targets().resolve(name) == ((component, key) if component else None)
