"""The task-vector merge of CoCoCo (AAAI 2025, §3.4): θ = θ_base + α·τ_ip + β·τ_p.

θ_base = SD-1.5 with ``conv_in`` zero-padded to the inpainting model's 9 input channels,
τ_ip = θ_SD-inpainting − θ_base, τ_p = (θ_personal − θ_SD1.5) + Σ_j s_j·Δ_LoRA_j. Per weight, in
float32 and cast once to the output dtype (checkpoint-formats.md §3.5, §4):

* out = lerp(θ_base, θ_inpaint, α) + β_c · pad(τ_p), β_c the component's β;
* ``conv_in`` channels 0-3 take α·τ_ip + β·τ_p, channels 4-8 (mask, masked-image latent) only α·τ_ip;
* α = 0 returns θ_base and α = 1 returns θ_inpaint exactly (no round trip through a difference),
  and β = 0 adds nothing, so those anchors are bit-exact;
* non-float tensors are copied from the inpainting model; motion-module keys are never changed.

A :class:`MergePlan` opens the inputs, checks everything that can be checked without reading
weights (model family, a 9-channel inpainting U-Net, shapes, LoRA names, shapes, DoRA axes, ranks
and finite factors) and then computes one weight at a time; a merged weight with NaN / inf (from
an input or an overflow) raises :class:`NonFiniteError` naming the file and tensor responsible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .. import validation
from ..checkpoints import ldm_keys
from ..checkpoints.safe_load import CheckpointError
from . import family
from .finite import NonFiniteError, is_finite
from .lora_names import LoraTargets
from .loras import LoraSpec, LoraStack
from .report import MergeReport
from .sources import COMPONENTS, ModelSource, open_model

F32 = torch.float32
CONV_IN = "conv_in.weight"
CHUNK_ELEMENTS = 1 << 22  # rows per block chosen so float32 temporaries stay around 16 MB
MERGED_COMPONENTS = ("unet", "text_encoder", "vae")


@dataclass
class MergeRecipe:
    """Inputs of a merge. Models are paths (single file or diffusers folder), ``{component: module or
    state dict}`` mappings or :class:`ModelSource` s; LoRAs are :class:`LoraSpec` s or ``"FILE[:STRENGTH]"``.

    ``base`` (SD-1.5, 4-channel) is needed when ``alpha != 1`` or a ``personal`` checkpoint is given.
    ``beta_unet`` / ``beta_text`` / ``beta_vae`` override ``beta`` per component. ``use_ema`` reads the
    personalized file's ``model_ema.*`` U-Net copy when it has one.
    """

    inpaint: object
    base: object = None
    personal: object = None
    loras: Sequence[Union[LoraSpec, str]] = ()
    alpha: float = 1.0
    beta: float = 1.0
    beta_unet: Optional[float] = None
    beta_text: Optional[float] = None
    beta_vae: Optional[float] = None
    use_ema: bool = False
    components: Sequence[str] = MERGED_COMPONENTS

    def __post_init__(self):
        for name in ("alpha", "beta", "beta_unet", "beta_text", "beta_vae"):
            if getattr(self, name) is not None:
                validation.finite(getattr(self, name), name)

    def betas(self) -> Dict[str, float]:
        chosen = {"unet": self.beta_unet, "text_encoder": self.beta_text, "vae": self.beta_vae}
        return {c: float(self.beta if chosen[c] is None else chosen[c]) for c in self.components}

    def lora_specs(self) -> List[LoraSpec]:
        return [spec if isinstance(spec, LoraSpec) else LoraSpec.parse(str(spec)) for spec in self.loras]


def is_motion_key(key: str) -> bool:
    """CoCoCo / AnimateDiff motion-module weights (never changed by a merge)."""
    return "motion_modules" in key or "temporal_transformer" in key


def _pad(tensor: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Zero-pad ``tensor`` along dim 1 to ``shape`` (SD-1.5 conv_in 4 -> 9 input channels)."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    out = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    out[:, : tensor.shape[1]] = tensor
    return out


def _paddable(small: Tuple[int, ...], big: Tuple[int, ...]) -> bool:
    return (len(small) == len(big) >= 2 and small[0] == big[0] and small[2:] == big[2:] and small[1] < big[1])


def _require_inpainting_unet(model: ModelSource) -> None:
    """The model given as the inpainting model must have more conv_in channels than latent ones (9 vs 4)."""
    unet = model.get("unet")
    if CONV_IN not in unet:
        return
    channels = unet.shape(CONV_IN)[1]
    latent = unet.shape("conv_out.weight")[0] if "conv_out.weight" in unet else 4
    if channels <= latent:
        raise ValueError(
            f"inpainting model {model.name}: its conv_in has {channels} input channels, so it is a text-to-image "
            f"model; the inpainting model must have {2 * latent + 1} (latent + mask + masked-image latent), e.g. "
            "sd-v1-5-inpainting. Give the text-to-image SD-1.5 as the base model instead")


class MergePlan:
    """Checked merge of one recipe; :meth:`compute` returns one merged weight at a time."""

    def __init__(self, recipe: MergeRecipe, *, dtype: Optional[torch.dtype] = None,
                 device: Union[str, torch.device] = "cpu"):
        for name, value in (("alpha", recipe.alpha), *recipe.betas().items()):
            validation.finite(value, name)  # again: recipes are mutable
        unknown = [c for c in recipe.components if c not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown component(s) {', '.join(unknown)}; expected some of {', '.join(COMPONENTS)}")
        self.recipe, self.dtype, self.device = recipe, dtype, torch.device(device)
        self.alpha = float(recipe.alpha)
        self.betas = recipe.betas()
        self._opened: List[ModelSource] = []
        try:
            self._open_and_check(recipe)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _open(self, source, role: str, **kwargs) -> Optional[ModelSource]:
        if source is None:
            return None
        try:
            model = open_model(source, **kwargs)
        except CheckpointError as error:
            raise type(error)(f"{role} model: {error}") from None
        if model is not source:
            self._opened.append(model)
        return model

    def _open_and_check(self, recipe: MergeRecipe) -> None:
        self.inpaint = self._open(recipe.inpaint, "inpainting")
        self.base = self._open(recipe.base, "SD-1.5 base")
        self.personal = self._open(recipe.personal, "personalized", use_ema=recipe.use_ema)
        specs = recipe.lora_specs()
        self.report = MergeReport(self.alpha, dict(self.betas))
        if self.inpaint is None or self.inpaint.get("unet") is None:
            raise ValueError("the SD-1.5 inpainting model (with a U-Net) is required")
        if self.alpha != 1.0 and self.base is None:
            raise ValueError(f"alpha={self.alpha:g} needs the SD-1.5 base model (tau_ip = inpaint - SD1.5); give base")
        if self.personal is not None and self.base is None:
            raise ValueError("a personalized checkpoint needs the SD-1.5 base model (tau_p = personal - SD1.5); give base")
        family.require_sd1(self.inpaint, "inpainting model")
        _require_inpainting_unet(self.inpaint)
        width = family.cross_attention_width(self.inpaint)
        for model, role in ((self.base, "base model"), (self.personal, "personalized model")):
            if model is not None:
                family.require_sd1(model, role, width)
        for model, label in ((self.inpaint, "inpaint"), (self.base, "base"), (self.personal, "personal")):
            if model is not None:
                for key, reason in model.ignored.items():
                    self.report.add_unused(f"{label} {model.name}", key, reason)
        if self.personal is not None and self.personal.info is not None and self.personal.info.has_ema:
            self.report.notes.append("personalized file has EMA weights; using the " +
                                     ("EMA" if self.personal.used_ema else "non-EMA") + " U-Net")
        self.keys: Dict[str, List[str]] = {}
        self._tau_shapes: Dict[Tuple[str, str], Tuple[int, ...]] = {}
        for component in recipe.components:
            self._plan_component(component)
        self.loras = LoraStack.build(specs, self.lora_targets(), self._tau_shape, context_width=width,
                                     components=tuple(c for c in self.keys if c != "vae"))
        for label, unused in self.loras.unused.items():
            for key, reason in unused.items():
                self.report.add_unused(f"LoRA {label}", key, reason)
        self.report.lora_modules = dict(self.loras.applied)
        self.report.notes.extend(self.loras.notes)
        for (component, key) in self.loras.entries:
            if component in self.report.components:
                self.report.counts(component).lora += 1

    def _plan_component(self, component: str) -> None:
        inp = self.inpaint.get(component)
        if inp is None:
            self.report.notes.append(f"the inpainting model has no {component}; it is not merged")
            return
        base = self.base.get(component) if self.base else None
        pers = self.personal.get(component) if self.personal else None
        if self.personal is not None and pers is None:
            what = "the inpainting model's VAE is kept" if component == "vae" else f"no personal delta on the {component}"
            self.report.notes.append(f"personalized model has no {component}; {what}")
        counts = self.report.counts(component)
        keys = inp.keys()
        self.keys[component] = keys
        latent = inp.shape("conv_out.weight")[0] if component == "unet" and "conv_out.weight" in inp else 4
        bad: List[str] = []
        for key in keys:
            shape = inp.shape(key)
            counts.weights += 1
            if is_motion_key(key):
                counts.kept += 1
                continue
            tau = shape
            if base is not None and key in base:
                tau = base.shape(key)
                if tau != shape and not _paddable(tau, shape):
                    bad.append(f"{component}:{key} base {tau} vs inpaint {shape}")
                    continue
            elif component == "unet" and key == CONV_IN and len(shape) == 4:
                tau = (shape[0], latent, *shape[2:])
            if not inp.dtype(key).is_floating_point or (base is not None and key not in base):
                counts.kept += 1
            elif base is not None and self.alpha != 1.0:
                counts.task_vector += 1
            self._tau_shapes[(component, key)] = tau
            if tau != shape:
                counts.padded.append(key)
            if pers is not None and key in pers:
                found = pers.shape(key)
                if found != tau:
                    if key == CONV_IN and found == shape:
                        raise ValueError(
                            f"personalized model {self.personal.name}: its conv_in has {found[1]} input channels, so it "
                            "is an inpainting model; tau_p must come from a text-to-image SD-1.5 checkpoint "
                            f"({tau[1]} channels). Give that file as --inpaint instead, or use its text-to-image original")
                    bad.append(f"{component}:{key} personal {found} vs SD-1.5 {tau}")
                elif inp.dtype(key).is_floating_point and base is not None and key in base:
                    counts.personal += 1
        if bad:
            raise ValueError(f"{len(bad)} weights have shapes that cannot be merged (not SD-1.x models of one kind?): "
                             + "; ".join(bad[:5]))
        for model, source, label in ((self.base, base, "base"), (self.personal, pers, "personal")):
            if source is None:
                continue
            inp_keys = set(keys)
            for key in source.keys():
                if key not in inp_keys:
                    self.report.add_unused(f"{label} {model.name}", f"{component}:{key}",
                                           "the inpainting model has no such weight")

    def lora_targets(self) -> LoraTargets:
        """Every name a LoRA may use for a U-Net or text-encoder weight of the inpainting model."""
        aliases: Dict[str, Dict[str, List[str]]] = {}
        unet = self.inpaint.get("unet")
        unet_map = ldm_keys.UNetKeyMap.from_diffusers_keys(unet.keys())
        for component in ("unet", "text_encoder"):  # merged or not, so that skipped LoRA layers are named as such
            source = self.inpaint.get(component)
            if source is None:
                continue
            table = aliases.setdefault(component, {})
            for key in source.keys():
                others = []
                if component == "unet":
                    try:
                        others.append(unet_map.to_ldm(key))
                    except ldm_keys.UnknownKeyError:
                        pass
                table[key] = others
        return LoraTargets(aliases)

    def _tau_shape(self, component: str, key: str) -> Optional[Tuple[int, ...]]:
        return self._tau_shapes.get((component, key))

    # ------------------------------------------------------------------ merging
    def items(self) -> Iterator[Tuple[str, str]]:
        """Every ``(component, key)`` of the output, in the inpainting model's order."""
        for component, keys in self.keys.items():
            for key in keys:
                yield component, key

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.keys.values())

    def shape(self, component: str, key: str) -> Tuple[int, ...]:
        return tuple(self.inpaint.get(component).shape(key))

    def out_dtype(self, component: str, key: str) -> torch.dtype:
        found = self.inpaint.get(component).dtype(key)
        return self.dtype if (self.dtype is not None and found.is_floating_point) else found

    def compute(self, component: str, key: str) -> torch.Tensor:
        """The merged weight (in :meth:`out_dtype`, on the plan's ``device``, where the arithmetic runs);
        may be the inpainting model's own tensor when unchanged. Large weights are merged in blocks of
        rows so that the float32 temporaries stay small (the formula is element-wise). Raises
        :class:`NonFiniteError` (naming the input file and tensor, or the overflow) unless it is finite."""
        merged = self._compute(component, key)
        if not is_finite(merged):
            raise self.non_finite(component, key, merged.dtype)
        return merged

    def non_finite(self, component: str, key: str, dtype: torch.dtype) -> NonFiniteError:
        """The error for a merged weight that is not finite in ``dtype``: the first input holding NaN / inf,
        else the overflow of finite inputs (huge α, β or LoRA strengths, or values beyond ``dtype``'s range)."""
        for model, role in ((self.inpaint, "inpainting model"), (self.base, "SD-1.5 base model"),
                            (self.personal, "personalized model")):
            tensor = self._read(model, component, key)
            if tensor is not None and not is_finite(tensor):
                return NonFiniteError(f"{role} {model.describe(component, key)} holds NaN or infinite values; "
                                      "nothing was merged")
        name = str(dtype).replace("torch.", "")
        return NonFiniteError(
            f"the merged weight {component}:{key} is not finite in {name} although every input is: alpha="
            f"{self.alpha:g}, beta={self.betas[component]:g} or a LoRA strength / alpha is too large "
            f"(or the result exceeds the range of {name}); nothing was merged")

    def _compute(self, component: str, key: str) -> torch.Tensor:
        inp = self.inpaint.get(component).get(key)
        out_dtype = self.out_dtype(component, key)
        tau_shape = self._tau_shapes.get((component, key))
        if tau_shape is None or not inp.is_floating_point():
            return inp.to(self.device, out_dtype)
        base = self._read(self.base, component, key)
        beta = self.betas[component]
        pers = self._read(self.personal, component, key) if beta != 0.0 and base is not None else None
        delta = self._lora_delta(component, key, tau_shape, inp, base, pers) if beta != 0.0 else None
        if (base is None or self.alpha == 1.0) and pers is None and delta is None:
            return inp.to(self.device, out_dtype)
        if inp.dim() == 0 or inp.numel() <= CHUNK_ELEMENTS:
            return self._merge_rows(inp, base, pers, delta, beta).to(out_dtype)
        out = torch.empty(inp.shape, dtype=out_dtype, device=self.device)
        rows = max(1, CHUNK_ELEMENTS // (inp.numel() // inp.shape[0]))
        for start in range(0, inp.shape[0], rows):
            part = slice(start, start + rows)
            out[part] = self._merge_rows(inp[part], None if base is None else base[part],
                                         None if pers is None else pers[part], None if delta is None else delta[part], beta)
        return out

    @staticmethod
    def _read(model: Optional[ModelSource], component: str, key: str) -> Optional[torch.Tensor]:
        source = model.get(component) if model is not None else None
        return source.get(key) if source is not None and key in source else None

    def _merge_rows(self, inp, base, pers, delta, beta: float) -> torch.Tensor:
        """lerp(pad(θ_SD1.5), θ_inpaint, α) + β·pad(θ_personal − θ_SD1.5 + Δ_LoRA) for a block of rows, in float32.

        In place on fresh float32 copies (never on the inputs); the operations and their order are those of
        ``p + α·(a − p) + β·τ``, so results are bit-identical to the out-of-place formula."""
        b = None if base is None else base.to(self.device, F32)
        if b is None or self.alpha == 1.0:
            out = inp.to(self.device, F32, copy=True)
        elif self.alpha == 0.0:
            out = _pad(b, inp.shape) if tuple(b.shape) != tuple(inp.shape) else b.clone()
        else:
            padded = _pad(b, inp.shape)
            out = inp.to(self.device, F32, copy=True).sub_(padded).mul_(self.alpha).add_(padded)
        tau = None if pers is None else pers.to(self.device, F32, copy=True).sub_(b)
        if delta is not None:
            tau = delta.clone() if tau is None else tau.add_(delta)
        if tau is not None:
            tau.mul_(beta)
            (out if tau.shape == out.shape else out[:, : tau.shape[1]]).add_(tau)  # conv_in: channels 0-3 only
        return out

    def _lora_delta(self, component, key, shape, inp, base, pers) -> Optional[torch.Tensor]:
        def reference() -> torch.Tensor:  # the weight the LoRAs were trained on (DoRA only)
            for weight in (pers, base):
                if weight is not None:
                    return weight.to(self.device, F32)
            return inp.to(self.device, F32)[:, : shape[1]] if tuple(inp.shape) != tuple(shape) else inp.to(self.device, F32)

        return self.loras.delta(component, key, shape, reference, device=self.device)

    def close(self) -> None:
        for model in self._opened:
            model.close()
        self._opened.clear()

    def __enter__(self) -> "MergePlan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
