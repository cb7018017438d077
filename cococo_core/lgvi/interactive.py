"""LGVI-I end to end with staged memory (spec §8.1): load the chat model, answer the request, keep
only its outputs (reply, phrase, (1, L, 768) conditioning), free it, then load and run diffusion.
Peak memory is max(chat, diffusion) instead of their sum. A follow-up request passes the previous
result's ``session`` back in (the conversation and the first frame survive the unload).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from .chat import ChatSession, LGVIChat, default_llava_weights
from .pipeline import LGVIPipeline, RemovalResult

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class InteractiveResult:
    reply: str
    phrase: str | None
    frames: torch.Tensor  # (F, H, W, 3) in [0, 1]
    mask: torch.Tensor | None  # (F, H, W) in [0, 1]
    session: ChatSession  # pass back for a follow-up request


def remove_with_chat(
    frames,
    request: str,
    *,
    lgvi_path,
    llava_path,
    llava_weights=None,
    clip_path=None,
    session: ChatSession | None = None,
    device=None,
    dtype=None,
    quantization: str | None = None,
    seed: int = 0,
    temperature: float = 0.2,
    max_new_tokens: int = 1024,
    callback=None,
    cancel=None,
    chat_loader=LGVIChat.load,
    pipeline_loader=LGVIPipeline.from_pretrained,
    **diffusion_options,
) -> InteractiveResult:
    """Answer ``request`` about ``frames`` with LLaVA + LGVI-I weights, then remove what it asked for.
    ``diffusion_options`` go to :meth:`LGVIPipeline.__call__` (steps, guidance, size, windows ...)."""
    chat = chat_loader(llava_path, llava_weights or default_llava_weights(lgvi_path), clip_path=clip_path,
                       device=device, dtype=dtype, quantization=quantization)
    try:
        session = session or chat.start(frames[0])
        turn = chat.ask(session, request, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens, cancel=cancel)
    finally:
        chat.unload()
        del chat
    logger.info("LGVI-I reply: %s", turn.reply)
    pipeline = pipeline_loader(lgvi_path, device=device, dtype=dtype, text_encoder=False)
    result: RemovalResult = pipeline(frames, context=turn.context, seed=seed, callback=callback, cancel=cancel, **diffusion_options)
    return InteractiveResult(turn.reply, turn.phrase, result.frames, result.mask, session)
