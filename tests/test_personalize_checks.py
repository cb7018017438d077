"""No silent bad merges: NaN / inf inputs and overflowing merges are refused, naming the file and tensor, and
every check runs before the first weight changes (a failure at the very last module leaves the model bitwise
unchanged in memory, and leaves no file, nor a changed one, on disk)."""
import math

import pytest
import torch
from safetensors.torch import save_file

import tiny_models
from cococo_core.personalize import LoraSpec, MergePlan, MergeRecipe, personalize_modules, save_merged

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
LAST_TEXT = "encoder.layers.1.mlp.fc2"  # the last LoRA-able layer in merge order (text encoder after the U-Net)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    return {
        "root": root,
        "base": tiny_models.write_ldm_file(root / "base.safetensors", tiny_models.ldm_state(4, 0)),
        "inpaint": tiny_models.write_ldm_file(root / "inpaint.safetensors", tiny_models.ldm_state(9, 1)),
        "personal": tiny_models.write_ldm_file(root / "personal.safetensors", tiny_models.ldm_state(4, 2)),
    }


def rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def kohya(name=Q, out=32, inp=32, scale=1.0, seed=0):
    """A kohya LoRA module (rank 4, alpha 4); ``scale`` multiplies both factors."""
    return {f"{name}.lora_up.weight": scale * rand(out, 4, seed=seed), f"{name}.lora_down.weight": scale * rand(4, inp, seed=seed + 1),
            f"{name}.alpha": torch.tensor(4.0)}


def last_item(recipe):
    with MergePlan(recipe) as plan:
        return list(plan.items())[-1]


def test_nan_or_inf_lora_factor_is_refused_naming_file_and_tensor(files, tmp_path):
    for value in (float("nan"), float("inf")):
        state = kohya()
        state[f"{Q}.lora_down.weight"][1, 2] = value
        path = tmp_path / "bad.safetensors"
        save_file(state, str(path))
        with pytest.raises(ValueError, match=rf"bad\.safetensors.*{Q}\.lora_down\.weight"):
            MergePlan(MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(path)]))


def test_nan_strength_and_integer_factors_are_refused(files):
    with pytest.raises(ValueError, match="strength of LoRA .* must be a finite number, got nan"):
        MergePlan(MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(kohya(), math.nan)]))
    state = {k: v.to(torch.int64) if k.endswith("up.weight") else v for k, v in kohya().items()}
    with pytest.raises(ValueError, match="int64, not a floating-point"):
        MergePlan(MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(state)]))


def test_huge_alpha_overflow_is_refused(files, tmp_path):
    state = {k: v for k, v in kohya().items() if not k.endswith(".alpha")}
    recipe = MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(state, metadata={"lora_alpha": "1e40"})])
    with pytest.raises(ValueError, match="does not fit in float32"):
        MergePlan(recipe)
    recipe = MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(state, 100.0, metadata={"lora_alpha": "3e38"})])
    with pytest.raises(ValueError, match=f"LoRA <in-memory LoRA>.*{Q}"):
        save_merged(recipe, tmp_path / "out.safetensors")
    assert not list(tmp_path.iterdir())


def test_nan_in_personal_checkpoint_names_the_file_and_tensor(files, tmp_path):
    state = tiny_models.ldm_state(4, 2)
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    broken = tiny_models.write_ldm_file(tmp_path / "nan-personal.safetensors", state)
    out = tmp_path / "out.safetensors"
    # refused while the file is read (cococo_core/checkpoints/finite.py), naming the file and the tensor
    with pytest.raises(ValueError, match=rf"nan-personal\.safetensors: tensor '{key}' holds 1 NaN"):
        save_merged(MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=broken), out)
    assert [p.name for p in tmp_path.iterdir()] == ["nan-personal.safetensors"]  # no output, no staging file


def test_huge_alpha_overflow_and_fp16_range(files, tmp_path):
    with pytest.raises(ValueError, match="alpha=1e\\+39"):
        save_merged(MergeRecipe(inpaint=files["inpaint"], base=files["base"], alpha=1e39), tmp_path / "a.safetensors")
    # finite in float32 but beyond float16's range once stored
    with pytest.raises(ValueError, match="float16"):
        save_merged(MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(kohya(), 1e6)]), tmp_path / "b.safetensors",
                    dtype=torch.float16)
    assert not list(tmp_path.iterdir())


def _targets():
    state = tiny_models.component_state(9, 1)
    return {c: {k: v.clone() for k, v in s.items()} for c, s in state.items()}


def _snapshot(targets):
    return {(c, k): v.clone() for c, s in targets.items() for k, v in s.items()}


def _assert_unchanged(targets, snapshot):
    for (c, k), v in snapshot.items():
        assert torch.equal(targets[c][k], v), (c, k)


def _failing_recipes(files):
    """Recipes whose only fault is in the last module the merge reaches."""
    ok = MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=files["personal"], alpha=0.9, beta=1.2)
    component, key = last_item(ok)
    personal = {c: dict(s) for c, s in tiny_models.component_state(4, 2).items()}
    personal[component][key] = personal[component][key].clone().fill_(float("inf"))
    yield "inf in the last personal tensor", MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=personal)

    fc2 = f"text_encoder.{LAST_TEXT}"
    overflow = kohya() | kohya(name=fc2, out=32, inp=37, scale=1e20, seed=5)  # only the last module overflows
    yield "overflow in the last LoRA module", MergeRecipe(inpaint=files["inpaint"], base=files["base"], loras=[LoraSpec(overflow)])

    dora = kohya() | {f"{fc2}.lora_B.weight": rand(32, 4), f"{fc2}.lora_A.weight": rand(4, 37),
                      f"{fc2}.lora_magnitude_vector": rand(37).abs()}  # per input channel: never valid for PEFT
    yield "PEFT DoRA magnitude of the wrong axis", MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(dora)])

    fp16 = kohya() | kohya(name=fc2, out=32, inp=37, scale=1e3, seed=7)  # finite in float32, not in float16
    yield "float16 overflow in the last module", MergeRecipe(inpaint=files["inpaint"], loras=[LoraSpec(fp16)])


def test_failure_in_the_last_module_leaves_the_model_bitwise_unchanged(files):
    targets = _targets()
    personalize_modules(targets, MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=files["personal"],
                                             loras=[LoraSpec(kohya())], alpha=0.9, beta=1.2))
    before = _snapshot(targets)  # an already personalized model: a failing re-merge must keep it as it is
    for what, recipe in _failing_recipes(files):
        live = targets
        if what.startswith("float16"):
            live = {c: {k: v.half() for k, v in s.items()} for c, s in targets.items()}
            before16 = _snapshot(live)
        with pytest.raises(ValueError):
            personalize_modules(live, recipe)
        _assert_unchanged(live, before16 if live is not targets else before)
    _assert_unchanged(targets, before)


def test_failure_in_the_last_module_writes_no_file_and_keeps_an_existing_one(files, tmp_path):
    out = tmp_path / "merged.safetensors"
    out.write_bytes(b"an earlier merge")
    for what, recipe in _failing_recipes(files):
        if what.startswith("float16"):
            continue
        with pytest.raises(ValueError):
            save_merged(recipe, out)
        assert out.read_bytes() == b"an earlier merge", what
        assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.safetensors"], what


def test_four_channel_model_as_inpainting_model_is_refused(files):
    with pytest.raises(ValueError, match="conv_in has 4 input channels.*text-to-image"):
        MergePlan(MergeRecipe(inpaint=files["base"]))


def test_output_equal_to_an_input_is_refused(files, tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file(kohya(), str(lora))
    link = tmp_path / "personal-link.safetensors"
    link.symlink_to(files["personal"])
    recipe = MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=link, loras=[LoraSpec(lora)])
    before = {p: p.read_bytes() for p in (files["inpaint"], files["base"], files["personal"], lora)}
    for out, role in ((files["inpaint"], "inpainting model"), (files["personal"], "personalized model"),
                      (lora, "LoRA")):
        with pytest.raises(ValueError, match=f"is the {role}"):
            save_merged(recipe, out)
    folder = tiny_models.write_sd_folder(tmp_path / "inpaint-folder", in_channels=9, seed=1)
    inside = next(folder.rglob("*.safetensors"))
    with pytest.raises(ValueError, match="is the inpainting model"):
        save_merged(MergeRecipe(inpaint=folder), inside)
    assert all(p.read_bytes() == data for p, data in before.items())
