"""Checkpoint task-vector merges (checkpoint-formats.md §6 items 1-8) on tiny single files with real LDM keys."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from cococo_core.checkpoints import UnsafeCheckpointError
from cococo_core.personalize import LoraSpec, MergePlan, MergeRecipe, save_merged



CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def _cast(state, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    states = {"base": tiny_models.ldm_state(4, 0), "inpaint": tiny_models.ldm_state(9, 1),
              "personal": tiny_models.ldm_state(4, 2)}
    out = {"dir": root, "states": states}
    for name, state in states.items():
        out[name] = tiny_models.write_ldm_file(root / f"{name}.safetensors", state)
        out[name + "16"] = tiny_models.write_ldm_file(root / f"{name}16.safetensors", _cast(state, torch.float16))
    return out


def merge(files, tmp_path, name="out.safetensors", **kwargs):
    recipe = MergeRecipe(**{"inpaint": files["inpaint"], "base": files["base"], "personal": files["personal"], **kwargs})
    report = save_merged(recipe, tmp_path / name, overwrite=True)  # the tests reuse one output name
    return load_file(str(tmp_path / name)), report


def sample(files, *, every=6, dtype=None, extra=(), **kwargs):
    """Merged weights for every ``every``-th weight plus conv_in, computed in memory (no file written)."""
    recipe = MergeRecipe(**{"inpaint": files["inpaint"], "base": files["base"], "personal": files["personal"], **kwargs})
    with MergePlan(recipe, dtype=dtype) as plan:
        items = [item for i, item in enumerate(sorted(plan.items())) if i % every == 0 or item == ("unet", "conv_in.weight") or item in extra]
        return {item: plan.compute(*item) for item in items}, plan.report


def test_anchors_are_bit_exact_fp16(files, tmp_path):
    base, inp, pers = (load_file(str(files[n])) for n in ("base16", "inpaint16", "personal16"))
    zero, report = merge(files, tmp_path, inpaint=files["inpaint16"], base=files["base16"], personal=files["personal16"],
                         alpha=0.0, beta=0.0)
    assert set(zero) == set(inp)
    for key, value in zero.items():
        if key == CONV_IN:
            assert torch.equal(value[:, :4], base[key]) and torch.count_nonzero(value[:, 4:]) == 0
        else:
            assert torch.equal(value, base[key]), key
    one, _ = merge(files, tmp_path, inpaint=files["inpaint16"], base=files["base16"], personal=files["personal16"],
                   alpha=1.0, beta=0.0)
    assert all(torch.equal(one[k], inp[k]) for k in inp)
    full, _ = merge(files, tmp_path, inpaint=files["inpaint16"], base=files["base16"], personal=files["personal16"],
                    alpha=1.0, beta=1.0)
    for key in (k for k in inp if inp[k].is_floating_point()):
        delta = pers[key].double() - base[key].double()
        if key == CONV_IN:
            delta = torch.cat([delta, torch.zeros(delta.shape[0], 5, *delta.shape[2:], dtype=torch.float64)], 1)
        expected = (inp[key].double() + delta)
        ulp = torch.finfo(torch.float16).eps * expected.abs().clamp_min(2 ** -14)
        assert ((full[key].double() - expected).abs() <= ulp).all(), key
        assert full[key].dtype == torch.float16
    assert report.components["unet"].padded == ["conv_in.weight"]


def test_conv_in_channels_and_general_alpha_beta_fp32(files, tmp_path):
    states = files["states"]
    c, a, b = (states[n][CONV_IN].double() for n in ("base", "inpaint", "personal"))
    out = {beta: sample(files, every=10**6, alpha=0.7, beta=beta)[0][("unet", "conv_in.weight")] for beta in (0.0, 1.3)}
    expected = c + 0.7 * (a[:, :4] - c) + 1.3 * (b - c)
    torch.testing.assert_close(out[1.3][:, :4].double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[1.3][:, 4:].double(), 0.7 * a[:, 4:], rtol=1e-6, atol=1e-6)
    assert torch.equal(out[0.0][:, 4:], out[1.3][:, 4:])  # the mask / masked-image channels ignore beta


def test_nine_channel_personal_is_an_explicit_error(files, tmp_path):
    with pytest.raises(ValueError, match="9 input channels.*inpainting model"):
        merge(files, tmp_path, personal=files["inpaint"])


def test_linearity_in_beta_and_per_component_beta(files, tmp_path):
    runs = {beta: sample(files, alpha=0.8, beta=beta)[0] for beta in (0.0, 1.0, 2.0)}
    for item in runs[0.0]:
        lhs, rhs = runs[2.0][item] - runs[1.0][item], runs[1.0][item] - runs[0.0][item]
        torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-6, msg=str(item))
    split, report = sample(files, alpha=0.8, beta=2.0, beta_text=0.0, beta_vae=1.0)
    expected = {"unet": 2.0, "text_encoder": 0.0, "vae": 1.0}
    assert {c for c, _ in split} == set(expected)
    assert all(torch.equal(split[item], runs[expected[item[0]]][item]) for item in split)
    assert report.betas == {"unet": 2.0, "text_encoder": 0.0, "vae": 1.0}


def test_mixed_dtypes_and_requested_output_dtype(files, tmp_path):
    bf16 = tiny_models.write_ldm_file(tmp_path / "pers-bf16.safetensors", _cast(files["states"]["personal"], torch.bfloat16))
    mixed, _ = sample(files, inpaint=files["inpaint16"], personal=bf16, alpha=0.9, beta=1.5)
    assert all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in mixed.values())
    as32, _ = sample(files, inpaint=files["inpaint16"], personal=bf16, alpha=0.9, beta=1.5, dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in as32.values())
    assert all(torch.equal(as32[item].half(), mixed[item]) for item in mixed)  # computed in fp32, cast once


def test_ckpt_wrapper_equals_safetensors_and_evil_pickle_is_refused(files, tmp_path):
    ckpt = tiny_models.write_ldm_file(tmp_path / "personal.ckpt", files["states"]["personal"])  # {"state_dict", "global_step"}
    from_ckpt, _ = sample(files, personal=ckpt, alpha=0.5, beta=1.5)
    from_st, _ = sample(files, alpha=0.5, beta=1.5)
    assert all(torch.equal(from_ckpt[k], from_st[k]) for k in from_st)

    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(files["states"]["personal"]), "callback": Evil()}, evil)
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeCheckpointError):
        merge(files, tmp_path, personal=evil)
    assert not marker.exists()


def test_ema_variant_is_chosen_and_reported(files, tmp_path):
    ema_state = tiny_models.ldm_state(4, 2, ema=True)
    ema_file = tiny_models.write_ldm_file(tmp_path / "ema.safetensors", ema_state)
    plain, report = sample(files, personal=ema_file, beta=1.0)
    reference, _ = sample(files, beta=1.0)
    assert all(torch.equal(plain[k], reference[k]) for k in reference)
    assert any("EMA" in note and "non-EMA" in note for note in report.notes)
    assert any(k.startswith("model_ema.") for keys in report.unused.values() for k in keys)
    ema, report = sample(files, personal=ema_file, beta=1.0, use_ema=True)
    for item in (i for i in ema if i[0] == "unet"):
        shift = ema[item] - reference[item]
        shift = shift[:, :4] if item[1] == "conv_in.weight" else shift  # channels 4-8 never take tau_p
        torch.testing.assert_close(shift, torch.full_like(shift, 0.01), rtol=0, atol=1e-5)


def test_missing_vae_old_text_layout_and_garbage_keys(files, tmp_path):
    state = {k: v for k, v in files["states"]["personal"].items() if not k.startswith("first_stage_model.")}
    state = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v for k, v in state.items()}
    state["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None]
    state["some_trainer.garbage"] = torch.ones(2)
    broken = tiny_models.write_ldm_file(tmp_path / "broken.safetensors",
                                        {**state, "model.diffusion_model.not_a_block.weight": torch.ones(2)})
    with pytest.raises(ValueError, match="not_a_block"):  # a U-Net key outside the SD-1.x layout: wrong model
        merge(files, tmp_path, personal=broken)
    odd = tiny_models.write_ldm_file(tmp_path / "odd.safetensors", state)
    out, report = merge(files, tmp_path, personal=odd, beta=1.0)
    reference, _ = merge(files, tmp_path, name="ref.safetensors", beta=1.0)
    inp = load_file(str(files["inpaint"]))
    for key in out:
        expected = inp if key.startswith("first_stage_model.") else reference
        assert torch.equal(out[key], expected[key]), key
    assert torch.equal(out[POSITION_IDS], torch.arange(77)[None])
    assert any("no vae" in note and "VAE is kept" in note for note in report.notes)
    unused = next(v for k, v in report.unused.items() if k.startswith("personal"))
    assert "some_trainer.garbage" in unused and "not a weight" in unused["some_trainer.garbage"]


@pytest.mark.parametrize("maker, family", [(tiny_models.sd2_file, "Stable Diffusion 2.x"), (tiny_models.sdxl_file, "SDXL")])
def test_other_families_are_refused(files, tmp_path, maker, family):
    with pytest.raises(ValueError, match=family):
        merge(files, tmp_path, personal=maker())


def test_v_prediction_is_refused(files, tmp_path):
    with pytest.raises(ValueError, match="v-prediction"):
        merge(files, tmp_path, personal=tiny_models.ldm_file(in_channels=4, v_pred=True))
    meta = tiny_models.write_ldm_file(tmp_path / "vmeta.safetensors", files["states"]["personal"], {"modelspec.predict_key": "v"})
    with pytest.raises(ValueError, match="v-prediction"):
        merge(files, tmp_path, personal=meta)


def test_output_matches_save_file_and_loads_back(files, tmp_path):
    recipe = MergeRecipe(inpaint=files["inpaint16"], base=files["base"], personal=files["personal"], alpha=0.9, beta=1.2)
    save_merged(recipe, tmp_path / "stream.safetensors")
    with MergePlan(recipe) as plan:
        from cococo_core.checkpoints.ldm_keys import SDKeyMap
        key_map = SDKeyMap.from_diffusers_keys(plan.keys)
        collected = {}
        for component, key in plan.items():
            target = key_map.to_ldm(component, key)
            tensor = plan.compute(component, key)
            collected[target.key] = (target.transform(tensor) if target.transform else tensor).contiguous()
    collected[POSITION_IDS] = torch.arange(77)[None]
    save_file(collected, str(tmp_path / "dict.safetensors"))
    streamed, whole = load_file(str(tmp_path / "stream.safetensors")), load_file(str(tmp_path / "dict.safetensors"))
    assert set(streamed) == set(whole) == set(load_file(str(files["inpaint"])))
    assert all(torch.equal(streamed[k], whole[k]) and streamed[k].dtype == whole[k].dtype for k in whole)

    from cococo_core.checkpoints.base import load_sd_components

    loaded = load_sd_components(tmp_path / "stream.safetensors", components=("unet", "vae", "text_encoder"))
    assert loaded.source.is_inpainting and loaded.source.family == "sd1"
    with MergePlan(recipe) as plan:
        for component, key in plan.items():
            module_state = getattr(loaded, component).state_dict()
            assert torch.equal(module_state[key], plan.compute(component, key)), (component, key)


def test_diffusers_folder_inputs_equal_single_files(files, tmp_path):
    folder_base = tiny_models.write_sd_folder(tmp_path / "base", in_channels=4, seed=0)
    folder_inp = tiny_models.write_sd_folder(tmp_path / "inp", in_channels=9, seed=1)
    from_folders, _ = sample(files, base=folder_base, inpaint=folder_inp, alpha=0.6, beta=1.4)
    from_files, _ = sample(files, alpha=0.6, beta=1.4)
    assert set(from_folders) == set(from_files)
    assert all(torch.equal(from_folders[k], from_files[k]) for k in from_files)
    scheduler = folder_base / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text().replace('"epsilon"', '"v_prediction"'))
    with pytest.raises(ValueError, match="v-prediction"):
        sample(files, personal=folder_base)


def test_no_base_needed_only_at_alpha_one_without_personal(files, tmp_path):
    with pytest.raises(ValueError, match="alpha=0.5 needs the SD-1.5 base"):
        save_merged(MergeRecipe(inpaint=files["inpaint"], alpha=0.5), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="needs the SD-1.5 base"):
        save_merged(MergeRecipe(inpaint=files["inpaint"], personal=files["personal"]), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cancelled_save_leaves_no_file_and_progress_counts_every_tensor(files, tmp_path):
    from cococo_core.hooks import Cancelled

    steps = []
    with pytest.raises(Cancelled):
        save_merged(MergeRecipe(inpaint=files["inpaint"], base=files["base"]), tmp_path / "c.safetensors",
                    callback=lambda s, t, _: steps.append((s, t)), cancel=lambda: len(steps) >= 50)
    assert len(steps) == 50 and not list(tmp_path.iterdir())
    steps.clear()
    save_merged(MergeRecipe(inpaint=files["inpaint"]), tmp_path / "c.safetensors", callback=lambda s, t, _: steps.append((s, t)))
    assert steps[-1] == (len(load_file(str(files["inpaint"]))),) * 2


def test_row_blocks_give_the_same_weights(files, monkeypatch):
    from cococo_core.personalize import plan as plan_module

    gen, name = torch.Generator().manual_seed(9), "lora_unet_down_blocks_0_resnets_0_conv1"
    lora = {f"{name}.lora_up.weight": torch.randn(32, 4, 1, 1, generator=gen),
            f"{name}.lora_down.weight": torch.randn(4, 32, 3, 3, generator=gen)}
    kwargs = dict(every=3, alpha=0.7, beta=1.4, loras=[LoraSpec(lora, 0.5)], extra=[("unet", "down_blocks.0.resnets.0.conv1.weight")])
    whole, _ = sample(files, **kwargs)
    monkeypatch.setattr(plan_module, "CHUNK_ELEMENTS", 500)
    blocks, _ = sample(files, **kwargs)
    assert ("unet", "down_blocks.0.resnets.0.conv1.weight") in whole
    assert all(torch.equal(whole[item], blocks[item]) for item in whole)


def test_report_counts(files):
    _, report = sample(files, every=10**6, alpha=0.5, beta=1.0)
    unet = report.components["unet"]
    assert unet.weights == unet.task_vector == unet.personal > 600 and unet.padded == ["conv_in.weight"]
    _, report = sample(files, every=10**6, alpha=1.0, beta=0.0)
    assert report.components["unet"].task_vector == 0 and "alpha-scaled inpaint delta on 0" in report.summary()
