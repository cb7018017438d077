"""The native path with the REAL ComfyUI modules in this process (``COMFYUI_DIR``; see tests/comfyui_server.py).

The pack's own sampler (``cococo_core.pipeline``: diffusers U-Net + CoCoCo hooks + DDIM) is the reference:
on the same tiny weights, conditioning latents, mask, prompts and starting noise, ComfyUI's samplers on the
native MODEL (ComfyUI's own LDM U-Net + the motion patch) must give the same latents where the schedules
coincide. The task-vector MODEL is checked against the pack's merger on the same files, and ComfyUI's LoRA
loader in front of it against the pack's LoRA delta.
"""
import sys
import tempfile

import pytest
import torch

import comfyui_server as cs

cs.require()
sys.path.append(str(cs.comfyui_dir()))  # after the pack: its `nodes` package, not ComfyUI's nodes.py

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets, before model_management picks a device
import folder_paths  # noqa: E402

folder_paths.models_dir = tempfile.mkdtemp(prefix="cococo-native-models-")  # the pack registers its folders here

import comfy.context_windows  # noqa: E402
import comfy.lora  # noqa: E402
import comfy.model_detection  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import tiny_models  # noqa: E402
from cococo_core.models import MotionModuleSet, merge_motion_state, video_unet_from_unet2d  # noqa: E402
from cococo_core.personalize import LoraSpec, MergeRecipe, save_merged  # noqa: E402
from cococo_core.pipeline.ddim import ddim_schedule  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402
from nodes import comfy_native  # noqa: E402

PREFIX = "model.diffusion_model."
FRAMES, LATENT = 4, 8
CFG = 2.0  # guidance > 1 exercises batched CFG; with random tiny weights a large g amplifies float32 rounding
SCALE = 0.18215


def comfy_model(state: dict) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL from a single-file LDM state dict, built as ComfyUI's loader builds SD-1.5 (its config
    detected from the weights); the tiny widths are too small for ComfyUI's SD-1.5 detection to name them."""
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(state, PREFIX))
    model = config.get_model(state, PREFIX)
    model.load_model_weights(state, PREFIX)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(3)
    shape = (1, 4, FRAMES, LATENT, LATENT)
    motion = merge_motion_state([tiny_models.motion_state(0)])
    inpaint = comfy_model(tiny_models.ldm_state(9, 1))
    unet = tiny_models.components(9, 1)["unet"]
    return dict(
        inpaint=inpaint,
        motion=motion,
        native=comfy_native.apply_motion(inpaint, comfy_native.build_motion_set(inpaint, motion)),
        video_unet=video_unet_from_unet2d(unet, motion),
        noise=torch.randn(shape, generator=g),
        masked=0.5 * torch.randn(shape, generator=g),  # scaled latents of the masked frames
        mask=(torch.rand((1, 1, FRAMES, LATENT, LATENT), generator=g) > 0.5).float(),
        positive=torch.randn((1, 77, 32), generator=g),
        negative=torch.randn((1, 77, 32), generator=g),
    )


def per_frame(video: torch.Tensor) -> torch.Tensor:
    """(1, C, F, h, w) -> (F, C, h, w): the video as ComfyUI's latent batch."""
    return video[0].permute(1, 0, 2, 3).contiguous()


def conds(case):
    extra = {"concat_latent_image": per_frame(case["masked"]) / SCALE, "concat_mask": per_frame(case["mask"])}
    return [[case["positive"], dict(extra)]], [[case["negative"], dict(extra)]]


def sample_native(case, model=None, *, steps=50, sampler="ddim", scheduler="ddim_uniform", sigmas=None, cfg=CFG,
                  official_start=False):
    """ComfyUI's KSampler path (``comfy.sample.sample``) or, with ``sigmas``, SamplerCustom's; returns the
    final latents as a (1, 4, F, h, w) scaled video like the pack's sampler.

    ComfyUI starts at x = latent + σ₀·n (below σ_max: a zero image noised to σ₀, i.e. z = sqrt(1 − ᾱ)·n); the
    official code starts at z = n, i.e. x = sqrt(1 + σ₀²)·n. ``official_start`` gives that start through the
    latent: latent = (sqrt(1 + σ₀²) − σ₀)·n (in LATENT units: ComfyUI multiplies a LATENT by 0.18215)."""
    model = model or case["native"]
    positive, negative = conds(case)
    noise = per_frame(case["noise"])
    first = float((sigmas if sigmas is not None else comfy.samplers.calculate_sigmas(
        model.get_model_object("model_sampling"), scheduler, steps))[0])
    latent = ((1 + first ** 2) ** 0.5 - first) * noise / SCALE if official_start else torch.zeros_like(noise)
    if sigmas is None:
        out = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                  disable_pbar=True, seed=0)
    else:
        out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                         positive, negative, latent, disable_pbar=True, seed=0)
    return (out * SCALE).permute(1, 0, 2, 3)[None]


def comfyui_start(case, steps):
    """The pack's starting noise that equals ComfyUI's zero-latent start: z = sqrt(1 − ᾱ_T)·n."""
    schedule = ddim_schedule(steps)
    return dict(case, noise=case["noise"] * (1 - schedule.alphas_cumprod[schedule.timesteps[0]].double()).sqrt().float())


def sample_pack(case, steps=50, video_unet=None, **kwargs):
    return denoise(video_unet or case["video_unet"], case["noise"], case["masked"], case["mask"], case["positive"],
                   case["negative"], steps, CFG, **kwargs)


def official_sigmas(steps: int) -> torch.Tensor:
    """σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) at the official DDIM timesteps (981, 961, …, 1 for 50), then 0 (ᾱ = 1)."""
    schedule = ddim_schedule(steps)
    alphas = schedule.alphas_cumprod.double()[list(schedule.timesteps)]
    return torch.cat([((1 - alphas) / alphas).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()


def float64_tolerance(case, steps, **kwargs):
    """How far float32 rounding alone moves the pack's result: |pack(fp32) − pack(fp64)|, the scale any two
    float32 implementations of the same math may differ by."""
    unet64 = video_unet_from_unet2d(tiny_models.components(9, 1)["unet"].double(), case["motion"])
    exact = sample_pack(case, steps, video_unet=unet64, **kwargs)
    return exact, (sample_pack(case, steps, **kwargs) - exact).abs().max().item()


def tolerance(exact, float32_error) -> float:
    """Two float32 implementations of the same sampler differ by float32 rounding amplified over the steps of
    an untrained network; the pack's own fp32-vs-fp64 gap is one sample of that amplification, so allow ten of
    it plus 5e-5 of the result's scale (ComfyUI's σ table is computed in float64, the pack's ᾱ in float32)."""
    return 10 * float32_error + 5e-5 * exact.abs().max().item()


def assert_close_to_pack(native, exact, float32_error):
    error = (native.double() - exact).abs().max().item()
    assert error <= tolerance(exact, float32_error), (error, float32_error, exact.abs().max().item())


def test_ddim_uniform_at_50_steps_is_the_official_ddim_schedule(case):
    sampling = case["native"].get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", 50)
    # the pack's ᾱ are a float32 cumprod (as diffusers'), ComfyUI's float64: σ(1) differs by ~1e-5 relative
    torch.testing.assert_close(sigmas, official_sigmas(50), rtol=3e-5, atol=0)
    assert sampling.timestep(sigmas[:-1]).tolist() == list(ddim_schedule(50).timesteps)
    # SD's own scaled_linear ("linear" in ComfyUI) is a different schedule: the apply node must change it
    sd_sigmas = comfy.samplers.calculate_sigmas(case["inpaint"].get_model_object("model_sampling"), "ddim_uniform", 50)
    assert not torch.allclose(sd_sigmas, sigmas, rtol=1e-2)
    # at step counts that do not divide 1000 into the same grid, ddim_uniform is not DDIM's leading spacing
    assert len(comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", 30)) != 31


def test_ksampler_ddim_ddim_uniform_matches_the_pack_pipeline(case):
    exact, float32_error = float64_tolerance(case, 50)
    assert_close_to_pack(sample_native(case, official_start=True), exact, float32_error)
    # KSampler's own start (an empty latent noised to σ_981) is the pack started from sqrt(1 - ᾱ_981)·n
    exact, float32_error = float64_tolerance(comfyui_start(case, 50), 50)
    assert_close_to_pack(sample_native(case), exact, float32_error)


def test_sampler_custom_with_the_official_sigmas_matches_at_other_step_counts(case):
    exact, float32_error = float64_tolerance(case, 7)
    assert_close_to_pack(sample_native(case, sigmas=official_sigmas(7), official_start=True), exact, float32_error)
    plain = sample_native(case, case["inpaint"], sigmas=official_sigmas(7), official_start=True)  # per-frame SD only
    assert (plain.double() - exact).abs().max() > 100 * tolerance(exact, float32_error)


def test_context_windows_from_comfyui_match_the_pack_windows(case):
    windowed = case["native"].clone()
    windowed.model_options["context_handler"] = comfy.context_windows.IndexListContextHandler(
        context_schedule=comfy.context_windows.get_matching_context_schedule("standard_static"),
        fuse_method=comfy.context_windows.get_matching_fuse_method("flat"),
        context_length=2, context_overlap=0, dim=0, causal_window_fix=False)
    comfy.context_windows.create_prepare_sampling_wrapper(windowed)
    frames_seen = []
    hooks = [module.register_forward_hook(lambda m, args, kwargs, out: frames_seen.append(kwargs["frames"]),
                                          with_kwargs=True)
             for module in case["native"].get_additional_models_with_key(comfy_native.MOTION_KEY)[0].model.modules()
             if type(module).__name__ == "MotionModule"]
    try:
        native = sample_native(case, windowed, sigmas=official_sigmas(3), official_start=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(frames_seen) == {2}
    exact, float32_error = float64_tolerance(case, 3, context_length=2, context_overlap=0)
    assert_close_to_pack(native, exact, float32_error)
    whole = sample_pack(case, 3)
    assert (whole.double() - exact).abs().max() > 10 * tolerance(exact, float32_error)  # windows change the result


def test_motion_weights_are_loaded_by_comfyui_model_management(case):
    motion = case["native"].get_additional_models_with_key(comfy_native.MOTION_KEY)
    assert len(motion) == 1 and isinstance(motion[0].model, MotionModuleSet)
    loaded = []

    def callback(step, x0, x, total):
        loaded.extend(type(m.model.model).__name__ for m in comfy.model_management.current_loaded_models
                      if m.model is not None)

    positive, negative = conds(case)
    noise = per_frame(case["noise"])
    comfy.sample.sample(case["native"], noise, 1, CFG, "euler", "normal", positive, negative, torch.zeros_like(noise),
                        disable_pbar=True, seed=0, callback=callback)
    assert "MotionModuleSet" in loaded and "BaseModel" in loaded


def test_euler_and_a_comfyui_lora_in_front_run(case, tmp_path):
    lora_path = tmp_path / "lora.safetensors"
    save_file(kohya_lora(), str(lora_path))
    with_lora, _ = comfy.sd.load_lora_for_models(case["inpaint"], None, comfy.utils.load_torch_file(str(lora_path)), 1.0, 0)
    model = comfy_native.apply_motion(with_lora, comfy_native.build_motion_set(case["inpaint"], case["motion"]))
    plain = sample_native(case, steps=4, sampler="euler", scheduler="normal")
    lora = sample_native(case, model, steps=4, sampler="euler", scheduler="normal")
    assert torch.isfinite(lora).all() and torch.isfinite(plain).all()
    assert (lora - plain).abs().max() > 1e-4


def test_apply_refuses_a_text_to_image_model_and_a_second_apply(case):
    with pytest.raises(ValueError, match="inpainting"):
        comfy_native.apply_motion(comfy_model(tiny_models.ldm_state(4, 0)), None)
    with pytest.raises(ValueError, match="already"):
        comfy_native.apply_motion(case["native"], comfy_native.build_motion_set(case["inpaint"], case["motion"]))


def test_motion_file_missing_tensors_is_a_clear_error(case):
    from cococo_core.models import MotionWeightsError

    broken = dict(case["motion"])
    broken.pop(next(iter(broken)))
    with pytest.raises(MotionWeightsError, match="missing"):
        comfy_native.build_motion_set(case["inpaint"], broken)


# --- task vectors ------------------------------------------------------------------------------------------------

def kohya_lora(rank=4, alpha=2.0) -> dict:
    """A kohya LoRA on one attention projection and one resnet conv of the tiny U-Net."""
    g = torch.Generator().manual_seed(7)
    names = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((32, rank), (rank, 32)),
             "lora_unet_down_blocks_1_resnets_0_conv1": ((32, rank, 1, 1), (rank, 32, 3, 3))}
    state = {}
    for name, (up, down) in names.items():
        state[f"{name}.lora_up.weight"] = 0.2 * torch.randn(up, generator=g)
        state[f"{name}.lora_down.weight"] = 0.2 * torch.randn(down, generator=g)
        state[f"{name}.alpha"] = torch.tensor(alpha)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-vector")
    out = {name: tiny_models.write_ldm_file(root / f"{name}.safetensors", tiny_models.ldm_state(channels, seed))
           for name, channels, seed in (("sd15", 4, 0), ("inpaint", 9, 1), ("personal", 4, 2))}
    out["lora"] = root / "lora.safetensors"
    save_file(kohya_lora(), str(out["lora"]))
    return out


def merged_unet(model) -> dict:
    model.patch_model()
    try:
        return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    finally:
        model.unpatch_model()


def assert_equal_to_pack(native: dict, reference_file, inputs: list[dict]):
    reference = {k[len(PREFIX):]: v for k, v in load_file(str(reference_file)).items() if k.startswith(PREFIX)}
    assert set(native) == set(reference)
    eps = torch.finfo(torch.float32).eps
    for key, value in native.items():
        # float32 rounding of a sum of a few terms: a few ulp of the largest magnitude involved
        bound = sum(state[PREFIX + key].abs().max() if PREFIX + key in state else 0 for state in inputs)
        torch.testing.assert_close(value, reference[key], rtol=0, atol=8 * eps * float(bound) + 1e-12, msg=key)


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.75), (0.6, 1.3)])
def test_task_vector_model_equals_the_pack_merger(files, tmp_path, alpha, beta):
    models = {name: comfy_model(comfy.utils.load_torch_file(str(files[name]))) for name in ("sd15", "inpaint", "personal")}
    native, summary = comfy_native.task_vector_model(models["inpaint"], models["sd15"], models["personal"], alpha, beta)
    assert summary["zero_padded"] == ["diffusion_model.input_blocks.0.0.weight"]
    out = tmp_path / "merged.safetensors"
    save_merged(MergeRecipe(inpaint=str(files["inpaint"]), base=str(files["sd15"]), personal=str(files["personal"]),
                            alpha=alpha, beta=beta, components=("unet",)), out)
    inputs = [load_file(str(files[name])) for name in ("sd15", "inpaint", "personal")]
    merged = merged_unet(native)
    assert_equal_to_pack(merged, out, inputs)
    # conv_in: the mask / masked-image channels 4-8 keep α·θ_inpaint only
    conv = merged["input_blocks.0.0.weight"]
    torch.testing.assert_close(conv[:, 4:], alpha * inputs[1][PREFIX + "input_blocks.0.0.weight"][:, 4:])
    # no merged copy is held: the MODEL's own parameters are still the inpainting weights
    original = models["inpaint"].model.diffusion_model.state_dict()
    assert all(original[k].data_ptr() == v.data_ptr() for k, v in native.model.diffusion_model.state_dict().items())


def test_comfyui_lora_loader_in_front_equals_the_pack_lora_merge(files, tmp_path):
    sd15 = comfy_model(comfy.utils.load_torch_file(str(files["sd15"])))
    inpaint = comfy_model(comfy.utils.load_torch_file(str(files["inpaint"])))
    personal, _ = comfy.sd.load_lora_for_models(sd15, None, comfy.utils.load_torch_file(str(files["lora"])), 0.8, 0)
    native, _ = comfy_native.task_vector_model(inpaint, sd15, personal, 1.0, 0.75)
    out = tmp_path / "merged-lora.safetensors"
    save_merged(MergeRecipe(inpaint=str(files["inpaint"]), base=str(files["sd15"]),
                            loras=[LoraSpec(str(files["lora"]), 0.8)], alpha=1.0, beta=0.75, components=("unet",)), out)
    inputs = [load_file(str(files[name])) for name in ("sd15", "inpaint")]
    merged = merged_unet(native)
    assert_equal_to_pack(merged, out, inputs + [{PREFIX + k: v for k, v in merged.items()}])
    changed = [k for k in merged if not torch.equal(merged[k], inputs[1][PREFIX + k])]
    assert sorted(changed) == ["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                               "input_blocks.4.0.in_layers.2.weight"]


# --- conditioning ------------------------------------------------------------------------------------------------

def test_video_inpaint_conditioning_equals_the_pack_conditioning():
    """ComfyUI's VAE (built by ComfyUI from an SD VAE state dict; its layout is fixed at full size) against the
    pack's conditioning functions on a diffusers VAE with the same weights: masked frames, posterior mean, nearest
    latent mask, in frame order."""
    from diffusers import AutoencoderKL

    from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm
    from cococo_core.pipeline.conditioning import encode_images, latent_mask, masked_image

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    prefix = "first_stage_model."
    ldm = {k[len(prefix):]: v for k, v in diffusers_to_ldm({"vae": vae.state_dict()}).items() if k.startswith(prefix)}
    comfy_vae = comfy.sd.VAE(sd=ldm)
    g = torch.Generator().manual_seed(5)
    frames = torch.rand((3, 64, 72, 3), generator=g)
    mask = torch.zeros((3, 64, 72))
    mask[:, 10:40, 20:50] = 1.0
    mask[1, 30:60, 5:30] = 1.0  # a different mask per frame: the frame order must be kept
    positive, negative = [[torch.zeros(1, 77, 768), {}]], [[torch.ones(1, 77, 768), {}]]
    pos, neg, latent = comfy_native.video_inpaint_conditioning(positive, negative, comfy_vae, frames, mask)

    pixels, holes = frames.permute(0, 3, 1, 2), mask[:, None]
    expected = encode_images(vae, masked_image(pixels, holes)) / SCALE  # ComfyUI keeps LATENTs unscaled
    expected_mask = latent_mask(holes, (8, 9))
    for conditioning, text in ((pos, 0.0), (neg, 1.0)):
        (embeds, extra), = conditioning
        assert float(embeds.mean()) == text
        torch.testing.assert_close(extra["concat_mask"], expected_mask, rtol=0, atol=0)
        torch.testing.assert_close(extra["concat_latent_image"], expected, rtol=1e-4,
                                   atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(latent["samples"], torch.zeros(3, 4, 8, 9))
    # frames of 70 px are cropped to 64 (centred), as ComfyUI's own inpaint conditioning does
    _, _, cropped = comfy_native.video_inpaint_conditioning(positive, negative, comfy_vae, frames[:, :, :70],
                                                            mask[:, :, :70])
    assert cropped["samples"].shape == (3, 4, 8, 8)
