"""Prompt embeddings as the official pipeline makes them (cococo-official.md §3.4): CLIP tokenizer with
max-length padding and truncation to the text encoder's ``max_position_embeddings`` (77 for SD-1.x; the
tokenizer's ``model_max_length`` is no guide: ComfyUI's ``sd1_tokenizer`` declares 8192, a folder with only
vocab.json + merges.txt gives 1e30), no attention mask, the text encoder's last hidden state
(after the final layer norm, no clip skip)."""
from __future__ import annotations

import torch


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 77, hidden) float tensor on the text encoder's device."""
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ValueError(f"prompts must be strings, got {type(prompt).__name__}")
    device = next(text_encoder.parameters()).device
    length = text_encoder.config.max_position_embeddings
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]
