"""The trainable LGVI and LGVI-I systems: one ``nn.Module`` each whose ``forward(batch, generator)``
returns the loss, so the loop's ``accelerator.prepare`` wrapper (DDP) sees every trained parameter.

LGVI: the video U-Net (trained; mask decoder included), the frozen VAE and the frozen CLIP text encoder
of the starting checkpoint. LGVI-I adds the chat model (LLaVA-style ``LlavaForConditionalGeneration``):
``embed_tokens``, the multimodal projector and the transfer head are trained, the language-model layers,
final norm, LM head (unless tied to the embeddings) and the vision tower stay frozen (the parts the
released ``llava_weights.pth`` holds: official ``save_mllm_weights``). The transfer head is
``Linear(h, h) -> ReLU -> Linear(h, D, no bias)`` with h the chat model's hidden size and D the U-Net's
cross-attention width, so any chat model size works.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ...checkpoints.pretrained import load_pretrained
from ...lgvi.chat import LGVIChat, _llava_parts
from ...lgvi.clip_image import to_pil
from ...lgvi.llava_loading import apply_lgvi_weights, load_lgvi_mllm_weights, load_llava
from ...lgvi.pipeline import LGVIPipeline
from ...lgvi.prompting import Conversation, prompt_start_index, select_conditioning, tokenize_with_image
from ...lgvi.scheduler import load_scheduler
from ...lgvi.unet import LGVIUNet
from .objective import (
    LossSettings,
    add_noise,
    diffusion_loss,
    lm_loss,
    mask_loss,
    mask_targets,
    quadratic_mask_weight,
    sample_generators,
)
from .unet_init import build_unet, enable_gradient_checkpointing

logger = logging.getLogger(__name__)


ALWAYS_EVAL = ("vae", "text_encoder", "vision_tower")


def _frozen(module: nn.Module | None) -> nn.Module | None:
    if module is not None:
        module.requires_grad_(False).eval()
    return module


def load_frozen_parts(path: str | os.PathLike, text_encoder: bool = True):
    """(vae, text_encoder or None, tokenizer or None, scheduler) of a diffusers / LGVI folder."""
    from diffusers import AutoencoderKL  # noqa: PLC0415

    path = Path(path)
    vae = _frozen(load_pretrained(AutoencoderKL.from_pretrained, path / "vae"))
    encoder = tokenizer = None
    if text_encoder:
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        encoder = _frozen(load_pretrained(CLIPTextModel.from_pretrained, path / "text_encoder"))
    return vae, encoder, tokenizer, load_scheduler(path)


def training_noise_schedule(scheduler) -> torch.Tensor:
    """alphas_cumprod of the DDPM forward process with the checkpoint scheduler's betas."""
    from diffusers import DDPMScheduler  # noqa: PLC0415

    return DDPMScheduler.from_config(scheduler.config).alphas_cumprod.clone()


class LGVITrainingModel(nn.Module):
    """LGVI (referring): L = l1 L_diff + l2 L_mask."""

    def __init__(self, unet: LGVIUNet, vae, scheduler, text_encoder=None, tokenizer=None, settings: LossSettings = LossSettings()):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler, self.settings = tokenizer, scheduler, settings
        self.register_buffer("alphas_cumprod", training_noise_schedule(scheduler), persistent=False)

    @classmethod
    def from_pretrained(cls, path, *, in_channels=None, mask_decoder=True, settings=LossSettings()) -> "LGVITrainingModel":
        """From MagicBrush / InstructPix2Pix (2-D, inflated) or an LGVI folder (fine-tuning)."""
        unet = build_unet(path, in_channels=in_channels, mask_decoder=mask_decoder)
        vae, encoder, tokenizer, scheduler = load_frozen_parts(path, text_encoder=True)
        return cls(unet, vae, scheduler, encoder, tokenizer, settings)

    def train(self, mode: bool = True):
        super().train(mode)
        for name, module in self.frozen_modules().items():
            # frozen encoders never switch to training behaviour; the chat model's frozen layers follow the mode,
            # as transformers recomputes them (gradient checkpointing) only in training mode (LLaVA: no dropout)
            if name in ALWAYS_EVAL:
                module.eval()
        return self

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {name: module for name, module in (("vae", self.vae), ("text_encoder", self.text_encoder)) if module is not None}

    def pipeline(self) -> LGVIPipeline:
        """The inference pipeline over the modules being trained (encoding, validation samples)."""
        return LGVIPipeline(self.unet, self.vae, self.scheduler, self.text_encoder, self.tokenizer)

    def enable_gradient_checkpointing(self) -> None:
        enable_gradient_checkpointing(self.unet)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # ------------------------------------------------------------------ the loss
    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Mean over the batch's groups (see :func:`.data.collate`) of each group's loss."""
        results = [self.group_loss(group, batch.get("sample_seeds"), generator) for group in batch["groups"]]
        total = torch.stack([loss for loss, _ in results]).mean()
        parts = {name: torch.stack([p[name] for _, p in results]).mean() for name in results[0][1]}
        return total, parts

    def group_loss(self, group: dict, sample_seeds, generator) -> tuple[torch.Tensor, dict]:
        generators = sample_generators(group, sample_seeds, generator)
        noisy, noise, condition, timesteps = self._diffusion_inputs(group, generators)
        keep_text, keep_video = self._keep(generators)
        condition = condition * keep_video.view(-1, 1, 1, 1, 1).to(condition)
        contexts, extra = self.contexts(group, generators, keep_text)
        eps, logits = self._predict(noisy, timesteps, contexts, condition)
        l_diff = diffusion_loss(eps, noise)
        weights = group["has_mask"].to(keep_text) * keep_text * keep_video
        if self.settings.mask_weighting == "quadratic":
            weights = weights * quadratic_mask_weight(timesteps, self.num_train_timesteps).to(weights)
        if logits is not None:
            l_mask = mask_loss(logits, mask_targets(group["mask"].to(logits.device), logits.shape[-2:]), weights)
        else:
            l_mask = l_diff.new_zeros(())
        total = self.settings.diffusion * l_diff + self.settings.mask * l_mask
        parts = {"diffusion": l_diff.detach(), "mask": l_mask.detach()}
        if "lm" in extra:
            total = total + self.settings.lm * extra["lm"]
            parts["lm"] = extra["lm"].detach()
        return total, parts

    def _diffusion_inputs(self, batch, generators):
        """z_t, eps, c_x and t per sample (the frozen VAE runs without gradients)."""
        pipe = self.pipeline()
        device = self.unet.device
        targets, conditions, noises, steps = [], [], [], []
        with torch.no_grad():
            for row, g in enumerate(generators):
                frames = batch["video"].shape[2]
                targets.append(pipe.encode_video(batch["target"][row].transpose(0, 1), g, frames))
                conditions.append(pipe.encode_video(batch["video"][row].transpose(0, 1), g, frames))
                steps.append(torch.randint(0, self.num_train_timesteps, (1,), generator=g))
                noises.append(torch.randn(targets[-1].shape, generator=g, dtype=torch.float64).to(device, self.unet.dtype))
        z0, condition, noise = torch.cat(targets), torch.cat(conditions), torch.cat(noises)
        timesteps = torch.cat(steps).to(device)
        return add_noise(z0, noise, timesteps, self.alphas_cumprod), noise, condition, timesteps

    def _keep(self, generators) -> tuple[torch.Tensor, torch.Tensor]:
        draws = torch.stack([torch.rand(2, generator=g) for g in generators])
        device = self.unet.device
        keep_text = (draws[:, 0] >= self.settings.text_dropout).float().to(device)
        keep_video = (draws[:, 1] >= self.settings.video_dropout).float().to(device)
        return keep_text, keep_video

    def contexts(self, batch, generators, keep_text) -> tuple[list[torch.Tensor], dict]:
        """CLIP(expression) per sample; CLIP("") where the text is dropped (the inference negative)."""
        pipe = self.pipeline()
        texts = [text if keep else "" for text, keep in zip(batch["expression"], keep_text.tolist())]
        return [pipe.encode_text(text) for text in texts], {}

    def _predict(self, noisy, timesteps, contexts, condition):
        """One U-Net pass when every context has the same length, else one per sample."""
        dtype = self.unet.dtype
        if len({c.shape[1] for c in contexts}) == 1:
            return self.unet(noisy.to(dtype), timesteps, torch.cat(contexts).to(dtype), condition.to(dtype),
                             return_mask=True, mask_logits=True)
        outs = [self.unet(noisy[i : i + 1].to(dtype), timesteps[i : i + 1], contexts[i].to(dtype), condition[i : i + 1].to(dtype),
                          return_mask=True, mask_logits=True) for i in range(len(contexts))]
        masks = [m for _, m in outs]
        return torch.cat([e for e, _ in outs]), (torch.cat(masks) if masks[0] is not None else None)


def transfer_head(hidden_size: int, context_dim: int, init_std: float = 0.02) -> nn.Sequential:
    """LGVI-I's MM head (official ``transfer_head``): Linear(h, h) -> ReLU -> Linear(h, D, no bias) -> Dropout(0),
    initialised as the official ``post_init`` does (normal(0, initializer_range), zero bias)."""
    head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, context_dim, bias=False), nn.Dropout(0.0))
    for layer in (head[0], head[2]):
        nn.init.normal_(layer.weight, std=init_std)
    nn.init.zeros_(head[0].bias)
    return head


class LGVIITrainingModel(LGVITrainingModel):
    """LGVI-I (interactive): L = l1 L_diff + l2 L_mask + l3 L_lm, context = transfer head of the chat
    model's last-layer states over the response from its last ``{{prompt}}`` on."""

    def __init__(self, unet, vae, scheduler, chat_model, chat_tokenizer, head: nn.Module,
                 settings: LossSettings = LossSettings(), vocab_rows: int | None = None):
        super().__init__(unet, vae, scheduler, None, None, settings)
        self.chat_model, self.transfer_head = chat_model, head
        self.chat_tokenizer, self.vocab_rows = chat_tokenizer, vocab_rows
        chat_model.requires_grad_(False)
        self.chat_model.get_input_embeddings().weight.requires_grad_(True)
        self.projector.requires_grad_(True)
        head.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, path, *, chat_model, clip_path=None, chat_weights=None, settings=LossSettings()) -> "LGVIITrainingModel":
        """``path``: the LGVI (or LGVI-I) checkpoint; ``chat_model``: a llava-hf folder (or the original LLaVA
        layout with ``clip_path``); ``chat_weights``: an LGVI-I ``llava_weights.pth`` to start the embeddings,
        projector and transfer head from (default: ``<path>/llava/llava_weights.pth`` where present)."""
        unet = build_unet(path)
        vae, _, _, scheduler = load_frozen_parts(path, text_encoder=False)
        model, tokenizer = load_llava(chat_model, clip_path=clip_path, device="cpu", dtype=torch.float32)
        default_weights = Path(path) / "llava" / "llava_weights.pth"
        chat_weights = chat_weights or (default_weights if default_weights.is_file() else None)
        vocab_rows = None
        if chat_weights is not None:
            head, vocab_rows = apply_lgvi_weights(model, load_lgvi_mllm_weights(chat_weights))
            head = head.float()
            if head[2].out_features != unet.config.cross_attention_dim:
                raise ValueError(f"{chat_weights}: transfer head emits {head[2].out_features}-d features, the U-Net "
                                 f"cross-attends to {unet.config.cross_attention_dim}")
        else:
            text = model.config.text_config
            head = transfer_head(text.hidden_size, unet.config.cross_attention_dim, getattr(text, "initializer_range", 0.02))
        return cls(unet, vae, scheduler, model, tokenizer, head, settings, vocab_rows)

    @property
    def projector(self) -> nn.Module:
        inner = getattr(self.chat_model, "model", self.chat_model)
        return inner.multi_modal_projector

    def frozen_modules(self) -> dict[str, nn.Module]:
        modules = super().frozen_modules()
        language_model, lm_head = _llava_parts(self.chat_model)
        inner = getattr(self.chat_model, "model", self.chat_model)
        modules["vision_tower"] = inner.vision_tower
        modules["language_layers"] = language_model.layers
        modules["language_norm"] = language_model.norm
        if lm_head.weight is not self.chat_model.get_input_embeddings().weight:
            modules["lm_head"] = lm_head
        return modules

    def enable_gradient_checkpointing(self) -> None:
        super().enable_gradient_checkpointing()
        self.chat_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def chat(self) -> LGVIChat:
        return LGVIChat(self.chat_model, self.chat_tokenizer, self.transfer_head, self.vocab_rows)

    def contexts(self, batch, generators, keep_text) -> tuple[list[torch.Tensor], dict]:
        """Teacher-forced chat turn per sample: the response's LM loss and its conditioning (zeros where
        the text is dropped: the inference negative, kept in the graph so every process uses every weight)."""
        chat = self.chat()
        language_model, lm_head = _llava_parts(self.chat_model)
        contexts, losses = [], []
        for row, keep in enumerate(keep_text):
            request, response = batch["request"][row], batch["response"][row]
            if not request or not response:
                raise ValueError(f"LGVI-I sample {int(batch['index'][row])} has no chat request/response")
            first_frame = to_pil(((batch["video"][row][:, 0].permute(1, 2, 0) + 1) / 2).clamp(0, 1))
            conversation = Conversation()
            conversation.ask(request)
            prompt_ids = tokenize_with_image(conversation.prompt(), self.chat_tokenizer)
            reply_ids = self.chat_tokenizer(response, add_special_tokens=False).input_ids + [self.chat_tokenizer.eos_token_id]
            prompt = chat._prompt_embeddings(prompt_ids, first_frame)
            device = prompt.device
            reply = self.chat_model.get_input_embeddings()(torch.tensor([reply_ids[:-1]], device=device))
            hidden = language_model(inputs_embeds=torch.cat([prompt, reply], dim=1)).last_hidden_state
            # h_k predicts reply token k: the state at the position before it (as LGVIChat collects them)
            states = hidden[:, prompt.shape[1] - 1 :]
            losses.append(lm_loss(lm_head(states)[0], torch.tensor(reply_ids, device=device)))
            features = select_conditioning(self.transfer_head(states), prompt_start_index(response, self.chat_tokenizer))
            contexts.append(features * keep)
        return contexts, {"lm": torch.stack(losses).mean()}
