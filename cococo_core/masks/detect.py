"""Open-vocabulary boxes with GroundingDINO (transformers ``GroundingDinoForObjectDetection``).

Follows the original ``groundingdino.util.inference`` path:

* caption: lower case, phrases separated and ended by " ." (``"Cat. the dog"`` -> ``"cat . the dog ."``);
* image: resized so the short side is 800 and the long side at most 1333 (``T.RandomResize([800], max_size=1333)``),
  with PIL bilinear on the uint8 image as the original does (or by torch on float frames, on request),
  ImageNet mean/std normalisation; no padding (all frames of a clip share one size, so they batch as is);
* a query is kept when ``max_token sigmoid(logit) > box_threshold`` (0.35); its label is the text of the tokens
  whose probability is ``> text_threshold`` (0.25), as ``get_phrases_from_posmap`` does; boxes are (cx, cy, w, h)
  relative to the image and are returned as xyxy pixels of the input frame.

Two-stage GroundingDINO selects ``num_queries`` (900) proposals among the encoder tokens of all feature levels, so
an input with fewer tokens fails (about 240 px for 900 queries): :func:`detection_size` upscales such frames.
With :func:`text_encoded_once`, the BERT text encoder runs once per clip instead of once per frame.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25


def normalize_caption(text: str) -> str:
    """GroundingDINO's caption form: lower case, each phrase followed by `` .``."""
    phrases = split_phrases(text)
    return " . ".join(phrases) + " ."


def split_phrases(text: str, name: str = "the mask text") -> list[str]:
    """The phrases of a caption (split at ``.``); an empty one is refused, naming ``name`` (the option typed)."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be text, got {type(text).__name__}")
    phrases = [" ".join(part.split()) for part in text.lower().split(".")]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise ValueError(f"{name} {text!r} names nothing; give phrases like 'the dog' or 'cat . dog'")
    return phrases


@dataclass
class TextPrompt:
    """A tokenised caption: ``input_ids`` etc. are (1, T); ``token_phrase[t]`` is the phrase index of token t or -1."""

    caption: str
    phrases: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    token_phrase: torch.Tensor


@dataclass
class FrameDetections:
    """Boxes of one frame: ``boxes`` (n, 4) xyxy pixels, ``scores`` (n,), ``labels`` n strings, ``phrase_ids`` (n,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: list[str]
    phrase_ids: torch.Tensor

    @staticmethod
    def empty() -> "FrameDetections":
        return FrameDetections(torch.zeros(0, 4), torch.zeros(0), [], torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def special_token_ids(tokenizer) -> list[int]:
    """Ids of the phrase delimiters GroundingDINO uses for its per-phrase text attention: [CLS] [SEP] . ?"""
    return [int(i) for i in tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])]


def encode_prompt(tokenizer, text: str, max_text_len: int = 256) -> TextPrompt:
    caption = normalize_caption(text)
    phrases = split_phrases(text)
    tokens = tokenizer(caption, return_tensors="pt", truncation=True, max_length=max_text_len)
    ids = tokens["input_ids"]
    special = set(special_token_ids(tokenizer))
    token_phrase = torch.full((ids.shape[1],), -1, dtype=torch.long)
    phrase = 0
    for position, token in enumerate(ids[0].tolist()):
        if token == tokenizer.convert_tokens_to_ids("."):
            phrase += 1
        elif token not in special and phrase < len(phrases):
            token_phrase[position] = phrase
    return TextPrompt(caption, phrases, ids, tokens["attention_mask"],
                      tokens.get("token_type_ids", torch.zeros_like(ids)), token_phrase)


def encoder_tokens(height: int, width: int, config) -> int:
    """Number of encoder tokens (all feature levels) GroundingDINO makes from an image of this size."""
    backbone = config.backbone_config
    h, w = math.ceil(height / backbone.patch_size), math.ceil(width / backbone.patch_size)
    total, stage = 0, 1
    for index in sorted(backbone.out_indices):
        while stage < index:
            h, w, stage = math.ceil(h / 2), math.ceil(w / 2), stage + 1
        total += h * w
    for _ in range(config.num_feature_levels - len(backbone.out_indices)):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        total += h * w
    return total


def detection_size(height: int, width: int, config, short: int = 800, max_long: int = 1333) -> tuple[int, int]:
    """(h, w) to run detection at: GroundingDINO's resize (``get_size_with_aspect_ratio``: short side ``short``,
    long side ``int(short * long / short_orig)``, capped at ``max_long``), enlarged while the image is too small
    for ``num_queries`` proposals."""
    low, high = min(height, width), max(height, width)
    target = short
    if max_long and high / low * target > max_long:
        target = int(round(max_long * low / high))
    while True:
        long_side = int(target * high / low)
        h, w = (target, long_side) if height <= width else (long_side, target)
        if encoder_tokens(h, w, config) >= config.num_queries:
            return h, w
        target = int(target * 1.1) + 1


PREPROCESSING = ("original", "torch")


def preprocess(frames: torch.Tensor, size: tuple[int, int], method: str = "original") -> torch.Tensor:
    """(B, H, W, 3) frames (float in [0, 1] or uint8) -> (B, 3, h, w) ImageNet-normalised pixels.

    ``method="original"``: GroundingDINO's own (PIL bilinear on the uint8 image, then ``ToTensor`` / 255;
    :mod:`.pil_resize`); ``"torch"``: float frames resized by torch (bilinear, antialiased) on their device."""
    if method == "original":
        from .pil_resize import resize_uint8

        x = resize_uint8(frames, size).to(frames.device).permute(0, 3, 1, 2).float() / 255
    elif method == "torch":
        x = frames.permute(0, 3, 1, 2).float()
        if frames.dtype == torch.uint8:
            x = x / 255
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    else:
        raise ValueError(f"pre-processing must be one of {PREPROCESSING}, got {method!r}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class _TextOnce(torch.nn.Module):
    """Stands in for the BERT text backbone: computes it for one caption row once, then repeats it."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self._key = None
        self._hidden = None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        if not bool((input_ids == input_ids[:1]).all()):
            raise ValueError("text_encoded_once: every row of a batch must hold the same caption")
        key = input_ids[0].tolist()
        if key != self._key:
            first = lambda t: None if t is None else t[:1]  # noqa: E731
            output = self.inner(input_ids[:1], first(attention_mask), first(token_type_ids), first(position_ids),
                                return_dict=True)
            self._key, self._hidden = key, output.last_hidden_state
        return BaseModelOutput(last_hidden_state=self._hidden.expand(input_ids.shape[0], -1, -1))


@contextmanager
def text_encoded_once(model):
    """Within the block, GroundingDINO's BERT runs once per distinct caption (the rest of the model per frame)."""
    base = model.model
    inner = base.text_backbone
    base.text_backbone = _TextOnce(inner)
    try:
        yield
    finally:
        base.text_backbone = inner


# transformers 4.x hard-codes bert-base-uncased's [CLS] [SEP] . ? ids (``modeling_grounding_dino.SPECIAL_TOKENS``)
BERT_BASE_UNCASED_SPECIAL_IDS = [101, 102, 1012, 1029]


def set_special_tokens(model, tokenizer) -> None:
    """Point the model's phrase-delimiter ids at this tokenizer's. transformers 5 keeps them in a buffer
    (bert-base-uncased's ids by default); transformers 4.x hard-codes bert-base-uncased's ids, so there the
    tokenizer must use them (every released GroundingDINO uses bert-base-uncased)."""
    ids = special_token_ids(tokenizer)
    buffer = getattr(model.model, "special_tokens", None)
    if buffer is None:
        if ids != BERT_BASE_UNCASED_SPECIAL_IDS:
            import transformers

            raise ValueError(
                f"this tokenizer's [CLS] [SEP] . ? ids are {ids}; transformers {transformers.__version__} hard-codes "
                f"bert-base-uncased's {BERT_BASE_UNCASED_SPECIAL_IDS}. Use the bert-base-uncased tokenizer or "
                "transformers >= 5"
            )
        return
    model.model.special_tokens = torch.tensor(ids, dtype=buffer.dtype, device=buffer.device)


def _label(prompt: TextPrompt, probs: torch.Tensor, tokenizer, text_threshold: float) -> str:
    tokens = prompt.input_ids[0]
    keep = (probs[: tokens.shape[0]] > text_threshold) & (prompt.token_phrase >= 0)
    return tokenizer.decode(tokens[keep].tolist()).replace(".", "").strip() if keep.any() else ""


@torch.no_grad()
def detect(model, tokenizer, pixels: torch.Tensor, prompt: TextPrompt, frame_size: tuple[int, int], *,
           box_threshold: float = DEFAULT_BOX_THRESHOLD, text_threshold: float = DEFAULT_TEXT_THRESHOLD,
           max_boxes: int | None = None) -> list[FrameDetections]:
    """Boxes for each image of ``pixels`` (B, 3, h, w); coordinates in a frame of ``frame_size`` (H, W)."""
    batch = pixels.shape[0]
    device = pixels.device
    outputs = model(
        pixel_values=pixels,
        input_ids=prompt.input_ids.to(device).expand(batch, -1),
        attention_mask=prompt.attention_mask.to(device).expand(batch, -1),
        token_type_ids=prompt.token_type_ids.to(device).expand(batch, -1),
    )
    probs = outputs.logits.float().sigmoid().cpu()  # (B, Q, max_text_len); padded text positions are 0
    boxes = outputs.pred_boxes.float().cpu()  # (B, Q, 4) cx cy w h in [0, 1]
    height, width = frame_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    phrase_of = prompt.token_phrase
    results = []
    for b in range(batch):
        scores = probs[b].max(dim=1).values
        keep = torch.nonzero(scores > box_threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True)]
        if max_boxes is not None:
            keep = keep[:max_boxes]
        if keep.numel() == 0:
            results.append(FrameDetections.empty())
            continue
        cx, cy, w, h = boxes[b, keep].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1) * scale
        token_probs = probs[b, keep, : phrase_of.shape[0]].masked_fill(phrase_of[None] < 0, -1)
        phrase_ids = phrase_of[token_probs.argmax(dim=1)]
        labels = [_label(prompt, probs[b, q], tokenizer, text_threshold) for q in keep.tolist()]
        results.append(FrameDetections(xyxy, scores[keep], labels, phrase_ids))
    return results
