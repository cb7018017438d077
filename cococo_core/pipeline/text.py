"""Prompt embeddings as the official pipeline makes them (cococo-official.md §3.4): CLIP tokenizer with
max-length padding (77) and truncation, no attention mask, the text encoder's last hidden state
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
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]
