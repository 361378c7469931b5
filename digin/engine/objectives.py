"""Guidance losses and regularisers (the reference's `losses.py` and its regularisers), all per sample.

Every loss and regulariser returns shape (B,): means run over cutouts / pixels / channels of ONE sample,
never over the batch, so a sample's value (and gradient) does not depend on its batch mates.

`Objective` = one named classifier loss (`ClassifierLoss`: classifiers, targets, sample keys) looked up in
`LOSSES` plus weighted regularisers looked up in `REGULARIZERS`, compared against an explicit `Reference` (image,
latent, masks). The guidance loop calls it with the decoded image, the x̂0 latent and an augmentation salt. An
objective is never changed by the code that uses it: `with_reference` returns a new one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digin.engine.augment import classifier_seeds, sample_seed
from digin.engine.distances import mean_lp
from digin.engine.perceptual import build_lpips, masked_lpips, require_trunk_file

_REG_RE = re.compile(r"^(px|latent)(?:_(foreground|background))?_([a-z0-9]+)$")


# ------------------------------------------------------------------------------------ classifier losses
# logits (B, N, K) over N cutouts, y (B,) class indices → (B,)


def _target_logprob(logits_BNK: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    """log softmax(z)_y per cutout → (B, N)."""
    idx = y_B.view(-1, 1, 1).expand(-1, logits_BNK.shape[1], 1)
    return torch.log_softmax(logits_BNK.float(), dim=-1).gather(-1, idx).squeeze(-1)


def ce_loss(logits_BNK, y_B):
    """'CE' / 'log_conf' / 'NLL' (one classifier): −log p(y), mean over cutouts."""
    return -_target_logprob(logits_BNK, y_B).mean(1)


def conf_loss(logits_BNK, y_B):
    """'conf' (one classifier): −p(y)."""
    return -_target_logprob(logits_BNK, y_B).exp().mean(1)


def conf_diff_loss(logits1_BNK, logits2_BNK, y_B):
    """'conf' (two classifiers): −p1(y) + p2(y) — C1 confident, C2 not."""
    return (-_target_logprob(logits1_BNK, y_B).exp() + _target_logprob(logits2_BNK, y_B).exp()).mean(1)


def log_conf_diff_loss(logits1_BNK, logits2_BNK, y_B):
    """'log_conf' (two classifiers): −log p1(y) + log p2(y)."""
    return (-_target_logprob(logits1_BNK, y_B) + _target_logprob(logits2_BNK, y_B)).mean(1)


def target_margin(logits_BNK, y_B):
    """z_y − max_{k≠y} z_k per cutout → (B, N)."""
    logits = logits_BNK.float()
    idx = y_B.view(-1, 1, 1).expand(-1, logits.shape[1], 1)
    z_y = logits.gather(-1, idx).squeeze(-1)
    others = logits.scatter(-1, idx, float("-inf"))
    return z_y - others.amax(-1)


def logits_diff_loss(logits1_BNK, logits2_BNK, y_B):
    """'logits' (two classifiers): −margin1(y) + margin2(y)."""
    return (-target_margin(logits1_BNK, y_B) + target_margin(logits2_BNK, y_B)).mean(1)


def neuron_loss(name: str, logits_BNK, feats_BNF, targets_B2):
    """Neuron losses; targets (B, 2) = [class, neuron]; a = penultimate feature `neuron`."""
    a_BN = feats_BNF.float().gather(-1, targets_B2[:, 1].view(-1, 1, 1).expand(-1, feats_BNF.shape[1], 1))
    a_BN = a_BN.squeeze(-1)
    sign = 1.0 if name.startswith("neg_") else -1.0
    if name.endswith("plus_log_confidence"):
        return (sign * 10.0 * a_BN - 0.5 * _target_logprob(logits_BNK, targets_B2[:, 0])).mean(1)
    return (sign * a_BN).mean(1)


def text_loss(name: str, img_emb_BND, text_emb, factor: float = 1.0):
    """CLIP text losses on unit embeddings. text_emb (B, D) for inner_product / spherical_distance,
    (B, 2, D) = [positive, negative] for cross_entropy (2-way CE, logits scaled by factor² as in the reference)."""
    e = F.normalize(img_emb_BND.float(), dim=-1)
    if name == "cross_entropy":
        t_B2D = F.normalize(text_emb.float(), dim=-1)
        sims_BN2 = torch.einsum("bnd,bkd->bnk", e, t_B2D) * factor ** 2
        return -torch.log_softmax(sims_BN2, dim=-1)[..., 0].mean(1)
    t_B1D = F.normalize(text_emb.float(), dim=-1)[:, None]
    if name == "inner_product":
        return (-factor * (e * t_B1D).sum(-1)).mean(1)
    if name == "spherical_distance":
        return (factor * 2.0 * torch.arcsin((e - t_B1D).norm(dim=-1) / 2).pow(2)).mean(1)
    raise ValueError(f"unknown text loss {name!r}")


# ------------------------------------------------------------------------------------------- loss registry
# name → LossSpec. A spec's fn takes (outputs, targets, text, factor) → (B,): outputs holds one entry per
# classifier — its logits (B, N, K) for a "class" target, else classifier 0's features(...) = (logits, features /
# image embedding). conf and log_conf also take two classifiers: that form is the spec's `two_classifiers`.


def _neg_log(c: float) -> float:
    return -math.log(c)


def _neg(c: float) -> float:
    return -float(c)


@dataclass(frozen=True)
class LossSpec:
    """One loss form. classifiers: how many it takes (1 or 2). target: "class" (targets (B,) class indices),
    "class+neuron" (targets (B, 2) = [class, neuron]), "text" (text_embeddings (B, D)) or "text pair"
    (text_embeddings (B, 2, D) = [positive, negative]); text targets ignore `targets`. confidence_to_loss: the loss
    value at confidence c (the early-stopping threshold), None when the loss has no confidence scale.
    two_classifiers: the same name's two-classifier form, if any."""

    classifiers: int
    target: str
    fn: Callable
    confidence_to_loss: Callable[[float], float] | None
    help: str
    two_classifiers: LossSpec | None = None

    @property
    def features(self) -> bool:
        """True: reads classifier 0's features(...) (logits, features); False: each classifier's logits."""
        return self.target != "class"

    @property
    def forms(self) -> tuple:
        return tuple(f for f in (self, self.two_classifiers) if f is not None)

    def form(self, n_classifiers: int) -> LossSpec | None:
        return next((f for f in self.forms if f.classifiers == n_classifiers), None)


def _one(f):
    return lambda outs, y, text=None, factor=1.0: f(outs[0], y)


def _two(f):
    return lambda outs, y, text=None, factor=1.0: f(outs[0], outs[1], y)


def _neuron(name):
    return lambda outs, y, text=None, factor=1.0: neuron_loss(name, outs[0][0], outs[0][1], y)


def _text(name):
    return lambda outs, y, text=None, factor=1.0: text_loss(name, outs[0][1], text, factor)


_CE = "−log p(y), mean over cutouts"
LOSSES: dict[str, LossSpec] = {
    "CE": LossSpec(1, "class", _one(ce_loss), _neg_log, _CE),
    "log_conf": LossSpec(1, "class", _one(ce_loss), _neg_log, _CE, two_classifiers=LossSpec(
        2, "class", _two(log_conf_diff_loss), None, "−log p1(y) + log p2(y): classifier 1 sure of y, 2 not")),
    "NLL": LossSpec(1, "class", _one(ce_loss), _neg_log, _CE),
    "conf": LossSpec(1, "class", _one(conf_loss), _neg, "−p(y)", two_classifiers=LossSpec(
        2, "class", _two(conf_diff_loss), _neg, "−p1(y) + p2(y): classifier 1 surer of y than 2 by p1 − p2")),
    "logits": LossSpec(2, "class", _two(logits_diff_loss), None,
                       "−margin1(y) + margin2(y), margin = z_y − max_{k≠y} z_k"),
    "neuron_activation": LossSpec(1, "class+neuron", _neuron("neuron_activation"), None,
                                  "−a: raise feature `neuron` (a) of the classifier's feature module"),
    "neg_neuron_activation": LossSpec(1, "class+neuron", _neuron("neg_neuron_activation"), None,
                                      "a: lower feature `neuron`"),
    "neuron_activation_plus_log_confidence": LossSpec(
        1, "class+neuron", _neuron("neuron_activation_plus_log_confidence"), None, "−10·a − 0.5·log p(class)"),
    "neg_neuron_activation_plus_log_confidence": LossSpec(
        1, "class+neuron", _neuron("neg_neuron_activation_plus_log_confidence"), None, "10·a − 0.5·log p(class)"),
    "inner_product": LossSpec(1, "text", _text("inner_product"), None, "−factor·cos(image, text)"),
    "spherical_distance": LossSpec(1, "text", _text("spherical_distance"), None,
                                   "factor·2·arcsin(‖e − t‖ / 2)² on unit embeddings"),
    "cross_entropy": LossSpec(1, "text pair", _text("cross_entropy"), None,
                              "2-way CE of factor²·cos(image, [positive, negative]) towards the positive"),
}
LOSS_NAMES = tuple(LOSSES)


def losses_for(*, target: str | None = None, classifiers: int | None = None) -> tuple[str, ...]:
    """Names with a form of this target and / or classifier count, e.g. losses_for(target="class+neuron")."""
    return tuple(name for name, spec in LOSSES.items()
                 if any((target is None or f.target == target) and (classifiers is None or f.classifiers == classifiers)
                        for f in spec.forms))


# the name groups as they were before the table (read-only views of it)
ONE_CLASSIFIER_LOSSES = losses_for(target="class", classifiers=1)
TWO_CLASSIFIER_LOSSES = losses_for(classifiers=2)
NEURON_LOSSES = losses_for(target="class+neuron")
TEXT_LOSSES = losses_for(target="text") + losses_for(target="text pair")


def _count(n: int) -> str:
    return {1: "one classifier", 2: "two classifiers"}.get(n, f"{n} classifiers")


def loss_spec(name: str, n_classifiers: int) -> LossSpec:
    """The form of loss `name` for n classifiers; ValueError (one line) for an unknown name or count."""
    spec = LOSSES.get(name)
    if spec is None:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSS_NAMES)}")
    form = spec.form(n_classifiers)
    if form is None:
        counts = tuple(sorted(f.classifiers for f in spec.forms))
        need = {(1,): "exactly one classifier", (1, 2): "one or two classifiers"}.get(counts, _count(counts[0]))
        raise ValueError(f"loss {name!r} needs {need}, got {n_classifiers}")
    return form


def check_loss(name: str, n_classifiers: int, early_stopping_confidence: float | None = None) -> float | None:
    """Refuse (ValueError, one line) a loss the table lacks, a classifier count it does not take, or an early-stopping
    confidence for a loss without a confidence scale; → the loss value at that confidence (the early-stopping
    threshold on the loss), None when no confidence is given."""
    form = loss_spec(name, n_classifiers)
    c = early_stopping_confidence
    if c is None:
        return None
    if form.confidence_to_loss is None:
        scaled = {k: [n for n, s in LOSSES.items() if getattr(s.form(k), "confidence_to_loss", None) is not None]
                  for k in (1, 2)}
        raise ValueError(f"early_stopping_confidence={c!r}: loss {name!r} with {_count(n_classifiers)} has no "
                         f"confidence scale (set optim_params.early_stopping_loss instead; losses with one: "
                         f"{'; '.join(', '.join(v) + ' with ' + _count(k) for k, v in scaled.items() if v)})")
    return float(form.confidence_to_loss(c))


# ------------------------------------------------------------------------------------------ regularisers
# name = <space>[_<region>]_<distance>: space px (decoded image) or latent (x̂0); region foreground / background
# weights the distance by the mask M or 1 − M; the distance comes from REGULARIZERS.


@dataclass(frozen=True)
class Distance:
    spaces: tuple  # where it applies: "px", "latent"
    fn: object  # (x, ref, mask | None, models: RegularizerModels) → (B,)


REGULARIZERS = {
    # mean over C,H,W of M·|x − x0|^p per sample (M broadcast over channels; no division by mask area)
    "l1": Distance(("px", "latent"), lambda x, ref, mask, models: mean_lp(x, ref, 1, mask)),
    "l2": Distance(("px", "latent"), lambda x, ref, mask, models: mean_lp(x, ref, 2, mask)),
    "lpips": Distance(("px",), lambda x, ref, mask, models: masked_lpips(models.lpips(x.device), x, ref, mask)),
    "clip": Distance(("px",), lambda x, ref, mask, models: models.clip(x, ref, mask)),
}


def parse_regularizer(name: str) -> tuple[str, str | None, str]:
    """'px_background_l2' → ('px', 'background', 'l2'). ValueError for unknown / unsupported names."""
    m = _REG_RE.match(name)
    if m is None or m.group(3) not in REGULARIZERS or m.group(1) not in REGULARIZERS[m.group(3)].spaces:
        raise ValueError(f"unknown regulariser {name!r}; valid: px_l1, px_l2, px_lpips, px_clip, latent_l1, latent_l2, "
                         f"px_/latent_{{foreground,background}}_{{l1,l2}}, px_{{foreground,background}}_{{lpips,clip}}")
    return m.group(1), m.group(2), m.group(3)


class RegularizerModels:
    """Networks some distances need: LPIPS (built on first use, or given) and the masked CLIP distance (built by
    the task from a local weights file). Shared by an objective and its select()ed / re-referenced copies."""

    def __init__(self, lpips_model=None, clip_model=None):
        self._lpips, self.clip = lpips_model, clip_model

    def lpips(self, device):
        if self._lpips is None:
            self._lpips = build_lpips(device)
        return self._lpips


def _take(t, rows):
    return None if t is None else t[torch.as_tensor(rows, dtype=torch.long, device=t.device)]


def _fp32(t):
    return None if t is None else t.detach().float()


@dataclass(frozen=True)
class Reference:
    """What the regularisers compare against, per sample: image img0 (B,3,H,W), latent z0 (B,C,h,w) and
    foreground masks (B,1,H,W) / (B,1,h,w). Fields may be None until a caller has them."""

    img0: torch.Tensor | None = None
    z0: torch.Tensor | None = None
    px_mask: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None

    def __post_init__(self):
        for name in ("px_mask", "latent_mask"):
            m = getattr(self, name)
            if m is not None and (m.dim() != 4 or m.shape[1] != 1):
                raise ValueError(f"{name} must be (B, 1, H, W), got {tuple(m.shape)}")
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _fp32(getattr(self, f.name)))

    def filled(self, **given) -> "Reference":
        """This reference with `given` fields where it has none (a reference given earlier is kept)."""
        return dataclasses.replace(self, **{k: v for k, v in given.items()
                                            if v is not None and getattr(self, k) is None})

    def select(self, rows) -> "Reference":
        return Reference(*(_take(getattr(self, f.name), rows) for f in dataclasses.fields(self)))


# ----------------------------------------------------------------------------------------- classifier loss


class ClassifierLoss:
    """A named classifier loss for a batch: its classifiers, targets and per-sample keys (augmentation seeds)."""

    def __init__(self, loss: str, classifiers: list, targets, sample_keys: list[str], text_embeddings=None,
                 noise_scale_fn=None, text_loss_factor: float = 1.0):
        classifiers = list(classifiers)
        targets = torch.as_tensor(targets)
        self.spec = _check_loss(loss, len(classifiers), targets, sample_keys, text_embeddings)
        self.name = loss
        self.classifiers = classifiers
        self.targets = targets.long()
        self.sample_keys = list(sample_keys)
        self.text_embeddings = text_embeddings
        self.noise_scale_fn = noise_scale_fn
        self.text_loss_factor = float(text_loss_factor)

    def select(self, rows) -> "ClassifierLoss":
        new = copy.copy(self)
        new.targets, new.text_embeddings = _take(self.targets, rows), _take(self.text_embeddings, rows)
        new.sample_keys = [self.sample_keys[i] for i in rows]
        return new

    def augmentation(self, augment_salt):
        """Per-sample cutout seeds and the noise scale for this salt; (None, 1.0) = no augmentation."""
        if augment_salt is None:
            return None, 1.0
        seeds = [sample_seed(k, *augment_salt) for k in self.sample_keys]
        scale = float(self.noise_scale_fn(augment_salt)) if self.noise_scale_fn is not None else 1.0
        return seeds, scale

    def _targets_on(self, device) -> torch.Tensor:
        """Targets on the image device, copied once (not on every call of the hot loop)."""
        if self.targets.device != torch.device(device):
            self.targets = self.targets.to(device)
        return self.targets

    def __call__(self, img_B3HW, seeds=None, noise_scale: float = 1.0) -> torch.Tensor:
        y = self._targets_on(img_B3HW.device)
        spec, clfs = self.spec, self.classifiers
        if spec.features:  # neuron / text losses: classifier 0's (logits, features or image embedding)
            outs = [clfs[0].features(img_B3HW, seeds, noise_scale)]
        else:  # each classifier its own views (independent draws, as the reference's two wrappers)
            outs = [c(img_B3HW, None if seeds is None else classifier_seeds(seeds, j), noise_scale)
                    for j, c in enumerate(clfs)]
        text = None if self.text_embeddings is None else self.text_embeddings.to(img_B3HW.device)
        return spec.fn(outs, y, text, self.text_loss_factor)

    @torch.no_grad()
    def confidences(self, img_B3HW: torch.Tensor) -> dict:
        """Non-augmented scores: 'conf_i' = p_i(target) per classifier; 'activation' for neuron losses;
        'similarity' = cos(image, positive text) for text losses."""
        y = self._targets_on(img_B3HW.device)
        if self.spec.target in ("text", "text pair"):
            _, emb = self.classifiers[0].features(img_B3HW)
            t = self.text_embeddings.to(img_B3HW.device)
            t = t[:, 0] if t.dim() == 3 else t
            return {"similarity": F.cosine_similarity(emb[:, 0].float(), t.float(), dim=-1)}
        if self.spec.target == "class+neuron":
            logits, feats = self.classifiers[0].features(img_B3HW)
            return {"conf_0": _target_logprob(logits, y[:, 0]).exp()[:, 0],
                    "activation": feats[:, 0].gather(-1, y[:, 1:2]).squeeze(-1)}
        return {f"conf_{i}": _target_logprob(c(img_B3HW), y).exp()[:, 0] for i, c in enumerate(self.classifiers)}


def _check_loss(loss: str, n: int, targets: torch.Tensor, sample_keys, text_embeddings) -> LossSpec:
    spec = loss_spec(loss, n)
    if spec.target == "class+neuron":
        if targets.dim() != 2 or targets.shape[1] != 2:
            raise ValueError(f"loss {loss!r} needs targets of shape (B, 2) = [class, neuron], "
                             f"got {tuple(targets.shape)}")
    elif spec.target == "class" and targets.dim() != 1:
        raise ValueError(f"loss {loss!r} needs class targets of shape (B,), got {tuple(targets.shape)}")
    if len(sample_keys) != targets.shape[0]:
        raise ValueError(f"{len(sample_keys)} sample keys for {targets.shape[0]} targets")
    if spec.target in ("text", "text pair"):
        if text_embeddings is None:
            raise ValueError(f"text loss {loss!r} needs text_embeddings")
        if spec.target == "text pair" and (text_embeddings.dim() != 3 or text_embeddings.shape[1] != 2):
            raise ValueError(f"text loss {loss!r} needs text_embeddings (B, 2, D) = [positive, negative]")
    return spec


# --------------------------------------------------------------------------------------------- objective


class Objective:
    """Per-sample guidance objective for a batch: total = loss_weight·loss + Σ w_reg·reg, each (B,)."""

    def __init__(self, loss: str, classifiers: list, targets: torch.Tensor, sample_keys: list[str],
                 loss_weight: float = 1.0, regularizers=(), regularizers_ws=(), img0: torch.Tensor | None = None,
                 z0: torch.Tensor | None = None, px_mask=None, latent_mask=None, text_embeddings=None,
                 noise_scale_fn=None, *, text_loss_factor: float = 1.0, lpips_model=None, clip_model=None):
        self.classifier_loss = ClassifierLoss(loss, classifiers, targets, sample_keys, text_embeddings,
                                              noise_scale_fn, text_loss_factor)
        regularizers, regularizers_ws = list(regularizers or ()), [float(w) for w in (regularizers_ws or ())]
        if len(regularizers) != len(regularizers_ws):
            raise ValueError(f"{len(regularizers)} regularizers {regularizers} but {len(regularizers_ws)} "
                             f"regularizers_ws {regularizers_ws}")
        self._reg_specs = [parse_regularizer(r) for r in regularizers]
        kinds = {kind for _, _, kind in self._reg_specs}
        if clip_model is None and "clip" in kinds:
            raise ValueError(f"regularizers {regularizers} need the masked CLIP distance model: set "
                             f"clip_regularizer_model=<open_clip name or folder> clip_regularizer_weights=<file> "
                             f"(digin.engine.masked_clip.build_masked_clip)")
        if lpips_model is None and "lpips" in kinds:
            require_trunk_file()  # a missing AlexNet file stops here, before anything runs
        self.loss = loss
        self.loss_weight = float(loss_weight)
        self.regularizers = regularizers
        self.regularizers_ws = regularizers_ws
        self.models = RegularizerModels(lpips_model, clip_model)
        self.reference = Reference(img0, z0, px_mask, latent_mask)

    @property
    def targets(self) -> torch.Tensor:
        return self.classifier_loss.targets

    @property
    def sample_keys(self) -> list[str]:
        return self.classifier_loss.sample_keys

    @property
    def needs_reference(self) -> bool:
        """True when a regulariser compares against a reference image/latent that was not given."""
        ref = self.reference
        need_px = any(s == "px" for s, _, _ in self._reg_specs)
        need_lat = any(s == "latent" for s, _, _ in self._reg_specs)
        return (need_px and ref.img0 is None) or (need_lat and ref.z0 is None)

    @property
    def needs_masks(self) -> bool:
        return any(region is not None for _, region, _ in self._reg_specs)

    def with_reference(self, img0=None, z0=None, px_mask=None, latent_mask=None) -> "Objective":
        """A copy comparing against these where this objective has none (a reference given earlier is kept)."""
        new = copy.copy(self)
        new.reference = self.reference.filled(img0=img0, z0=z0, px_mask=px_mask, latent_mask=latent_mask)
        return new

    def select(self, idx) -> "Objective":
        """The same objective restricted to batch rows idx (shares classifiers and the regulariser models)."""
        rows = idx.tolist() if torch.is_tensor(idx) else list(idx)
        new = copy.copy(self)
        new.classifier_loss = self.classifier_loss.select(rows)
        new.reference = self.reference.select(rows)
        return new

    def regularizer(self, name: str, img_B3HW, z_BCHW) -> torch.Tensor:
        space, region, kind = parse_regularizer(name)
        ref = self.reference
        x, x0, mask = (img_B3HW, ref.img0, ref.px_mask) if space == "px" else (z_BCHW, ref.z0, ref.latent_mask)
        if x0 is None:
            raise ValueError(f"regulariser {name!r} needs a reference {'image img0' if space == 'px' else 'latent z0'}"
                             f" (pass it, or take the objective prepare_edit returns)")
        if region is not None:
            if mask is None:
                raise ValueError(f"regulariser {name!r} needs a {'pixel' if space == 'px' else 'latent'} mask "
                                 f"(pass px_mask/latent_mask, or take the objective prepare_edit returns)")
            if mask.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"regulariser {name!r}: mask {tuple(mask.shape)} does not match {tuple(x.shape)}")
            mask = mask.to(x.device)
            mask = mask if region == "foreground" else 1.0 - mask
        else:
            mask = None
        return REGULARIZERS[kind].fn(x, x0.to(x.device), mask, self.models)

    def __call__(self, img_B3HW: torch.Tensor, z_BCHW: torch.Tensor | None, augment_salt=None):
        """→ (total (B,), parts {loss name / regulariser name: (B,)}). augment_salt None = no augmentation."""
        seeds, noise_scale = self.classifier_loss.augmentation(augment_salt)
        loss_B = self.classifier_loss(img_B3HW, seeds, noise_scale)
        parts = {self.loss: loss_B}
        total_B = self.loss_weight * loss_B
        for name, w in zip(self.regularizers, self.regularizers_ws):
            reg_B = self.regularizer(name, img_B3HW, z_BCHW)
            parts[name] = reg_B
            total_B = total_B + w * reg_B
        return total_B, parts

    def confidences(self, img_B3HW: torch.Tensor) -> dict:
        return self.classifier_loss.confidences(img_B3HW)
