"""Prompt embeddings are padded to the text encoder's 77 positions, whatever the tokenizer folder declares
(ComfyUI's comfy/sd1_tokenizer says 8192; a folder of vocab.json + merges.txt alone gives 1e30)."""
import json
import shutil

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import tiny_models
from cococo_core.pipeline.text import encode_prompts


@pytest.mark.parametrize("declared", [None, 8192], ids=["no-config", "comfyui-8192"])
def test_prompts_are_padded_to_the_text_encoders_positions(tmp_path, declared):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_models.tokenizer_folder() / name, folder / name)
    if declared is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": declared}))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    encoder = CLIPTextModel(CLIPTextConfig(**tiny_models.TINY_CLIP_CONFIG)).eval()
    prompts = ["a red bird", "and"]
    embeddings = encode_prompts(tokenizer, encoder, prompts)
    assert embeddings.shape == (2, 77, tiny_models.TINY_CLIP_CONFIG["hidden_size"])
    # reference: the official pipeline's CLIP call, with SD-1.x's 77 tokens written out
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(embeddings, encoder(ids)[0], rtol=0, atol=0)
