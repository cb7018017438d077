"""LGVI-I chat stage: prompts, {{prompt}} markers, image preprocessing, LLaVA loading, conditioning,
multi-turn, staged unloading, end to end with the diffusion stage."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import test_lgvi_tiny as tiny
from cococo_core.lgvi.chat import LGVIChat, _llava_parts
from cococo_core.lgvi.clip_image import CLIP_MEAN, CLIP_STD, clip_image_tensor
from cococo_core.lgvi.interactive import remove_with_chat
from cococo_core.lgvi.llava_loading import apply_lgvi_weights, load_lgvi_mllm_weights, load_llava
from cococo_core.lgvi.prompting import (
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT,
    Conversation,
    extract_removal_phrase,
    prompt_start_index,
    select_conditioning,
    tokenize_with_image,
)
from cococo_core.lgvi.unet_loading import CheckpointKeyError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.llava_hf_folder())


@pytest.fixture(scope="module")
def chat():
    folder = tiny.lgvi_folder(8, interactive=True)
    return LGVIChat.load(tiny.llava_hf_folder(), folder / "llava" / "llava_weights.pth", device="cpu")


def _count(text, tokenizer):
    return len(tokenizer(text).input_ids)


def test_marker_start_index_edge_cases(tokenizer):
    assert prompt_start_index("Sure, I can do that.", tokenizer) == 1  # no marker: BOS only
    reply = "Sure. {{prompt}} remove the dog {{/prompt}} And {{prompt}} remove the bird {{/prompt}}"
    # text before the LAST marker, earlier markers dropped, re-tokenised with BOS
    assert prompt_start_index(reply, tokenizer) == _count("Sure.  remove the dog {{/prompt}} And ", tokenizer)
    assert extract_removal_phrase(reply) == "remove the bird"
    at_end = "I will remove it. {{prompt}}"
    assert prompt_start_index(at_end, tokenizer) == _count("I will remove it. ", tokenizer)
    assert extract_removal_phrase(at_end) is None and extract_removal_phrase("no marker") is None
    assert extract_removal_phrase("{{prompt}} remove the man") == "remove the man"  # unterminated


def test_select_conditioning_never_returns_an_empty_context():
    features = torch.arange(5.0).view(1, 5, 1)
    assert select_conditioning(features, 2)[0, :, 0].tolist() == [2.0, 3.0, 4.0]
    assert select_conditioning(features, 5).shape[1] == 5  # marker at the very end: whole reply
    assert select_conditioning(features, 9).shape[1] == 5  # past the end: whole reply (official)


def test_v1_inpaint_prompt_and_multi_turn_format(tokenizer):
    conversation = Conversation()
    conversation.ask("remove the bird")
    assert conversation.prompt() == SYSTEM_PROMPT + " User: <image>\nremove the bird Assistant:"
    conversation.answer("Sure. {{prompt}} remove the bird {{/prompt}}")
    conversation.ask("what about the other dog?")
    assert conversation.prompt().endswith(
        " User: <image>\nremove the bird Assistant: Sure. {{prompt}} remove the bird {{/prompt}}</s>"
        "User: what about the other dog? Assistant:"
    )
    with pytest.raises(ValueError):
        conversation.ask("too early")
    ids = tokenize_with_image(conversation.prompt(), tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and tokenizer.eos_token_id in ids  # "</s>" between turns


def test_first_frame_is_resized_and_centre_cropped_without_torchvision():
    frame = np.zeros((320, 568, 3), dtype=np.uint8)
    frame[:, :116] = (255, 0, 0)
    frame[:, -116:] = (0, 0, 255)
    frame[:, 116:-116] = (0, 255, 0)
    pixels = clip_image_tensor(frame, 336)
    assert pixels.shape == (1, 3, 336, 336)
    # 320x568 -> 336x596, crop offset 130: the red / blue margins are cut away, the rest is green
    expected = torch.tensor([(0 - CLIP_MEAN[0]) / CLIP_STD[0], (1 - CLIP_MEAN[1]) / CLIP_STD[1], (0 - CLIP_MEAN[2]) / CLIP_STD[2]])
    torch.testing.assert_close(pixels[0, :, 10:-10, 10:-10].mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)
    tall = clip_image_tensor(torch.rand(500, 100, 3), 28)
    assert tall.shape == (1, 3, 28, 28)


def test_original_layout_maps_onto_transformers_llava():
    reference = tiny.llava_model().state_dict()
    llava_path, clip_path = tiny.llava_original_folders()
    model, tokenizer = load_llava(llava_path, clip_path=clip_path)
    loaded = model.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k].half().float()) for k in reference if "vision_tower" not in k)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference if "vision_tower" in k)
    assert tokenizer.eos_token_id == 2
    with pytest.raises(FileNotFoundError, match="clip"):
        load_llava(llava_path)  # the vision tower folder is required


def test_lgvi_weights_replace_embeddings_projector_and_build_the_head():
    model, _ = load_llava(tiny.llava_hf_folder())
    stock = model.get_input_embeddings().weight.detach().clone()
    weights = load_lgvi_mllm_weights(tiny.lgvi_folder(8, interactive=True) / "llava" / "llava_weights.pth")
    head, vocab = apply_lgvi_weights(model, weights)
    embed = model.get_input_embeddings().weight
    assert vocab == tiny.LGVI_VOCAB
    assert torch.equal(embed[:vocab], weights["language_embedding.weight"].float())
    assert torch.equal(embed[vocab:], stock[vocab:])  # llava-hf's extra rows (<image>, <pad>) stay
    projector = getattr(model, "model", model).multi_modal_projector  # transformers 5 / 4.x layout
    assert torch.equal(projector.linear_2.bias, weights["vision_embedding.2.bias"].float())
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear", "Dropout"] and head[2].bias is None
    assert head[2].out_features == tiny.TINY_UNET["cross_attention_dim"]
    broken = {k: v for k, v in weights.items() if not k.startswith("transfer_layer")}
    with pytest.raises(CheckpointKeyError, match="transfer_layer"):
        apply_lgvi_weights(model, broken)


@pytest.fixture(scope="module")
def chat64():
    """The chat model in float64: generation with a key/value cache and one full forward are differently shaped
    computations, whose float32 rounding differs by CPU."""
    folder = tiny.lgvi_folder(8, interactive=True)
    return LGVIChat.load(tiny.llava_hf_folder(), folder / "llava" / "llava_weights.pth", device="cpu",
                         dtype=torch.float64)


def test_chat_conditioning_is_the_transfer_head_of_last_layer_states(chat64):
    chat = chat64
    session = chat.start(np.full((40, 56, 3), 128, dtype=np.uint8))
    turn = chat.ask(session, "could you make the street look less crowded?", seed=3, max_new_tokens=6)
    assert isinstance(turn.reply, str) and 1 <= len(turn.token_ids) <= 6
    assert max(turn.token_ids) < tiny.LGVI_VOCAB  # logits past the LGVI vocabulary are masked
    # independent recomputation: one full forward over prompt + generated tokens, no cache
    prompt_ids = tokenize_with_image(_first_prompt(turn), chat.tokenizer)
    embeds = chat._prompt_embeddings(prompt_ids, session.image)
    generated = torch.tensor([turn.token_ids])
    full = torch.cat([embeds, chat.model.get_input_embeddings()(generated)], dim=1)
    with torch.no_grad():
        hidden = _llava_parts(chat.model)[0](inputs_embeds=full).last_hidden_state
        start_pos = embeds.shape[1] - 1
        states = hidden[:, start_pos : start_pos + len(turn.token_ids)]
        features = chat.transfer_head(states)
    start = prompt_start_index(turn.reply, chat.tokenizer)
    expected = select_conditioning(features, start)
    # float64 throughout; the context may come back as float32 (one rounding, 2**-24 relative)
    torch.testing.assert_close(turn.context.double(), expected.double(), rtol=2**-23, atol=1e-12)
    again = chat.ask(chat.start(session.image), "could you make the street look less crowded?", seed=3, max_new_tokens=6)
    assert again.token_ids == turn.token_ids  # seeded sampling


def _first_prompt(turn):
    conversation = Conversation()
    conversation.ask(turn.request)
    return conversation.prompt()


def test_follow_up_requests_continue_the_conversation(chat):
    session = chat.start(np.zeros((28, 28, 3), dtype=np.uint8))
    first = chat.ask(session, "remove the dog on the left", max_new_tokens=4)
    second = chat.ask(session, "what about the other dog?", max_new_tokens=4)
    assert [turn[0] for turn in session.conversation.turns] == ["remove the dog on the left", "what about the other dog?"]
    assert session.conversation.turns[0][1] == first.reply and session.conversation.turns[1][1] == second.reply
    assert second.context.shape[-1] == tiny.TINY_UNET["cross_attention_dim"]


def test_staged_unload_frees_the_chat_model_before_diffusion():
    events, refs = [], {}

    def chat_loader(*args, **kwargs):
        loaded = LGVIChat.load(*args, **kwargs)
        refs["model"] = weakref.ref(loaded.model)
        events.append("chat loaded")
        return loaded

    def pipeline_loader(*args, **kwargs):
        gc.collect()
        events.append("chat freed" if refs["model"]() is None else "chat still alive")
        from cococo_core.lgvi.pipeline import LGVIPipeline

        assert kwargs["text_encoder"] is False  # LGVI-I needs no CLIP text encoder
        return LGVIPipeline.from_pretrained(*args, **kwargs)

    folder = tiny.lgvi_folder(8, interactive=True)
    video = torch.rand(2, 32, 32, 3)
    result = remove_with_chat(video, "remove the bird", lgvi_path=folder, llava_path=tiny.llava_hf_folder(),
                              device="cpu", max_new_tokens=4, num_inference_steps=1, guidance_scale=1.0,
                              chat_loader=chat_loader, pipeline_loader=pipeline_loader)
    assert events == ["chat loaded", "chat freed"]
    assert result.frames.shape == video.shape and result.mask.shape == video.shape[:3]
    assert isinstance(result.reply, str) and len(result.session.conversation.turns) == 1


def test_chat_refuses_to_run_after_unload():
    folder = tiny.lgvi_folder(8, interactive=True)
    unloaded = LGVIChat.load(tiny.llava_hf_folder(), folder / "llava" / "llava_weights.pth", device="cpu")
    unloaded.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        unloaded.ask(unloaded.start(np.zeros((8, 8, 3), np.uint8)), "hi")
    with pytest.raises(ValueError, match="bitsandbytes"):
        LGVIChat.load(tiny.llava_hf_folder(), folder / "llava" / "llava_weights.pth", quantization="4bit", device="cpu")


def test_generation_uses_the_cache_api_without_future_warnings(chat):
    """transformers 5.24 deprecates LlamaModel's ``past_key_values`` (removed in 5.40) with a FutureWarning;
    the project's pytest settings hide FutureWarning, so it is caught here explicitly."""
    import warnings

    session = chat.start(np.random.default_rng(0).random((48, 64, 3)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chat.ask(session, "remove the dog", seed=0, max_new_tokens=3)
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], [str(w.message) for w in caught]
