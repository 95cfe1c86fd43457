"""Partial-label loss: learn from a label that names a *set* of model classes (Bevandic et al., IJCV 2024;
UniSeg, ECCV 2022).

A pixel labelled with code k, the label set S_k of a dataset's class (Cityscapes' ``rider``: bicyclist,
rider_other, motorcyclist), may be any member; the model is only pushed away from classes outside the set. With
p = softmax(z), the options (constructor arguments of :class:`PartialLabelLoss`):

- ``label_set_weights="uniform"``: ``-log sum_{c in S_k} p_c``.
- ``label_set_weights="records"``: forward correction with a noise model estimated from MSeg's train-split
  relabeling records, ``-log sum_{c in S_k} T[k|c] p_c`` where T[k|c] = P(the dataset labels k | true class c)
  (:func:`~mseg_semantic.taxonomy.label_set_rule.record_weights`): P(c|k) is the share of k's relabeled train
  segments that are c, T[k|c] = P(c|k) / sum_{k' of the dataset, c in S_k'} P(c|k') (equal priors for the
  dataset's labels), each row divided by its largest entry (a constant per label: no gradient changes). A class in
  only one set of its dataset has T = 1, so where a dataset's sets are disjoint this is ``uniform`` exactly; the
  weights matter where a class is in several sets (ADE20K's ``chest of drawers`` holds cabinet, which ``cabinet``
  and ``buffet`` label too: T[chest of drawers|cabinet] = 0.16).
- ``set_prior_correction=True`` (RECORDS, Hong et al., ICLR 2023; SoLar, Wang et al., NeurIPS 2022): the target is
  the within-set posterior divided by a running estimate pi of the model's class marginal,
  ``q_c = [c in S_k] w_c p_c / pi_c / sum_{c' in S_k} w_c' p_c' / pi_c'`` (w: the weights above, 1 for
  ``uniform``), and the pixel costs the cross-entropy to that target held constant, ``-sum_c q_c log p_c``
  (gradient p - q). A majority member (ADE20K's ``person``: 91% of its relabeled segments are pedestrians) then no
  longer swallows its set's minorities. Update, once per call (= per step): pi <- m pi + (1 - m) mean_x p(x) over
  the call's labelled pixels on a grid of every ``marginal_stride``-th row and column (default 4: 1/16 of the
  pixels, plenty for C numbers, at 1/16 of the cost of an exp over N x C x H x W), no update where there are none;
  with ``reduce_fn`` the sums of p and the pixel counts are summed over ranks first (every rank must then call the
  loss equally often); pi starts uniform, so the first step is the uncorrected one.
  ``state_dict()``/``load_state_dict()`` hold pi for an exact resume.

For a set of one every option is cross-entropy in value and gradient. Labels are
:class:`~mseg_semantic.taxonomy.LabelSets` codes (one integer per pixel, 255 = ignore); the members come from a
``codes x max set size`` table, one gather per slot. No N x C x H x W mask is built: the forward keeps the
log-softmax (as cross-entropy does) and per-pixel values; the backward writes ``softmax - q`` into one N x C x H x W
gradient. A code that names no set raises ValueError naming it: at once for CPU labels; on a device (no host
sync) its pixels cost +inf, which the loop's non-finite check catches, and :meth:`PartialLabelLoss.raise_for_invalid_codes`
names the code.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from mseg_semantic.taxonomy import IGNORE_INDEX, LabelSets

__all__ = ["LABEL_SET_WEIGHTS", "PartialLabelLoss", "partial_label_nll"]

LABEL_SET_WEIGHTS = ("uniform", "records")
LabelSetWeights = Literal["uniform", "records"]
_MIN_MARGINAL = 1e-12  # pi is floored here before its log: a class never predicted gets a large, finite boost


def _slot_scores(log_probs, codes, member_ids, member_log_weights, log_prior, slot):
    """Per pixel, for one member slot: its class id, log p of it, and its score log w + log p (- log pi) (-inf in
    an empty slot)."""
    ids = member_ids[:, slot][codes]
    log_p = log_probs.gather(1, ids.unsqueeze(1)).squeeze(1)
    score = log_p + member_log_weights[:, slot][codes]
    if log_prior is not None:
        score = score - log_prior[ids]
    return ids, log_p, score


class _SetLoss(torch.autograd.Function):
    """Per pixel: ``-log sum_s exp(score_s)`` without a prior, ``-sum_s q_s log p_s`` with one (q = softmax of the
    scores over the slots, held constant); 0 where code == 255, +inf where ``invalid``. Second output: with a prior,
    the sum of p over the labelled pixels (C floats), for its update; else empty."""

    @staticmethod
    def forward(ctx, logits, codes, member_ids, member_log_weights, log_prior, invalid, stride):
        log_probs = torch.log_softmax(logits, dim=1)
        ignore = codes == IGNORE_INDEX
        slots = member_ids.shape[1]
        norm = None
        for slot in range(slots):
            score = _slot_scores(log_probs, codes, member_ids, member_log_weights, log_prior, slot)[2]
            norm = score if norm is None else torch.logaddexp(norm, score)
        norm = torch.where(ignore, torch.zeros_like(norm), norm)  # so that q = exp(score - norm) is 0, never nan
        if log_prior is None:
            value = -norm
        else:
            value = torch.zeros_like(norm)
            for slot in range(slots):
                _, log_p, score = _slot_scores(log_probs, codes, member_ids, member_log_weights, log_prior, slot)
                value = value - (score - norm).exp() * log_p
        if invalid is not None:
            value = torch.where(invalid, torch.full_like(value, float("inf")), value)
        ctx.save_for_backward(log_probs, codes, member_ids, member_log_weights, log_prior, norm)
        if log_prior is None:
            stats = log_probs.new_zeros(0, dtype=torch.float64)
        else:  # on a grid of every stride-th pixel: the marginal needs no more, and exp over N x C x H x W is dear
            labelled = (~ignore if invalid is None else ~(ignore | invalid))[:, ::stride, ::stride]
            prob_sum = (log_probs[:, :, ::stride, ::stride].exp() * labelled.unsqueeze(1)).sum((0, 2, 3))
            stats = torch.cat([prob_sum.to(torch.float64), labelled.sum().to(torch.float64).reshape(1)])
        ctx.mark_non_differentiable(stats)
        return value, stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pixel, _grad_stats):
        log_probs, codes, member_ids, member_log_weights, log_prior, norm = ctx.saved_tensors
        grad = log_probs.exp()
        for slot in range(member_ids.shape[1]):
            ids, _, score = _slot_scores(log_probs, codes, member_ids, member_log_weights, log_prior, slot)
            # one index per pixel and slot: no collisions; an empty slot's score is -inf, so it adds 0
            grad.scatter_add_(1, ids.unsqueeze(1), -(score - norm).exp().unsqueeze(1))
        scale = torch.where(codes == IGNORE_INDEX, torch.zeros_like(grad_pixel), grad_pixel)
        return grad.mul_(scale.unsqueeze(1)), None, None, None, None, None, None  # in place: no second N x C x H x W


def partial_label_nll(logits: torch.Tensor, codes: torch.Tensor, member_ids: torch.Tensor, member_valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``uniform`` partial-label loss N x H x W (fp32, or fp64 for fp64 logits; 0 at ignore pixels) of N x C x H x W logits and
    N x H x W int64 codes; ``member_ids``/``member_valid`` from :meth:`LabelSets.member_table`, on the logits'
    device. No code check (:class:`PartialLabelLoss` does it)."""
    if codes.dtype != torch.int64:
        raise TypeError(f"label codes must be int64 (the loop widens labels with .long()), got {codes.dtype}")
    log_weights = torch.where(member_valid, 0.0, float("-inf")).to(torch.float32)
    return _SetLoss.apply(_at_least_fp32(logits), codes, member_ids, log_weights, None, None, 1)[0]


class PartialLabelLoss:
    """A pixel loss with cross-entropy's contract (``(logits, labels) -> (per-pixel loss, valid pixels per image)``)
    over label-set codes (the module docstring defines the options). Built once per run from the converter's
    ``label_sets`` (``records`` needs sets built with their member weights, as a set-valued
    :class:`~mseg_semantic.taxonomy.TaxonomyConverter` builds them); the tables move to each device once.

    ``prior_momentum``: m of the marginal's update; ``marginal_stride``: the update averages p over the labelled
    pixels of every ``marginal_stride``-th row and column (1: all pixels); ``reduce_fn``: sums a float64 tensor over
    the ranks and returns it (e.g. an all-reduce), for DDP with ``set_prior_correction``. ``eager_code_check``: raise on a code that names
    no set in the call itself (a host sync); None: for CPU labels only, on a device see
    :meth:`raise_for_invalid_codes`."""

    def __init__(self, label_sets: LabelSets, label_set_weights: LabelSetWeights = "uniform",
                 set_prior_correction: bool = False, prior_momentum: float = 0.99,
                 reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, marginal_stride: int = 4,
                 eager_code_check: bool | None = None):
        if label_set_weights not in LABEL_SET_WEIGHTS:
            raise ValueError(f"label_set_weights={label_set_weights!r}: expected one of {', '.join(LABEL_SET_WEIGHTS)}")
        if not 0.0 <= prior_momentum < 1.0:
            raise ValueError(f"prior_momentum={prior_momentum}: expected 0 <= m < 1")
        if int(marginal_stride) < 1:
            raise ValueError(f"marginal_stride={marginal_stride}: expected an integer >= 1")
        self.marginal_stride = int(marginal_stride)
        self.label_sets = label_sets
        self.label_set_weights = label_set_weights
        self.set_prior_correction = bool(set_prior_correction)
        self.prior_momentum = float(prior_momentum)
        self.reduce_fn = reduce_fn
        self.eager_code_check = eager_code_check
        ids, valid = (torch.from_numpy(t) for t in label_sets.member_table())
        weights = torch.from_numpy(label_sets.weight_table()) if label_set_weights == "records" else valid.float()
        log_weights = torch.where(valid, weights.log(), torch.full_like(weights, float("-inf")))
        self._tables = {"cpu": (ids, log_weights, valid[:, 0].clone())}
        # the running class marginal pi (float64), on the device of the last call; the largest invalid code seen
        # on a device, -1 if none (checked without a host sync)
        self._marginal = torch.full((label_sets.num_classes,), 1.0 / label_sets.num_classes, dtype=torch.float64)
        self._invalid_code: torch.Tensor | None = None

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device) for t in self._tables["cpu"])
        return self._tables[key]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[1] != self.label_sets.num_classes:
            raise ValueError(f"the label sets are over {self.label_sets.num_classes} classes, the logits have {logits.shape[1]}")
        if labels.dtype != torch.int64:
            raise TypeError(f"label codes must be int64 (the loop widens labels with .long()), got {labels.dtype}")
        member_ids, member_log_weights, has_set = self._on(logits.device)
        codes, invalid = self._checked_codes(labels, has_set)
        log_prior = None
        if self.set_prior_correction:
            if self._marginal.device != logits.device:
                self._marginal = self._marginal.to(logits.device)
            log_prior = self._marginal.clamp_min(_MIN_MARGINAL).log().float()
        pixel_loss, stats = _SetLoss.apply(_at_least_fp32(logits), codes, member_ids, member_log_weights, log_prior,
                                           invalid, self.marginal_stride)
        if self.set_prior_correction:
            self._update_marginal(stats)
        return pixel_loss, (labels != IGNORE_INDEX).flatten(1).sum(1)

    def _checked_codes(self, labels: torch.Tensor, has_set: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codes safe to index the tables with (a code outside them reads the empty row 255), and the mask of codes
        that name no set (None when checked eagerly: they raise at once)."""
        num_ids = has_set.shape[0]
        in_table = (labels >= 0) & (labels < num_ids)
        codes = torch.where(in_table, labels, torch.full_like(labels, IGNORE_INDEX))
        invalid = ~has_set[codes] & (labels != IGNORE_INDEX)
        if self.eager_code_check or (self.eager_code_check is None and labels.device.type == "cpu"):
            if bool(invalid.any()):
                raise ValueError(_invalid_message(labels[invalid].unique()[:8].tolist(), num_ids))
            return codes, None
        worst = torch.where(invalid, labels, torch.full_like(labels, -1)).amax() if labels.numel() else labels.new_tensor(-1)
        if self._invalid_code is None or self._invalid_code.device != worst.device:
            self._invalid_code = torch.full_like(worst, -1)
        torch.maximum(self._invalid_code, worst, out=self._invalid_code)  # in place: a captured graph keeps one buffer
        return codes, invalid

    def raise_for_invalid_codes(self) -> None:
        """Raise ValueError naming the largest code that named no set in any call not checked eagerly since the
        last check (a host sync: call it where the loop syncs anyway, e.g. on a non-finite loss)."""
        if self._invalid_code is None:
            return
        worst = int(self._invalid_code.item())
        self._invalid_code.fill_(-1)
        if worst >= 0:
            raise ValueError(_invalid_message([worst], self._tables["cpu"][2].shape[0]))

    def _update_marginal(self, stats: torch.Tensor) -> None:
        """``stats``: the sums of p over the labelled grid pixels (C floats), then their count."""
        if self.reduce_fn is not None:
            stats = self.reduce_fn(stats)
        total = stats[-1]
        mean = stats[:-1] / total.clamp_min(1.0)
        updated = self.prior_momentum * self._marginal + (1.0 - self.prior_momentum) * mean
        self._marginal.copy_(torch.where(total > 0, updated, self._marginal))  # no pixel anywhere: no update; no sync

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running class marginal pi (float64, CPU): all the loss's state."""
        return {"class_marginal": self._marginal.detach().to("cpu", copy=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        marginal = state.get("class_marginal") if isinstance(state, dict) else None
        if not isinstance(marginal, torch.Tensor) or marginal.shape != (self.label_sets.num_classes,):
            raise ValueError(f"partial-label loss state: expected 'class_marginal', a tensor of "
                             f"{self.label_sets.num_classes} floats, got {state!r:.200}")
        self._marginal = marginal.detach().to(self._marginal.device, torch.float64, copy=True)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """The loss runs in fp32 on bf16/fp16 logits, as cross-entropy does; fp64 stays fp64 (reference checks)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _invalid_message(codes: list[int], num_ids: int) -> str:
    shown = ", ".join(str(c) for c in codes)
    return (f"label code(s) {shown} name no label set of this run (valid: class ids and set codes below {num_ids} "
            f"with members, {IGNORE_INDEX} = ignore): labels written by another converter or taxonomy?")
