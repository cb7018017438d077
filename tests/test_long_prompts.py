"""Prompts over 77 tokens: the faithful default cuts them and names the dropped words; ``long_prompts="chunks"``
encodes 75-token chunks separately and concatenates them (ComfyUI / A1111). References: the ordinary 77-token
encoding of each chunk's words on its own, in float64 (batch shapes differ)."""
import logging
import string

import numpy as np
import pytest
import torch

from cococo_core.pipeline.text import encode_prompts
from test_pipeline_helpers import moving_disc_mask, pan_clip, tiny_parts, tiny_pipeline

# single letters are one token each in the tiny CLIP vocabulary: 100 words = 100 tokens
WORDS = [string.ascii_lowercase[i % 26] for i in range(100)]
LONG = " ".join(WORDS)


@pytest.fixture(scope="module")
def text_model():
    _, text_encoder, tokenizer, _ = tiny_parts(dtype=torch.float64)
    return tokenizer, text_encoder


def test_the_tiny_vocabulary_gives_one_token_per_word(text_model):
    tokenizer, _ = text_model
    assert len(tokenizer(LONG, add_special_tokens=False).input_ids) == len(WORDS)


def test_truncation_warns_with_the_dropped_words(text_model, caplog):
    tokenizer, text_encoder = text_model
    with caplog.at_level(logging.WARNING, logger="cococo_core.pipeline.text"):
        embeds = encode_prompts(tokenizer, text_encoder, [LONG])
    assert embeds.shape == (1, 77, 32)
    assert repr(" ".join(WORDS[75:])) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cococo_core.pipeline.text"):
        encode_prompts(tokenizer, text_encoder, [" ".join(WORDS[:75])])
    assert not caplog.records


def test_short_prompts_are_the_same_in_both_modes(text_model):
    tokenizer, text_encoder = text_model
    prompts = ["", "a red car on a road"]
    assert torch.equal(encode_prompts(tokenizer, text_encoder, prompts, "chunks"),
                       encode_prompts(tokenizer, text_encoder, prompts))


def test_chunks_are_each_chunk_encoded_on_its_own(text_model):
    tokenizer, text_encoder = text_model
    embeds = encode_prompts(tokenizer, text_encoder, ["", LONG], "chunks")
    assert embeds.shape == (2, 2 * 77, 32)
    first = encode_prompts(tokenizer, text_encoder, [" ".join(WORDS[:75])])
    second = encode_prompts(tokenizer, text_encoder, [" ".join(WORDS[75:])])
    empty = encode_prompts(tokenizer, text_encoder, [""])
    torch.testing.assert_close(embeds[1:, :77], first, rtol=0, atol=1e-12)
    torch.testing.assert_close(embeds[1:, 77:], second, rtol=0, atol=1e-12)
    # the negative prompt gets as many chunks: empty prompts fill the missing one
    torch.testing.assert_close(embeds[:1], torch.cat([empty, empty], dim=1), rtol=0, atol=1e-12)


def test_pipeline_runs_with_chunked_prompts_and_uses_the_words_past_77(caplog):
    pipe = tiny_pipeline()
    video, mask = pan_clip(2, 32, 32), moving_disc_mask(2, 32, 32)
    run = dict(num_inference_steps=1, guidance_scale=3.0, seed=1, output="uint8", paste_back=False)
    cut = pipe(video, mask, LONG, **run)
    chunked = pipe(video, mask, LONG, long_prompts="chunks", **run)
    other_tail = pipe(video, mask, " ".join(WORDS[:75] + ["z"] * 25), long_prompts="chunks", **run)
    assert chunked.shape == cut.shape == (2, 32, 32, 3)
    assert not np.array_equal(chunked.numpy(), other_tail.numpy())  # the words after token 75 matter
    with pytest.raises(ValueError, match="long_prompts"):
        pipe(video, mask, LONG, long_prompts="split", **run)


def test_inpaint_command_takes_long_prompt_chunks(tmp_path, caplog):
    import tiny_models
    from cococo_core import cli
    from cococo_core.video_io import read_frames, write_video

    video = write_video(tmp_path / "in.mp4", pan_clip(2, 32, 32), 8.0)
    mask = write_video(tmp_path / "mask.mp4", np.repeat(moving_disc_mask(2, 32, 32)[..., None], 3, -1), 8.0)
    common = ["inpaint", "--base", str(tiny_models.sd_folder()), "--motion", str(tiny_models.motion_folder()),
              "--video", str(video), "--mask", str(mask), "--prompt", LONG, "--steps", "1"]
    with caplog.at_level(logging.WARNING, logger="cococo_core.pipeline.text"):
        assert cli.main(common + ["--out", str(tmp_path / "cut.mp4")]) == 0
    assert "dropped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cococo_core.pipeline.text"):
        assert cli.main(common + ["--out", str(tmp_path / "chunks.mp4"), "--long-prompt", "chunks"]) == 0
    assert "dropped" not in caplog.text and read_frames(tmp_path / "chunks.mp4").frames.shape[0] == 2
