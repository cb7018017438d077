"""In-place merges into loaded modules: equal to the file merge, repeatable with another β, safe to cancel."""
import pytest
import torch

import tiny_models
from cococo_core.hooks import Cancelled
from cococo_core.personalize import LoraSpec, MergePlan, MergeRecipe, WeightBackup, personalize_modules, restore_modules



MOTION = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inmemory")
    lora = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    gen = torch.Generator().manual_seed(3)
    return {
        "base": tiny_models.write_ldm_file(root / "base.safetensors", tiny_models.ldm_state(4, 0)),
        "inpaint": tiny_models.write_ldm_file(root / "inpaint.safetensors", tiny_models.ldm_state(9, 1)),
        "personal": tiny_models.write_ldm_file(root / "personal.safetensors", tiny_models.ldm_state(4, 2)),
        "lora": {f"{lora}.lora_up.weight": torch.randn(32, 4, generator=gen),
                 f"{lora}.lora_down.weight": torch.randn(4, 32, generator=gen), f"{lora}.alpha": torch.tensor(2.0)},
    }


_TEXT = {}


def targets():
    """Freshly 'loaded' inpainting weights: the U-Net and VAE as state dicts (the U-Net with a motion-module tensor,
    like a video U-Net), the text encoder as a real module (built once, reloaded each time)."""
    state = tiny_models.component_state(9, 1)
    if "module" not in _TEXT:
        _TEXT["module"] = tiny_models.components(9, 1)["text_encoder"]
    text = _TEXT["module"]
    text.load_state_dict(state["text_encoder"])
    unet = {k: v.clone() for k, v in state["unet"].items()}
    unet[MOTION] = torch.full((32, 32), 7.0)
    return {"unet": unet, "text_encoder": text, "vae": {k: v.clone() for k, v in state["vae"].items()}}


def recipe(files, beta, inpaint=True):
    return MergeRecipe(inpaint=files["inpaint"] if inpaint else None, base=files["base"], personal=files["personal"],
                       loras=[LoraSpec(files["lora"], 0.8)], alpha=0.9, beta=beta)


_EXPECTED = {}


def expected(files, beta):
    if beta not in _EXPECTED:
        with MergePlan(recipe(files, beta)) as plan:
            _EXPECTED[beta] = {item: plan.compute(*item) for item in plan.items()}
    return _EXPECTED[beta]


def state_of(target):
    return target.state_dict() if isinstance(target, torch.nn.Module) else target


def assert_state(found, wanted):
    for (component, key), value in wanted.items():
        assert torch.equal(state_of(found[component])[key], value), (component, key)
    assert torch.equal(found["unet"][MOTION], torch.full((32, 32), 7.0))  # motion modules never touched


def assert_original(live):
    for component, state in tiny_models.component_state(9, 1).items():
        for key, value in state.items():
            assert torch.equal(state_of(live[component])[key], value), (component, key)


def test_in_memory_equals_fresh_merge_and_remerge_with_other_beta(files):
    live = targets()
    report = personalize_modules(live, recipe(files, 1.5))
    assert_state(live, expected(files, 1.5))
    assert report.components["unet"].lora == 1 and any("motion" in note for note in report.notes)
    personalize_modules(live, recipe(files, 0.5))
    assert_state(live, expected(files, 0.5))


def test_cancelled_merge_is_restorable_from_files(files):
    live, steps = targets(), []
    with pytest.raises(Cancelled):
        personalize_modules(live, recipe(files, 1.5), callback=lambda s, t, _: steps.append(s), cancel=lambda: len(steps) >= 100)
    assert len(steps) == 100
    personalize_modules(live, recipe(files, 0.5))
    assert_state(live, expected(files, 0.5))
    restore_modules(live, files["inpaint"])
    assert_original(live)


def test_backup_mode_remerge_and_restore(files):
    live, backup, steps = targets(), WeightBackup(), []
    with pytest.raises(Cancelled):  # cancelled in the checking pass: nothing written, nothing saved
        personalize_modules(live, recipe(files, 1.5, inpaint=False), backup=backup,
                            callback=lambda s, t, _: steps.append(s), cancel=lambda: len(steps) >= 250)
    assert len(backup) == 0
    assert_original(live)
    steps.clear()

    def written():  # steps of the writing pass (the second half of the 2·N reported steps)
        return steps[-1][0] - steps[-1][1] // 2 if steps else 0

    with pytest.raises(Cancelled):
        personalize_modules(live, recipe(files, 1.5, inpaint=False), backup=backup,
                            callback=lambda s, t, _: steps.append((s, t)), cancel=lambda: written() >= 250)
    assert len(backup) == 250
    personalize_modules(live, recipe(files, 0.5, inpaint=False), backup=backup)
    assert_state(live, expected(files, 0.5))
    personalize_modules(live, recipe(files, 1.5, inpaint=False), backup=backup)
    assert_state(live, expected(files, 1.5))
    backup.restore(live)
    assert_original(live)


def test_transformers4_text_prefix_and_wrong_targets(files):
    live = targets()
    live["text_encoder"] = {"text_model." + k: v.clone() for k, v in live["text_encoder"].state_dict().items()}
    personalize_modules(live, recipe(files, 1.0))
    for (component, key), value in expected(files, 1.0).items():
        if component == "text_encoder":
            assert torch.equal(live["text_encoder"]["text_model." + key], value)
    with pytest.raises(ValueError, match="not loaded from it"):
        personalize_modules({"unet": dict(tiny_models.component_state(4, 0)["unet"])}, recipe(files, 1.0))
    with pytest.raises(ValueError, match="WeightBackup"):
        personalize_modules(targets(), recipe(files, 1.0, inpaint=False))


def test_cast_once_into_the_target_dtype(files, tmp_path):
    """Modules upcast to fp32 from an fp16 file get the unrounded fp32 merge (one cast, into the target's dtype)."""
    state16 = {k: v.half() if v.is_floating_point() else v for k, v in tiny_models.ldm_state(9, 1).items()}
    inpaint16 = tiny_models.write_ldm_file(tmp_path / "inpaint16.safetensors", state16)
    live = {"unet": {k: v.half().float() for k, v in tiny_models.component_state(9, 1)["unet"].items()}}
    merge = MergeRecipe(inpaint=inpaint16, base=files["base"], personal=files["personal"], alpha=0.9, beta=1.5,
                        components=("unet",))
    personalize_modules(live, merge)
    rounded = 0
    with MergePlan(merge, dtype=torch.float32) as plan:
        for _, key in plan.items():
            value = plan.compute("unet", key)
            assert torch.equal(live["unet"][key], value), key
            rounded += int(not torch.equal(value.half().float(), value))
    assert rounded > 0
