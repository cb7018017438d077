"""PEFT LoRA / DoRA files merged exactly: the references are the real ``peft`` package's own merges.

Each adapter is injected by PEFT into the tiny SD-1.5 (4-channel) U-Net or text encoder, given random
factors, written by PEFT's ``save_pretrained`` (``adapter_model.safetensors`` + ``adapter_config.json``)
or by diffusers' ``save_lora_weights`` (``lora_adapter_metadata`` with one LoraConfig per component),
and merged by PEFT (``merge_and_unload`` / ``LoraLayer.merge``). The task-vector merge with α = 1,
β = 1 must add exactly PEFT's W_merged − W_SD1.5 to the inpainting weights.
"""
import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open

import tiny_models
from cococo_core.personalize import LoraSpec, MergePlan, MergeRecipe

peft = pytest.importorskip("peft")  # requirements-test.txt
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

SQUARE_CONV = "down_blocks.0.resnets.0.conv1.weight"      # 32 -> 32, 3x3
WIDENING_CONV = "down_blocks.2.resnets.0.conv1.weight"    # 32 -> 64, 3x3
PROJ_IN = "down_blocks.0.attentions.0.proj_in.weight"     # 1x1 conv
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
TO_K2 = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.fixture(scope="module")
def models():
    return {"inpaint": tiny_models.component_state(9, 1), "base": tiny_models.component_state(4, 0)}


@pytest.fixture(scope="module")
def sd15_modules():
    """The tiny SD-1.5 modules the adapters are trained on (copied per use)."""
    return tiny_models.components(4, 0)


def _randomize(model, seed):
    """Random LoRA factors (PEFT starts lora_B at zero) and magnitudes that differ from ‖W + ΔW‖."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                param.mul_(0.5 + torch.rand(param.shape, generator=gen))


def _peft_merged(model):
    """PEFT's own merge of every LoRA layer: {weight or bias key: merged tensor}."""
    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            module.merge()
            base = module.get_base_layer()
            name = name.removeprefix("base_model.model.")
            merged[name + ".weight"] = base.weight.detach().clone()
            if base.bias is not None and module.lora_bias.get("default"):
                merged[name + ".bias"] = base.bias.detach().clone()
    return merged


def save_pretrained_adapter(folder, sd15_modules, config, component="unet", seed=0):
    """PEFT's save_pretrained folder and PEFT's merged deltas {key: W_merged - W_SD1.5}."""
    model = get_peft_model(copy.deepcopy(sd15_modules[component]), config)
    _randomize(model, seed)
    model.save_pretrained(str(folder))
    base = sd15_modules[component].state_dict()
    return folder, {k: v - base[k] for k, v in _peft_merged(model).items()}


def our_deltas(models, lora, keys, component="unet", **spec):
    recipe = MergeRecipe(inpaint=models["inpaint"], base=models["base"], loras=[LoraSpec(lora, **spec)])
    with MergePlan(recipe, dtype=torch.float32) as plan:
        deltas = {k: plan.compute(component, k) - models["inpaint"][component][k] for k in keys}
        return deltas, plan.report


def assert_deltas(found, wanted):
    assert found.keys() == wanted.keys()
    for key, value in wanted.items():
        assert value.abs().max() > 1e-3, key  # a real change, not a zero LoRA
        torch.testing.assert_close(found[key], value, rtol=1e-4, atol=2e-5, msg=key)


def test_save_pretrained_alpha_is_read_from_adapter_config(models, sd15_modules, tmp_path):
    config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_v", "proj_in", "conv1"])
    folder, wanted = save_pretrained_adapter(tmp_path / "adapter", sd15_modules, config)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # the alpha is only in adapter_config.json
    assert {TO_Q, PROJ_IN, SQUARE_CONV, WIDENING_CONV} <= set(wanted)
    for source in (folder / "adapter_model.safetensors", folder):  # the file, or PEFT's adapter folder
        found, report = our_deltas(models, source, wanted)
        assert_deltas(found, wanted)
        assert not any("no alpha" in note for note in report.notes)
        assert not any(report.unused.get(f"LoRA {source}", {}))

    alone = tmp_path / "alone" / "adapter_model.safetensors"  # the weights without their config
    alone.parent.mkdir()
    shutil.copy(folder / "adapter_model.safetensors", alone)
    found, report = our_deltas(models, alone, [TO_Q])
    torch.testing.assert_close(found[TO_Q], 2 * wanted[TO_Q], rtol=1e-4, atol=2e-5)  # scale 1 instead of 2/4
    assert any("no alpha" in note and "adapter_config.json" in note for note in report.notes)

    config_of = json.loads((folder / "adapter_config.json").read_text())
    for change, message in (({"r": 8}, "rank 4 but .*r = 8"), ({"peft_type": "LOHA"}, "PEFT LOHA adapter")):
        (alone.parent / "adapter_config.json").write_text(json.dumps({**config_of, **change}))
        with pytest.raises(ValueError, match=message):  # a config that cannot belong to these weights
            our_deltas(models, alone, [TO_Q])


def test_rslora_alpha_pattern_and_rank_pattern(models, sd15_modules, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "conv1"],
                        rank_pattern={"attn1.to_q": 2, "down_blocks.2.resnets.0.conv1": 6},
                        alpha_pattern={"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": 3,
                                       "resnets.0.conv1": 5})
    folder, wanted = save_pretrained_adapter(tmp_path / "rs", sd15_modules, config, seed=1)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        assert handle.get_slice("base_model.model." + TO_Q[:-7] + ".lora_A.weight").get_shape() == [2, 32]
    found, _ = our_deltas(models, folder / "adapter_model.safetensors", wanted)
    assert_deltas(found, wanted)
    # the formula from PEFT's documentation, for one module: alpha_pattern 3, r = 4, rsLoRA: 3 / sqrt(4)
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    prefix = "base_model.model." + TO_K2[: -len(".weight")]
    expected = 3 / 4 ** 0.5 * state[prefix + ".lora_B.weight"] @ state[prefix + ".lora_A.weight"]
    torch.testing.assert_close(found[TO_K2], expected, rtol=1e-4, atol=2e-5)


def test_dora_on_square_and_widening_convs_and_linear(models, sd15_modules, tmp_path):
    config = LoraConfig(r=4, lora_alpha=6, use_dora=True, init_lora_weights=False, target_modules=["conv1", "to_q"])
    folder, wanted = save_pretrained_adapter(tmp_path / "dora", sd15_modules, config, seed=2)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:  # PEFT's stored layouts
        conv = "base_model.model." + WIDENING_CONV[: -len(".weight")] + ".lora_magnitude_vector"
        assert handle.get_slice(conv).get_shape() == [1, 64, 1, 1]
        assert handle.get_slice("base_model.model." + TO_Q[:-7] + ".lora_magnitude_vector").get_shape() == [32]
    found, _ = our_deltas(models, folder / "adapter_model.safetensors", wanted)
    assert {SQUARE_CONV, WIDENING_CONV, TO_Q} <= set(found)
    assert_deltas(found, wanted)
    half, _ = our_deltas(models, folder / "adapter_model.safetensors", [SQUARE_CONV], strength=0.5)  # strength s: W + s·(W' − W)
    torch.testing.assert_close(half[SQUARE_CONV], 0.5 * wanted[SQUARE_CONV], rtol=1e-4, atol=2e-5)


@pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape")  # PEFT flags 1-D lora_B.bias
def test_lora_bias(models, sd15_modules, tmp_path):
    config = LoraConfig(r=2, lora_alpha=4, lora_bias=True, init_lora_weights=False, target_modules=["proj_in", "conv2"])
    folder, wanted = save_pretrained_adapter(tmp_path / "bias", sd15_modules, config, seed=3)
    assert PROJ_IN[:-6] + "bias" in wanted
    found, _ = our_deltas(models, folder / "adapter_model.safetensors", wanted)
    assert_deltas(found, wanted)


def _diffusers_file(folder, sd15_modules, unet_config, text_config, diffusers_names, seed=4):
    """The layout of diffusers' training scripts: adapters added to the U-Net (diffusers' add_adapter) and the
    text encoder (PEFT's inject_adapter_in_model, what transformers' add_adapter calls), saved by
    StableDiffusionPipeline.save_lora_weights with each component's LoraConfig as metadata."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    unet, text = copy.deepcopy(sd15_modules["unet"]), copy.deepcopy(sd15_modules["text_encoder"])
    unet.add_adapter(unet_config)
    text = inject_adapter_in_model(text_config, text)
    _randomize(unet, seed)
    _randomize(text, seed + 1)
    layers = {name: get_peft_model_state_dict(model) for name, model in (("unet", unet), ("text", text))}
    if diffusers_names:
        layers = {name: convert_state_dict_to_diffusers(state) for name, state in layers.items()}
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text"],
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())
    deltas = {}
    for component, model in (("unet", unet), ("text_encoder", text)):
        base = sd15_modules[component].state_dict()
        deltas[component] = {k: v - base[k] for k, v in _peft_merged(model).items()}
    return folder / "pytorch_lora_weights.safetensors", deltas


@pytest.mark.parametrize("diffusers_names", [False, True], ids=["peft-keys", "diffusers-keys"])
def test_diffusers_metadata_with_one_alpha_per_component(models, sd15_modules, tmp_path, diffusers_names):
    unet_config = LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=["to_q", "to_k", "to_out.0"],
                             alpha_pattern={"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": 2})
    text_config = LoraConfig(r=4, lora_alpha=1, use_rslora=True, init_lora_weights=False,
                             target_modules=["q_proj", "v_proj", "fc1"])
    path, wanted = _diffusers_file(tmp_path, sd15_modules, unet_config, text_config, diffusers_names)
    with safe_open(str(path), "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert metadata["unet.lora_alpha"] == 16 and metadata["text_encoder.lora_alpha"] == 1
    for component in ("unet", "text_encoder"):
        found, report = our_deltas(models, path, wanted[component], component=component)
        assert_deltas(found, wanted[component])
    assert not any(report.unused.values())
