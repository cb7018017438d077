"""LGVI / LGVI-I training recipes on tiny models (tiny SD/MagicBrush-style 2-D U-Net, tiny LGVI folder, tiny Llava).

References from outside the recipe: diffusers' ``DDPMScheduler.add_noise`` and 2-D ``UNet2DConditionModel``,
the binary cross-entropy and the official quadratic mask weight written from their formulas, Adam's first
update (|delta| = lr), and the pack's own inference loaders / chat stage for the saved folders.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test_lgvi_tiny as tiny
import tiny_models
from cococo_core.training.lgvi import LGVIIRecipe, LGVIRecipe
from cococo_core.training.lgvi.data import MixedBatches, RemovalSamples, interleave, normalize_response, read_jsonl, read_rovi
from cococo_core.training.lgvi.objective import add_noise, mask_loss, quadratic_mask_weight
from cococo_core.training.lgvi.unet_init import inflate_2d_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import make_tiny_lgvi  # noqa: E402

SIZE = make_tiny_lgvi.SIZE  # latent 8x8: the tiny U-Net's deepest level stays above 1x1 (GroupNorm in training mode)
FRAMES = 2


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """3 videos (3 frames: clips start at a seeded offset) with masks and 1 image pair without, simple layout."""
    return make_tiny_lgvi.write_dataset(tmp_path_factory.mktemp("lgvi-data")).parent


def _config(dataset_dir, **extra):
    data = {"samples": str(dataset_dir / "samples.jsonl"), "num_frames": FRAMES, "width": SIZE, "height": SIZE}
    return {"pretrained": str(tiny_models.sd_folder(in_channels=8)), "data": data, **extra}


def _adam(groups):
    return torch.optim.AdamW([{**g} for g in groups], weight_decay=0.0)


def _step(recipe, model, batch, optimizer, seed=0):
    loss, parts = recipe.loss(model, batch, torch.Generator().manual_seed(seed))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return {k: float(v) for k, v in parts.items()}


# ---------------------------------------------------------------- objective pieces vs their references
def test_forward_diffusion_matches_diffusers_ddpm_add_noise():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    latents, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    t = torch.tensor([0, 500, 999])
    expected = scheduler.add_noise(latents, noise, t)
    torch.testing.assert_close(add_noise(latents, noise, t, scheduler.alphas_cumprod), expected, rtol=1e-6, atol=1e-6)


def test_mask_loss_is_binary_cross_entropy_weighted_per_sample():
    logits, targets = torch.randn(2, 1, 2, 3, 3).double(), torch.rand(2, 1, 2, 3, 3).double()
    p = 1 / (1 + torch.exp(-logits))
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    weights = torch.tensor([1.0, 0.0])
    expected = (bce[0].mean() * 1.0 + bce[1].mean() * 0.0) / 2
    assert math.isclose(float(mask_loss(logits, targets, weights)), float(expected), rel_tol=1e-5)


def test_official_quadratic_mask_weight():
    weights = quadratic_mask_weight(torch.tensor([0, 250, 500, 1000]), 1000)
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.75, 1.0, 0.0], dtype=torch.float64))


def test_paper_prompt_markers_become_the_official_template_markers():
    assert normalize_response("ok <PROMPT> remove the cat </PROMPT>") == "ok {{prompt}} remove the cat {{/prompt}}"


# ---------------------------------------------------------------- model building
@pytest.mark.parametrize("in_channels", [8, 4])
def test_inflated_unet_keeps_the_2d_weights_and_reduces_to_the_2d_unet(in_channels):
    """MagicBrush-style 8-channel 2-D U-Net -> LGVI: every 2-D weight is kept (the inflated model is the 2-D model on
    an image once the new temporal layers are neutral); with in_channels=4 the video latent enters through a zero
    conv (paper eq. 2)."""
    from diffusers import UNet2DConditionModel

    folder = tiny_models.sd_folder(in_channels=8)
    reference = UNet2DConditionModel.from_pretrained(folder / "unet").double().eval()
    unet = inflate_2d_unet(folder, in_channels=in_channels).double().eval()
    source = reference.state_dict()
    for key, value in unet.state_dict().items():
        if key in source and not (key == "conv_in.weight" and in_channels == 4):
            assert torch.equal(value, source[key]), key
    assert unet.mask_decoder is not None and unet.config.temp_attn
    if in_channels == 4:
        assert not unet.condition_conv_in.weight.any() and not unet.condition_conv_in.bias.any()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".attn_temp.to_out.0." in name:
                param.zero_()  # the weight starts at zero (official init); the bias is the only temporal offset
    # one frame (an image sample): the video model is then exactly the 2-D model whatever its normalisation over frames
    z, c, ctx = torch.randn(1, 4, 1, 8, 8).double(), torch.randn(1, 4, 1, 8, 8).double(), torch.randn(1, 5, 32).double()
    video_in = c if in_channels == 8 else torch.zeros_like(c)
    with torch.no_grad():
        eps, _ = unet(z, 10, ctx, c)
        expected = reference(torch.cat([z, video_in], 1)[0].transpose(0, 1), 10, ctx).sample
    torch.testing.assert_close(eps[0].transpose(0, 1), expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- data
def test_images_are_one_frame_videos_and_batches_mix_videos_and_images_three_to_one(dataset_dir):
    samples = RemovalSamples(read_jsonl(dataset_dir / "samples.jsonl"), num_frames=FRAMES, size=(SIZE, SIZE))
    image = samples[3]
    assert image["video"].shape == (3, 1, SIZE, SIZE) and not image["has_mask"]
    assert samples[0]["video"].shape == (3, FRAMES, SIZE, SIZE) and samples[0]["has_mask"]
    assert float(samples[0]["mask"].amax()) == 1.0 and samples[0]["video"].min() >= -1
    assert samples[0]["response"].endswith("{{prompt}} remove the bird on the left {{/prompt}}")
    mixed = MixedBatches(samples, video_batch=1, image_batch=1)
    assert [samples.is_image(group[0]) for group in mixed.batches] == [False, False, False, True]
    assert [samples.frame_count(i) for i in range(4)] == [3, 3, 3, 1]
    assert interleave(list("vvvvvv"), list("ii"), (3, 1)) == list("vvvivvvi")


def test_rovi_records_map_onto_the_sample_layout(tmp_path):
    data = {"vid1": {"objects": [{"inpainted": "out/vid1_0", "mask": "masks/vid1_0", "expression": ["remove the dog", "the dog"]}]},
            "vid2": {"video": "frames/vid2", "inpainted": "out/vid2"}}
    (tmp_path / "train.json").write_text(json.dumps(data))
    records = read_rovi(tmp_path / "train.json", root=tmp_path / "rovi")
    assert records[0].video == str(tmp_path / "rovi" / "vid1") and records[0].target == str(tmp_path / "rovi" / "out/vid1_0")
    assert records[0].expression == "remove the dog" and records[1].mask is None
    (tmp_path / "other.json").write_text(json.dumps({"vid": {"result_dir": "x"}}))
    with pytest.raises(ValueError, match="result_dir"):
        read_rovi(tmp_path / "other.json")
    assert read_rovi(tmp_path / "other.json", fields={"target": "result_dir"})[0].target.endswith("x")


# ---------------------------------------------------------------- LGVI
def test_lgvi_groups_learning_rates_loss_weights_and_frozen_parts(dataset_dir):
    recipe = LGVIRecipe()
    config = _config(dataset_dir)
    model = recipe.build_model(config)
    groups = recipe.parameter_groups(model, config)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 3e-5), ("mask_decoder", 1e-4)]
    decoder = {id(p) for p in model.unet.mask_decoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == decoder
    assert not any(p.requires_grad for name in ("vae", "text_encoder") for p in getattr(model, name).parameters())
    frozen = {k: v.clone() for k, v in {**model.vae.state_dict(), **model.text_encoder.state_dict()}.items()}
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    dataset = recipe.build_dataset(config)
    batch = recipe.collate([dataset[0]])
    loss, parts = recipe.loss(model, batch, torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), float(parts["diffusion"]) + 0.001 * float(parts["mask"]), rel_tol=1e-5)
    loss.backward()
    optimizer = _adam(groups)
    optimizer.step()
    # Adam's first step moves a parameter by lr where |grad| >> eps: the per-module rates are in effect
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.unet.named_parameters()}
    assert math.isclose(moved["mask_decoder.final_conv.weight"], 1e-4, rel_tol=1e-2)
    assert math.isclose(moved["conv_in.weight"], 3e-5, rel_tol=1e-2)
    assert all(torch.equal(v, {**model.vae.state_dict(), **model.text_encoder.state_dict()}[k]) for k, v in frozen.items())


def test_mask_loss_weight_scales_the_mask_decoder_gradient(dataset_dir):
    """The mask decoder only feeds L_mask, so its gradient is lambda_2 times the gradient of L_mask."""
    recipe = LGVIRecipe()
    grads = {}
    for weight in (1.0, 0.001):
        config = _config(dataset_dir, loss_weights={"mask": weight}, condition_dropout={"text": 0, "video": 0})
        torch.manual_seed(0)
        model = recipe.build_model(config)
        batch = recipe.collate([recipe.build_dataset(config)[0]])
        loss, _ = recipe.loss(model, batch, torch.Generator().manual_seed(3))
        loss.backward()
        grads[weight] = model.unet.mask_decoder.final_conv.weight.grad.double()
    torch.testing.assert_close(grads[0.001], grads[1.0] * 0.001, rtol=1e-6, atol=1e-12)


def test_lgvi_losses_decrease_on_a_fixed_batch_and_the_saved_folder_loads_in_the_pipeline(dataset_dir, tmp_path):
    from cococo_core.lgvi import LGVIPipeline

    recipe = LGVIRecipe()
    config = _config(dataset_dir, learning_rates={"unet": 1e-3, "mask_decoder": 3e-3}, condition_dropout={"text": 0, "video": 0})
    model = recipe.build_model(config)
    optimizer = _adam(recipe.parameter_groups(model, config))
    dataset = recipe.build_dataset(config)
    batch = recipe.collate([dataset[0]])
    history = [_step(recipe, model, batch, optimizer) for _ in range(6)]
    assert history[-1]["diffusion"] < 0.9 * history[0]["diffusion"]
    assert history[-1]["mask"] < 0.9 * history[0]["mask"]
    image_parts = _step(recipe, model, recipe.collate([dataset[3]]), optimizer)  # a 1-frame video, no mask
    assert math.isfinite(image_parts["diffusion"]) and image_parts["mask"] == 0.0

    files = recipe.save_pretrained(model, tmp_path / "lgvi")
    assert tmp_path / "lgvi" / "unet" / "diffusion_pytorch_model.safetensors" in files
    with pytest.raises(FileExistsError):  # never written over existing files
        recipe.save_pretrained(model, tmp_path / "lgvi")
    config_json = json.loads((tmp_path / "lgvi" / "unet" / "config.json").read_text())
    assert config_json["_class_name"] == "RoviModel" and config_json["down_block_types"][0] == "CrossAttnDownBlock3D"
    pipe = LGVIPipeline.from_pretrained(tmp_path / "lgvi", device="cpu")  # strict key check
    for key, value in model.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key
    result = pipe(np.zeros((2, SIZE, SIZE, 3), np.float32), "remove the bird", num_inference_steps=2)
    assert result.frames.shape == (2, SIZE, SIZE, 3) and result.mask.shape == (2, SIZE, SIZE)


# ---------------------------------------------------------------- LGVI-I
@pytest.fixture(scope="module")
def lgvi_i_config(dataset_dir):
    return _config(dataset_dir, pretrained=str(tiny.lgvi_folder(8)), chat_model=str(tiny.llava_hf_folder()),
                   condition_dropout={"text": 0, "video": 0}, learning_rates={"unet": 1e-3, "mask_decoder": 3e-3, "mllm": 1e-3})


def test_lgvi_i_trains_the_mllm_parts_only_and_saves_what_the_chat_stage_loads(lgvi_i_config, tmp_path):
    from cococo_core.lgvi import LGVIChat, LGVIPipeline

    recipe = LGVIIRecipe()
    model = recipe.build_model(lgvi_i_config)
    hidden = model.chat_model.config.text_config.hidden_size
    assert model.transfer_head[0].in_features == hidden and model.transfer_head[2].out_features == tiny.TINY_UNET["cross_attention_dim"]
    groups = recipe.parameter_groups(model, lgvi_i_config)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-3), ("mask_decoder", 3e-3), ("mllm", 1e-3)]
    assert recipe.parameter_groups(model, {})[2]["lr"] == 1e-4  # the paper's default
    frozen = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in model.frozen_modules().items()}
    assert {"vae", "vision_tower", "language_layers", "language_norm", "lm_head"} <= set(frozen)
    assert not any(p.requires_grad for name in frozen for p in model.frozen_modules()[name].parameters())
    embed_before = model.chat_model.get_input_embeddings().weight.detach().clone()

    optimizer = _adam(groups)
    batch = recipe.collate([recipe.build_dataset(lgvi_i_config)[0]])
    loss, parts = recipe.loss(model, batch, torch.Generator().manual_seed(0))
    expected = float(parts["diffusion"]) + 0.001 * float(parts["mask"]) + 0.1 * float(parts["lm"])
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    history = [_step(recipe, model, batch, optimizer) for _ in range(4)]
    assert history[-1]["diffusion"] < history[0]["diffusion"] and history[-1]["lm"] < history[0]["lm"]
    assert history[-1]["mask"] < history[0]["mask"]
    for name, state in frozen.items():
        current = model.frozen_modules()[name].state_dict()
        assert all(torch.equal(v, current[k]) for k, v in state.items()), name
    assert not torch.equal(model.chat_model.get_input_embeddings().weight, embed_before)

    recipe.save_pretrained(model, tmp_path / "lgvi-i")
    weights = torch.load(tmp_path / "lgvi-i" / "llava" / "llava_weights.pth", weights_only=True)
    assert sorted(weights) == ["language_embedding", "transfer_layer", "vision_embedding"]
    chat = LGVIChat.load(tiny.llava_hf_folder(), tmp_path / "lgvi-i" / "llava" / "llava_weights.pth")
    states = torch.randn(1, 3, hidden)
    torch.testing.assert_close(chat.transfer_head(states), model.transfer_head(states))
    rows = weights["language_embedding"]["weight"].shape[0]
    assert rows == embed_before.shape[0]  # started from a llava-hf model without llava_weights.pth: every row
    torch.testing.assert_close(chat.model.get_input_embeddings().weight[:rows], model.chat_model.get_input_embeddings().weight[:rows])

    # teacher forcing = the chat stage's own sampling loop (KV cache, states collected token by token) made to
    # emit the response's tokens: same conditioning
    group = batch["groups"][0]
    frames = ((group["video"][0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    response = group["response"][0]
    forced = iter(model.chat_tokenizer(response, add_special_tokens=False).input_ids + [model.chat_tokenizer.eos_token_id])
    chat._next_token = lambda *args: next(forced)
    turn = chat.ask(chat.start(frames[0]), group["request"][0])
    assert turn.reply == response
    model.eval()
    with torch.no_grad():
        contexts, _ = model.contexts(group, None, torch.ones(1))
    assert contexts[0].shape[1] < len(turn.token_ids)  # from the last {{prompt}} on, not the whole reply
    torch.testing.assert_close(contexts[0], turn.context, rtol=1e-4, atol=1e-5)
    pipe = LGVIPipeline.from_pretrained(tmp_path / "lgvi-i", device="cpu", text_encoder=False)
    result = pipe(frames.numpy(), context=turn.context, num_inference_steps=2)
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(dataset_dir):
    recipe = LGVIRecipe()
    results = []
    for checkpointing in (False, True):
        config = _config(dataset_dir)
        torch.manual_seed(0)
        model = recipe.build_model(config)
        if checkpointing:
            model.enable_gradient_checkpointing()  # what the loop calls for gradient_checkpointing: true
        assert ("forward" in vars(model.unet.down_blocks[0].attentions[0])) == checkpointing  # recomputed in backward
        batch = recipe.collate([recipe.build_dataset(config)[0]])
        loss, _ = recipe.loss(model, batch, torch.Generator().manual_seed(1))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.unet.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def small_chat_folder(tmp_path_factory):
    """A llava-interleave-qwen-0.5b-like chat model: Qwen2 body, another hidden size (48), tied embeddings."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    text = Qwen2Config(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=tiny.LGVI_VOCAB + 20, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                              patch_size=14, projection_dim=16)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=tiny.LGVI_VOCAB, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("small-chat")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tiny.write_llama_tokenizer(folder)
    return folder


def test_lgvi_i_with_a_small_chat_model_sizes_the_transfer_head_from_its_hidden_size(lgvi_i_config, small_chat_folder, tmp_path):
    from cococo_core.lgvi import LGVIChat

    recipe = LGVIIRecipe()
    config = {**lgvi_i_config, "chat_model": str(small_chat_folder)}
    model = recipe.build_model(config)
    assert (model.transfer_head[0].in_features, model.transfer_head[2].out_features) == (48, tiny.TINY_UNET["cross_attention_dim"])
    assert "lm_head" not in model.frozen_modules()  # tied to the trained embeddings
    optimizer = _adam(recipe.parameter_groups(model, config))
    batch = recipe.collate([recipe.build_dataset(config)[1]])
    parts = _step(recipe, model, batch, optimizer)
    assert all(math.isfinite(value) for value in parts.values())
    recipe.save_pretrained(model, tmp_path / "lgvi-i-small")
    chat = LGVIChat.load(small_chat_folder, tmp_path / "lgvi-i-small" / "llava" / "llava_weights.pth")
    turn = chat.ask(chat.start(np.zeros((SIZE, SIZE, 3), np.float32)), "remove the bird", max_new_tokens=4)
    assert turn.context.shape[-1] == tiny.TINY_UNET["cross_attention_dim"]
