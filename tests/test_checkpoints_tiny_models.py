"""The shared tiny-model fixtures write what they claim (real layouts, deterministic, cached)."""
import torch

import tiny_models
from cococo_core.checkpoints.safe_load import load_state_dict


def test_deterministic_and_cached():
    a, b = tiny_models.components(), tiny_models.components()
    assert all(torch.equal(x, y) for x, y in zip(a["unet"].state_dict().values(), b["unet"].state_dict().values()))
    assert tiny_models.ldm_file() == tiny_models.ldm_file()
    c = tiny_models.components(seed=1)["unet"].state_dict()
    assert not torch.equal(c["conv_in.weight"], a["unet"].state_dict()["conv_in.weight"])


def test_tokenizer_folder_works_offline():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_models.tokenizer_folder()), local_files_only=True)
    ids = tokenizer(["the cat"], padding="max_length", max_length=77).input_ids[0]
    vocab = tiny_models.VOCAB_SIZE
    assert len(ids) == 77 and ids[0] == vocab - 2 and ids[3] == vocab - 1 and max(ids) < vocab
    assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["the</w>", "cat</w>"]


def test_motion_folder_has_the_official_layout():
    folder = tiny_models.motion_folder()
    merged = {}
    for part in range(4):
        merged.update(load_state_dict(folder / f"model_{part}.pth"))
    assert all(k.startswith("module.") for k in merged)
    params = [k for k in merged if not k.endswith(".pe")]
    pes = [k for k in merged if k.endswith(".pe")]
    assert len(params) == 840 and len(pes) == 84
    assert len({k.split(".temporal_transformer.")[0] for k in params}) == 21
    assert merged["module.up_blocks.0.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.3.to_k.weight"].shape == (64, 32)
    assert merged["module.down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.2.pos_encoder.pe"].shape == (1, 4800, 32)
    assert merged["module.mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape == (1, 24, 64)
