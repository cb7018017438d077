"""LGVI-I chat stage (official ``inference_interactive.py:113-164``; spec §2.3-2.7).

The first frame (resize + centre crop, :mod:`.clip_image`) goes through the vision tower (layer -2,
patch tokens) and the LGVI-I projector and is spliced in place of ``<image>`` in the ``v1_inpaint``
prompt. Tokens are sampled at temperature 0.2 (top-k 50, the transformers ``generate`` default the
official call used) from a seeded generator until ``</s>``, with a KV cache. The conditioning is

    h = [h_0[-1], h_1, ..., h_{N-1}]  (last layer, after the final RMSNorm; h_k predicts token k)
    context = transfer_head(h)[:, start:]  with start from :func:`.prompting.prompt_start_index`

so the EOS position itself is never included. The unconditional context is zeros (pipeline side).
Logits past the LGVI vocabulary (32000; llava-hf pads to 32064) are masked, as the original 32000-row
model could not emit them. Multi-turn: a :class:`ChatSession` keeps the conversation and the image.
"""
from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import os

import torch

from ..hooks import check_cancelled, report
from .clip_image import clip_image_tensor
from .llava_loading import apply_lgvi_weights, load_lgvi_mllm_weights, load_llava
from .prompting import (
    IMAGE_TOKEN_INDEX,
    Conversation,
    extract_removal_phrase,
    prompt_start_index,
    select_conditioning,
    tokenize_with_image,
)

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_K = 50
DEFAULT_MAX_NEW_TOKENS = 1024


@dataclasses.dataclass
class ChatSession:
    """A conversation about one video: its first frame and the turns so far (survives unloading)."""

    image: object  # first frame: PIL image or (H, W, 3) array/tensor
    conversation: Conversation = dataclasses.field(default_factory=Conversation)


@dataclasses.dataclass
class ChatTurn:
    request: str
    reply: str
    phrase: str | None  # the removal phrase inside {{prompt}} ... {{/prompt}}, if any
    context: torch.Tensor  # (1, L, D) float32 CPU conditioning for the diffusion stage
    token_ids: list[int]


class LGVIChat:
    def __init__(self, model, tokenizer, transfer_head, vocab_limit: int | None = None):
        self.model, self.tokenizer, self.transfer_head = model, tokenizer, transfer_head
        self.vocab_limit = vocab_limit

    @classmethod
    def load(
        cls, llava_path, llava_weights, *, clip_path=None, device=None, dtype=None, quantization: str | None = None
    ) -> "LGVIChat":
        """LLaVA-1.5 from ``llava_path`` with LGVI-I's ``llava_weights.pth`` applied."""
        from .pipeline import default_device_dtype  # noqa: PLC0415

        device, dtype = default_device_dtype(device, dtype)
        weights = load_lgvi_mllm_weights(llava_weights)  # fail fast on a wrong path before loading 7B
        model, tokenizer = load_llava(llava_path, clip_path=clip_path, device=device, dtype=dtype, quantization=quantization)
        head, vocab = apply_lgvi_weights(model, weights)
        return cls(model, tokenizer, head, vocab)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def unload(self) -> None:
        """Free the chat model (staged memory: call before diffusion)."""
        device = self.model.device if self.model is not None else None
        self.model = self.transfer_head = None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    def start(self, first_frame) -> ChatSession:
        return ChatSession(first_frame)

    @torch.no_grad()
    def ask(
        self,
        session: ChatSession,
        request: str,
        *,
        seed: int = 0,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        callback=None,
        cancel=None,
    ) -> ChatTurn:
        """Add ``request`` to the session, generate the reply, return it with its conditioning."""
        if not self.loaded:
            raise RuntimeError("the chat model was unloaded; load a new LGVIChat")
        conversation = session.conversation.copy()
        conversation.ask(request)
        ids = tokenize_with_image(conversation.prompt(), self.tokenizer)
        embeds = self._prompt_embeddings(ids, session.image)
        tokens, states = self._sample(embeds, seed, temperature, top_k, max_new_tokens, callback, cancel)
        features = self.transfer_head(torch.cat(states, dim=1))
        reply = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        start = prompt_start_index(reply, self.tokenizer)
        if start >= features.shape[1]:
            logger.warning("LGVI-I: the reply has no tokens after its last {{prompt}} marker; conditioning on the whole reply")
        context = select_conditioning(features, start).float().cpu()
        conversation.answer(reply)
        session.conversation = conversation
        return ChatTurn(request, reply, extract_removal_phrase(reply), context, tokens)

    def _prompt_embeddings(self, ids: list[int], image) -> torch.Tensor:
        model = self.model
        embed = model.get_input_embeddings()
        device = embed.weight.device
        pieces, text = [], []
        image_features = None
        for token in ids + [None]:
            if token is not None and token != IMAGE_TOKEN_INDEX:
                text.append(token)
                continue
            if text:
                pieces.append(embed(torch.tensor([text], device=device)))
                text = []
            if token == IMAGE_TOKEN_INDEX:
                if image_features is None:
                    image_features = self._image_features(image)
                pieces.append(image_features)
        return torch.cat(pieces, dim=1)

    def _image_features(self, image) -> torch.Tensor:
        vision_config = self.model.config.vision_config
        pixels = clip_image_tensor(image, vision_config.image_size)
        dtype = self.model.get_input_embeddings().weight.dtype
        features = llava_image_features(self.model, pixels.to(self.model.device, dtype))
        return features.reshape(1, -1, features.shape[-1]).to(dtype)

    def _sample(self, embeds, seed, temperature, top_k, max_new_tokens, callback, cancel):
        from transformers import DynamicCache  # noqa: PLC0415

        language_model, lm_head = _llava_parts(self.model)
        eos = self.tokenizer.eos_token_id
        generator = torch.Generator("cpu").manual_seed(int(seed))
        cache = {_cache_keyword(language_model): DynamicCache()}
        hidden = language_model(inputs_embeds=embeds, use_cache=True, **cache).last_hidden_state[:, -1:]
        tokens, states = [], []
        for step in range(max_new_tokens):
            check_cancelled(cancel)
            states.append(hidden)
            token = self._next_token(lm_head(hidden)[0, -1].float(), generator, temperature, top_k)
            tokens.append(token)
            report(callback, step + 1, max_new_tokens, None)
            if token == eos:
                break
            step_embeds = self.model.get_input_embeddings()(torch.tensor([[token]], device=embeds.device))
            hidden = language_model(inputs_embeds=step_embeds, use_cache=True, **cache).last_hidden_state
        return tokens, states

    def _next_token(self, logits: torch.Tensor, generator, temperature: float, top_k: int) -> int:
        logits = logits.cpu()
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[0]:
            logits[self.vocab_limit :] = float("-inf")
        if temperature <= 0:
            return int(logits.argmax())
        logits = logits / temperature
        if 0 < top_k < logits.shape[0]:
            threshold = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def llava_image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Projected patch features of the vision tower (LLaVA-1.5: hidden state ``vision_feature_layer``, CLS dropped
    for the ``default`` strategy, then the projector). ``get_image_features`` where transformers has it (>= 4.47)."""
    config = model.config
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                                       vision_feature_select_strategy=config.vision_feature_select_strategy)
        features = getattr(out, "pooler_output", out)  # transformers 5 output object / 4.x tensor
        return features[0] if isinstance(features, (list, tuple)) else features
    hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer]
    if config.vision_feature_select_strategy == "default":
        hidden = hidden[:, 1:]
    return model.multi_modal_projector(hidden)


def _cache_keyword(language_model) -> str:
    """The decoder's KV-cache argument: ``cache`` (transformers >= 5.24; ``past_key_values`` is deprecated there
    and removed in 5.40) or ``past_key_values`` (earlier releases)."""
    parameters = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _llava_parts(model):
    """(decoder without head, lm_head) for transformers 5 (``model.model.language_model``) and 4.x layouts."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "language_model"):
        return inner.language_model, model.lm_head
    return model.language_model.model, model.language_model.lm_head


def default_llava_weights(lgvi_path) -> str:
    return os.path.join(os.fspath(lgvi_path), "llava", "llava_weights.pth")
