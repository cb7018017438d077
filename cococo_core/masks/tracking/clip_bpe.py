"""The CLIP BPE tokenizer SAM 3 reads text with (openai/CLIP ``simple_tokenizer.py``, as copied into the official
``sam3/model/tokenizer_ve.py``), as a transformers ``CLIPTokenizer`` with the official token ids."""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import torch

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 32  # sam3 VETextEncoder context_length


def byte_symbols() -> list[str]:
    """The GPT-2 / CLIP byte -> unicode table in byte order: printable bytes stand for themselves, the other 68 take
    U+0100 onwards (``bytes_to_unicode`` of openai/CLIP ``simple_tokenizer.py``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _bpe_to_tokenizer_files(bpe: Path, folder: Path) -> Path:
    """``vocab.json`` + ``merges.txt`` for ``CLIPTokenizer`` from the OpenAI CLIP BPE merges file, with the vocabulary
    the official ``SimpleTokenizer`` builds (the 256 byte symbols, the same with ``</w>``, one entry per merge of
    lines 1..48894, then start/end of text), so token ids are the official ones."""
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1] if line.strip()]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):
    """The CLIP tokenizer SAM 3 was trained with, from ``folder`` (``vocab.json`` + ``merges.txt``, or the official
    ``bpe_simple_vocab_16e6.txt.gz``)."""
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    for bpe in (folder / BPE_FILE, *sorted(folder.glob("bpe_*.txt.gz"))):
        if bpe.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                return CLIPTokenizer.from_pretrained(str(_bpe_to_tokenizer_files(bpe, Path(tmp))), local_files_only=True)
    raise FileNotFoundError(
        f"SAM 3 needs its CLIP text vocabulary next to the model: put {BPE_FILE} (from the official sam3 package, "
        f"sam3/assets/) or vocab.json + merges.txt (from the facebook/sam3 Hugging Face folder) into {folder}")


def tokenize(tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (1, 32) as the official ``SimpleTokenizer``: start, BPE tokens, end, then zeros
    (truncated to 32 with the end token kept); the mask marks the non-zero ids."""
    ids = tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
    if len(ids) > CONTEXT_LENGTH:
        ids = ids[:CONTEXT_LENGTH - 1] + [ids[-1]]
    row = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long)
    row[0, :len(ids)] = torch.tensor(ids)
    return row, (row != 0).long()
