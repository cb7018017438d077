"""LGVI-I prompts: the ``v1_inpaint`` conversation template and the ``{{prompt}}`` marker logic.

Template (official ``llava/conversation.py`` ``conv_vicuna_v1_inpaint``, separator style TWO):
``SYSTEM + " " + "User: <image>\\n" + request + " " + "Assistant:"``; a finished assistant turn is
followed by ``"</s>"``, so a follow-up request continues the same string
(``... "Assistant: " + reply + "</s>" + "User: " + request2 + " " + "Assistant:"``). The image is
attached to the first user turn only.

The reply carries the removal phrase as ``{{prompt}} remove the ... {{/prompt}}`` (plain text, not
special tokens). The conditioning starts where the official ``get_prompt_id_start`` says: the text
before the LAST ``{{prompt}}`` (earlier chunks joined without their markers), re-tokenised with the
LLM tokenizer (BOS included); its token count is the start index (spec §2.6).
"""
from __future__ import annotations

import dataclasses

SYSTEM_PROMPT = """You are Inpaint Helper, an intelligent AI assistant that can read images and generate prompts to inform diffusion models which object to remove according to the user request and the input image contents.
You should include the removal prompt with the format "{{prompt}} HERE IS THE PROMPT {{/prompt}} "
Here are a few examples:
1. 
User: I take a photo of my two dogs eating food. I want to split this photo to show each of them. Could you give me the photo with only the white dog?
AI: Sure, this image contains two dogs eating food. One is white with curly hair. The other back to it is brown and white. I will remove the latter dog for you. {{prompt}} remove the brown dog behind the white dog {{/prompt}}
User: Great! What about the picture with the other dog?
AI: Sure. {{prompt}} remove the white dog {{/prompt}}
2. 
User: Hey, here's a picture!
AI: This picture shows a young man standing on a chair in a grassland.
User: Can you let the person float in the air?
AI: Of course, I can do it by removing the chair. Thus, the man looks like he is flying in the air. {{prompt}} remove the chair the man is standing on {{/prompt}}
3. 
User: Who is strange in this image?
AI: The image shows a scene of an ordinary park. There are sidewalks, trees, and grass. The strange person is a man crawling in the bottom right.
User: So, can you remove him for me?
AI: Sure, {{prompt}} remove the crawling man {{/prompt}}"""

ROLES = ("User", "Assistant")
SEP, SEP2 = " ", "</s>"
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # placeholder id in token lists; replaced by the projected image patches
MARKER_OPEN, MARKER_CLOSE = "{{prompt}}", "{{/prompt}}"


@dataclasses.dataclass
class Conversation:
    """A ``v1_inpaint`` dialogue: (request, reply) turns, the last reply None while it is generated."""

    turns: list[list[str | None]] = dataclasses.field(default_factory=list)
    system: str = SYSTEM_PROMPT

    def ask(self, request: str) -> None:
        if self.turns and self.turns[-1][1] is None:
            raise ValueError("the previous request has no reply yet")
        self.turns.append([request, None])

    def answer(self, reply: str) -> None:
        if not self.turns or self.turns[-1][1] is not None:
            raise ValueError("there is no open request to answer")
        self.turns[-1][1] = reply

    def prompt(self) -> str:
        text = self.system + SEP
        for index, (request, reply) in enumerate(self.turns):
            user = f"{IMAGE_TOKEN}\n{request}" if index == 0 else request
            text += f"{ROLES[0]}: {user}{SEP}"
            text += f"{ROLES[1]}: {reply}{SEP2}" if reply is not None else f"{ROLES[1]}:"
        return text

    def copy(self) -> "Conversation":
        return Conversation([list(turn) for turn in self.turns], self.system)


def tokenize_with_image(prompt: str, tokenizer) -> list[int]:
    """Official ``tokenizer_image_token``: chunks split at ``<image>`` tokenised separately, one BOS kept,
    :data:`IMAGE_TOKEN_INDEX` between the chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for index, chunk in enumerate(chunks):
        if index > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def prompt_start_index(reply: str, tokenizer) -> int:
    """Official ``get_prompt_id_start``: token count (BOS included) of the reply's text before the last
    ``{{prompt}}``, earlier chunks joined without their markers. No marker -> 1 (just BOS)."""
    before = "".join(reply.split(MARKER_OPEN)[:-1])
    return len(tokenize_with_image(before, tokenizer))


def select_conditioning(features, start: int):
    """features[:, start:] as the official script slices it; the whole sequence where that would be
    empty (start past the end; or, where the official code would crash on an empty context, exactly at
    the end: a marker with nothing after it)."""
    if start >= features.shape[1]:
        return features
    return features[:, start:]


def extract_removal_phrase(reply: str) -> str | None:
    """The text between the last ``{{prompt}}`` and the following ``{{/prompt}}`` (or the end), stripped;
    None without a marker or when it is empty."""
    if MARKER_OPEN not in reply:
        return None
    phrase = reply.rsplit(MARKER_OPEN, 1)[1].split(MARKER_CLOSE, 1)[0].strip()
    return phrase or None
