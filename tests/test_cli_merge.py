"""``python -m cococo_core merge``: options, a full merge with a LoRA, and user errors as one line + exit code 2."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from cococo_core.cli import main
from cococo_core.personalize import LoraSpec, MergeRecipe, save_merged



LORA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    gen = torch.Generator().manual_seed(5)
    save_file({f"{LORA}.lora_up.weight": torch.randn(32, 4, generator=gen),
               f"{LORA}.lora_down.weight": torch.randn(4, 32, generator=gen), f"{LORA}.alpha": torch.tensor(2.0)},
              str(root / "style.safetensors"))
    return {
        "root": root, "lora": root / "style.safetensors",
        "base": tiny_models.write_ldm_file(root / "base.safetensors", tiny_models.ldm_state(4, 0)),
        "inpaint": tiny_models.write_ldm_file(root / "inpaint.safetensors", tiny_models.ldm_state(9, 1)),
        "personal": tiny_models.write_ldm_file(root / "personal.safetensors", tiny_models.ldm_state(4, 2)),
    }


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--base", "--inpaint", "--personal", "--lora", "--alpha", "--beta", "--beta-unet", "--beta-text",
                   "--beta-vae", "--ema", "--dtype", "--out", "--overwrite", "--quiet"):
        assert option in text


def test_full_merge_with_lora_strength_equals_the_library(files, tmp_path, capsys):
    out = tmp_path / "merged.safetensors"
    code = main(["merge", "--base", str(files["base"]), "--inpaint", str(files["inpaint"]), "--personal",
                 str(files["personal"]), "--lora", f"{files['lora']}:0.5", "--alpha", "0.9", "--beta", "1.5",
                 "--beta-text", "0.5", "--dtype", "fp16", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "LoRA delta on 1" in captured.out and "merging: " in captured.err
    library = tmp_path / "library.safetensors"
    save_merged(MergeRecipe(inpaint=files["inpaint"], base=files["base"], personal=files["personal"],
                            loras=[LoraSpec(files["lora"], 0.5)], alpha=0.9, beta=1.5, beta_text=0.5),
                library, dtype=torch.float16)
    got, want = load_file(str(out)), load_file(str(library))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert got["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_user_errors_are_one_line_with_exit_code_2(files, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    base = ["merge", "--base", str(files["base"]), "--inpaint", str(files["inpaint"]), "--quiet"]
    assert main(base + ["--lora", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(base + ["--personal", str(files["inpaint"]), "--out", str(out)]) == 2
    assert "inpainting model" in capsys.readouterr().err
    out.write_bytes(b"keep")
    assert main(base + ["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(base + ["--out", str(tmp_path / "x.ckpt")]) == 2


def test_four_channel_inpaint_and_output_equal_to_an_input_are_refused(files, tmp_path, capsys):
    out = tmp_path / "merged.safetensors"
    code = main(["merge", "--base", str(files["base"]), "--inpaint", str(files["personal"]), "--quiet", "--out", str(out)])
    assert code == 2 and "4 input channels" in capsys.readouterr().err and not out.exists()
    for target in ("inpaint", "personal", "lora"):
        before = files[target].read_bytes()
        code = main(["merge", "--base", str(files["base"]), "--inpaint", str(files["inpaint"]), "--personal",
                     str(files["personal"]), "--lora", f"{files['lora']}:0.5", "--quiet", "--overwrite",
                     "--out", str(files[target])])
        assert code == 2 and "writing there would destroy it" in capsys.readouterr().err
        assert files[target].read_bytes() == before
