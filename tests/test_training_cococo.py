"""CoCoCo training end to end on tiny models: data preparation, clips, the recipe, export and loading."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models
from training_data import write_webvid

FRAMES, HEIGHT, WIDTH = 4, 32, 48


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from cococo_core.cli import main
    from test_masks_tiny import shared_files

    root = tmp_path_factory.mktemp("webvid")
    csv = write_webvid(root, good=3)
    hf_dino, _, _ = shared_files("dino")
    argv = ["prepare-data", "--csv", str(csv), "--videos", str(root / "videos"), "--output", str(root / "shards"),
            "--detector", str(hf_dino), "--min-frames", str(FRAMES), "--max-frames", "6", "--short-side", "32",
            "--detection-size", "64", "96", "--samples-per-shard", "2"]
    assert main(argv) == 0
    first = json.loads((root / "shards" / "summary.json").read_text())
    assert main(argv) == 0  # resumed: nothing left to do
    second = json.loads((root / "shards" / "summary.json").read_text())
    return root, first, second


def test_prepare_data_filters_logs_counts_and_resumes(prepared):
    from cococo_core.training.shards import ShardReader

    root, first, second = prepared
    assert first["written"] == 3 and first["shards"] == 2
    assert first["skipped"] == {"missing": 1, "multi_scene": 1, "unreadable": 1}  # cut, random bytes, no file
    with_objects = first["written"] - first["without_objects"]
    # GroundingDINO's BERT: once for the caption on frame 0, once for the phrases over all frames of a video
    assert first["this_run"]["text_encoder_calls"] == first["written"] + with_objects
    assert second["this_run"]["seen"] == 0 and second["written"] == 3
    logged = [json.loads(line) for line in (root / "shards" / "skipped-r000.jsonl").read_text().splitlines()]
    assert sorted(entry["reason"] for entry in logged) == ["missing", "multi_scene", "unreadable"]
    reader = ShardReader(root / "shards")
    for i in range(len(reader)):
        record = json.loads(reader.read(i, ("json",))["json"])
        assert record["frames"] == 6 and len(record["boxes"]) == 6 and (record["height"], record["width"]) == (32, 48)
        for frame in record["boxes"]:
            for x0, y0, x1, y1, phrase, score in frame:
                assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1 and 0 <= phrase < len(record["phrases"])
                assert score > 0.2


def test_interrupted_shard_is_discarded_and_redone(prepared, tmp_path):
    import shutil

    from cococo_core.training.cococo.prepare import PrepareOptions, prepare
    from cococo_core.training.shards import complete_shards, index_path

    root, _, _ = prepared
    out = tmp_path / "shards"
    shutil.copytree(root / "shards", out)
    last = complete_shards(out)[-1]
    index_path(last).unlink()
    staging = last.with_name(f".{last.stem}.partial-0123456789abcdef.tar")
    last.rename(staging)  # as a writer killed before close() leaves it
    other_rank = out / ".r001-000000.partial-0123456789abcdef.tar"
    other_rank.write_bytes(b"another rank is writing this one")
    summary = prepare(PrepareOptions(csv=str(root / "results.csv"), video_root=str(root / "videos"), output=str(out),
                                     min_frames=FRAMES, max_frames=6, short_side=32))
    assert summary["written"] == 3 and summary["this_run"]["written"] == 1 and not staging.exists()
    assert other_rank.exists()  # only this rank's leftovers are removed


def clip_dataset(root, **changes):
    from cococo_core.training.cococo.dataset import CoCoCoClipDataset

    return CoCoCoClipDataset(root / "shards", frames=FRAMES, height=HEIGHT, width=WIDTH, **changes)


def test_clips_are_deterministic_per_epoch_and_index(prepared):
    root, _, _ = prepared
    dataset = clip_dataset(root)
    a, b = dataset[1], dataset[1]
    assert a["pixels"].shape == (FRAMES, 3, HEIGHT, WIDTH) and a["mask"].shape == (FRAMES, 1, HEIGHT, WIDTH)
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["mask"], b["mask"]) and a["prompt"] == b["prompt"]
    dataset.set_epoch(1)
    later = [dataset[i]["mask"] for i in range(len(dataset))]
    dataset.set_epoch(0)
    assert any(not torch.equal(m, dataset[i]["mask"]) for i, m in enumerate(later))


# -- the recipe ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(prepared):
    from cococo_core.training.cococo.recipe import CoCoCoRecipe

    root, _, _ = prepared
    recipe = CoCoCoRecipe()
    config = {"base": str(tiny_models.sd_folder()), "seed": 0, "data": str(root / "shards"), "frames": FRAMES,
              "height": HEIGHT, "width": WIDTH, "learning_rate": 1e-3}
    model = recipe.build_model(config)
    dataset = recipe.build_dataset(config)
    batch = recipe.collate([dataset[0], dataset[1]])
    batch["sample_seeds"] = torch.tensor([11, 12])
    return recipe, model, batch, config


def test_optimizer_steps_reduce_the_loss_and_change_only_motion_modules(built):
    recipe, model, batch, config = built
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(recipe.parameter_groups(model, config), weight_decay=0.0)
    losses = []
    for _ in range(4):
        loss, _ = recipe.loss(model, batch, torch.Generator())
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    after = model.state_dict()
    motion = [k for k in after if ".motion_modules." in k]
    assert len(motion) == 840 and all(k.startswith("unet.unet.") for k in motion)
    for key, value in after.items():
        if key in motion:
            continue
        assert torch.equal(value, before[key]), key  # spatial U-Net, VAE, text encoder: bit-identical
    assert sum(not torch.equal(after[k], before[k]) for k in motion) > 700  # (proj_out starts at 0, so all move)


def test_gradient_checkpointing_keeps_the_gradients(built):
    recipe, model, batch, _ = built
    plain, checkpointed = copy.deepcopy(model), copy.deepcopy(model)
    recipe.enable_gradient_checkpointing(checkpointed)
    grads, runs = [], []
    for m in (plain, checkpointed):
        calls = []
        first_motion = m.unet.motion_modules[0][1]
        handle = first_motion.register_forward_hook(lambda *a: calls.append(1))
        loss, _ = recipe.loss(m, batch, torch.Generator())
        loss.backward()
        handle.remove()
        runs.append(len(calls))
        grads.append({n: p.grad.double() for n, p in m.named_parameters() if p.requires_grad})
    assert runs == [1, 2]  # recomputed in the backward pass
    for name, grad in grads[0].items():
        # the same float32 operations recomputed: equal up to the summation order of recomputed kernels
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6 * (float(grad.abs().max()) + 1e-12))


def animatediff_state(seed: int = 5) -> dict[str, torch.Tensor]:
    """A tiny mm_sd_v15_v2-layout state dict, its names written from AnimateDiff's motion_module.py (v2 config:
    one transformer block of two Temporal_Self attentions with pos_encoder.pe of max_len 32, mid block on)."""
    widths = tiny_models.TINY_UNET_CONFIG["block_out_channels"]
    places = [(f"down_blocks.{i}", widths[i], 2) for i in range(4)] + [("mid_block", widths[-1], 1)]
    places += [(f"up_blocks.{i}", widths[::-1][i], 3) for i in range(4)]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for block, c, count in places:
        for j in range(count):
            p = f"{block}.motion_modules.{j}.temporal_transformer."
            shapes = {"norm.weight": (c,), "norm.bias": (c,), "proj_in.weight": (c, c), "proj_in.bias": (c,),
                      "proj_out.weight": (c, c), "proj_out.bias": (c,),
                      "transformer_blocks.0.ff.net.0.proj.weight": (8 * c, c),
                      "transformer_blocks.0.ff.net.0.proj.bias": (8 * c,),
                      "transformer_blocks.0.ff.net.2.weight": (c, 4 * c), "transformer_blocks.0.ff.net.2.bias": (c,),
                      "transformer_blocks.0.ff_norm.weight": (c,), "transformer_blocks.0.ff_norm.bias": (c,)}
            for a in range(2):
                attn = f"transformer_blocks.0.attention_blocks.{a}."
                shapes.update({attn + "to_q.weight": (c, c), attn + "to_k.weight": (c, c), attn + "to_v.weight": (c, c),
                               attn + "to_out.0.weight": (c, c), attn + "to_out.0.bias": (c,),
                               f"transformer_blocks.0.norms.{a}.weight": (c,), f"transformer_blocks.0.norms.{a}.bias": (c,)})
                state[p + attn + "pos_encoder.pe"] = torch.zeros(1, 32, c)
            for key, shape in shapes.items():
                state[p + key] = torch.randn(shape, generator=g)
    return state


def test_animatediff_v2_weights_initialise_the_temporal_layers(tmp_path, built):
    from cococo_core.training.cococo.recipe import CoCoCoRecipe

    _, _, _, config = built
    state = animatediff_state()
    assert len(state) == 21 * 28  # 26 tensors + 2 pe buffers per module
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save(state, path)
    model = CoCoCoRecipe().build_model({**config, "animatediff": str(path)})
    own = model.unet.unet.state_dict()
    for key, tensor in state.items():
        if key.endswith(".pe"):
            continue
        assert torch.equal(own[key], tensor), key
    new = [k for k in own if ".motion_modules." in k and (".attention_blocks.2." in k or ".attention_blocks.3." in k
                                                          or ".norms.2." in k or ".norms.3." in k)]
    assert len(new) == 21 * 14
    for key in new:
        value = own[key]
        if ".norms." in key:
            assert torch.equal(value, torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value))
        elif key.endswith("bias"):
            assert not value.any()
        elif value.numel() >= 1024:  # Kaiming normal, fan-in, gain 1: std 1/sqrt(fan_in) (± 5 sigma of the estimate)
            expected = value.shape[1] ** -0.5
            assert abs(float(value.std()) / expected - 1) < 5 / (2 * value.numel()) ** 0.5 + 0.01, key
    with pytest.raises(ValueError, match="do not fit"):
        broken = dict(state)
        broken.pop(next(k for k in state if k.endswith("to_q.weight")))
        torch.save(broken, path)
        CoCoCoRecipe().build_model({**config, "animatediff": str(path)})


def official_loader(folder: Path, unet) -> None:
    """The official loading (cococo-official.md §2.2), written from the spec: torch.load each model_i.pth, merge,
    drop keys containing 'pe', keep the text after the first 'module.', load non-strictly."""
    merged = {}
    for i in range(4):
        merged = {**merged, **torch.load(folder / f"model_{i}.pth", weights_only=True)}
    state = {k.split("module.")[1]: v for k, v in merged.items() if "pe" not in k}
    missing, unexpected = unet.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if ".motion_modules." in k]


def test_saved_weights_load_in_the_pack_and_the_official_way(built, tmp_path):
    from cococo_core.models import load_video_unet
    from cococo_core.models.video_unet import VideoUNet

    recipe, model, _, _ = built
    model = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    trained = model.unet.motion_state_dict()
    files = recipe.save_pretrained(model, tmp_path / "final")
    assert [f.name for f in files] == ["model_0.pth", "model_1.pth", "model_2.pth", "model_3.pth",
                                       "cococo_motion.safetensors"]
    for source in (tmp_path / "final" / "official", tmp_path / "final" / "cococo_motion.safetensors"):
        loaded = load_video_unet(tiny_models.sd_folder(), source).motion_state_dict()
        assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    from diffusers import UNet2DConditionModel

    fresh = VideoUNet(UNet2DConditionModel(**tiny_models.TINY_UNET_CONFIG))
    official_loader(tmp_path / "final" / "official", fresh.unet)
    assert all(torch.equal(fresh.motion_state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(FileExistsError):
        recipe.save_pretrained(model, tmp_path / "final")  # never overwrites


def test_the_loop_trains_the_recipe_with_validation_and_checkpoints(prepared, tmp_path):
    from cococo_core.training.config import TrainConfig
    from cococo_core.training.loop import train

    root, _, _ = prepared
    config = TrainConfig(recipe="cococo", output_dir=str(tmp_path / "run"), max_steps=2, train_batch_size=1,
                         gradient_accumulation_steps=2, checkpoint_every=2, validate_every=2, ema=True,
                         options={"base": str(tiny_models.sd_folder()), "data": str(root / "shards"), "frames": FRAMES,
                                  "height": HEIGHT, "width": WIDTH, "validation_steps": 2})
    result = train(config)
    assert result.step == 2 and result.micro_step == 4 and len(result.losses) == 2
    assert [p.name for p in result.validation] == ["step00000002-0.mp4"]
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainable_0.safetensors").is_file()
    assert (tmp_path / "run" / "weights" / "step-00000002" / "cococo_motion.safetensors").is_file()


def test_bf16_stores_frozen_weights_in_bf16_and_trains_float32_motion_modules(built):
    from cococo_core.training.cococo.recipe import store_frozen_in

    recipe, model, batch, _ = built
    model = copy.deepcopy(model)
    store_frozen_in(model, torch.bfloat16)
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = recipe.loss(model, batch, torch.Generator())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_preparation_splits_rows_over_ranks(prepared, tmp_path):
    from cococo_core.training.cococo.prepare import PrepareOptions, prepare
    from cococo_core.training.shards import ShardReader, complete_shards

    root, _, _ = prepared
    common = dict(csv=str(root / "results.csv"), video_root=str(root / "videos"), output=str(tmp_path / "shards"),
                  scene_filter=False, min_frames=FRAMES, max_frames=6, short_side=32, world_size=2)
    runs = [prepare(PrepareOptions(**common, rank=rank)) for rank in (0, 1)]
    assert [r["this_run"]["seen"] for r in runs] == [3, 3]  # 6 rows: 0, 2, 4 and 1, 3, 5
    keys = {shard.name[:4]: set(ShardReader([shard]).keys()) for shard in complete_shards(tmp_path / "shards")}
    assert set(keys) == {"r000", "r001"} and not keys["r000"] & keys["r001"]
    assert runs[1]["written"] == 4 and runs[1]["skipped"] == {"missing": 1, "unreadable": 1}  # no scene filter
