"""Prompt embeddings as the official pipeline makes them (cococo-official.md §3.4): CLIP tokenizer with
max-length padding and truncation to the text encoder's ``max_position_embeddings`` (77 for SD-1.x; the
tokenizer's ``model_max_length`` is no guide: ComfyUI's ``sd1_tokenizer`` declares 8192, a folder with only
vocab.json + merges.txt gives 1e30), no attention mask, the text encoder's last hidden state
(after the final layer norm, no clip skip).

Longer prompts are cut there, as upstream; the words dropped are logged. ``long_prompts="chunks"`` instead
encodes them the way ComfyUI and AUTOMATIC1111 do: the tokens are split into chunks of 75, each chunk is
wrapped in start/end tokens, padded to 77 and encoded on its own, and the chunks' hidden states are
concatenated along the sequence (prompts of one batch get the same number of chunks; missing ones are
empty prompts). The U-Net's cross-attention takes any number of context tokens.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

LONG_PROMPTS = ("truncate", "chunks")
CHUNK_TOKENS = 75  # 77 positions minus the start and end tokens


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], long_prompts: str = "truncate") -> torch.Tensor:
    """(len(prompts), 77, hidden) float tensor on the text encoder's device ((…, 77·chunks, hidden) with
    ``long_prompts="chunks"``)."""
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ValueError(f"prompts must be strings, got {type(prompt).__name__}")
    if long_prompts not in LONG_PROMPTS:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPTS}, got {long_prompts!r}")
    device = next(text_encoder.parameters()).device
    if long_prompts == "chunks":
        return _encode_chunks(tokenizer, text_encoder, prompts, device)
    length = text_encoder.config.max_position_embeddings
    warn_truncated(tokenizer, prompts, length)
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


def dropped_words(tokenizer, prompt: str, max_length: int) -> str:
    """The text a ``max_length``-token encoding (start and end tokens included) cuts off the end of ``prompt``."""
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
    return tokenizer.decode(ids[max_length - 2:]).strip() if len(ids) > max_length - 2 else ""


def warn_truncated(tokenizer, prompts: list[str], max_length: int) -> None:
    """Log, per prompt longer than ``max_length`` tokens, the words the text encoder will not see."""
    for prompt in prompts:
        dropped = dropped_words(tokenizer, prompt, max_length)
        if dropped:
            logger.warning("the prompt is longer than the text encoder's %d tokens; these words are dropped: %r. "
                           "Shorten it, or encode long prompts in chunks (long_prompts='chunks', --long-prompt "
                           "chunks)", max_length, dropped)


def _encode_chunks(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    contents = [tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids for prompt in prompts]
    count = max(1, *(-(-len(ids) // CHUNK_TOKENS) for ids in contents))
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    rows = []
    for ids in contents:
        for index in range(count):
            chunk = ids[index * CHUNK_TOKENS:(index + 1) * CHUNK_TOKENS]
            rows.append([start, *chunk, end] + [pad] * (CHUNK_TOKENS - len(chunk)))
    hidden = text_encoder(torch.tensor(rows, device=device))[0]
    return hidden.reshape(len(prompts), count * hidden.shape[1], hidden.shape[2])
