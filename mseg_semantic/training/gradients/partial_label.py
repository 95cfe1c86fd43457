"""Partial-label loss: learn from a label that names a *set* of model classes (Bevandic et al., IJCV 2024;
UniSeg, ECCV 2022).

A pixel labelled with the set S (a Cityscapes ``rider``: bicyclist, motorcyclist, rider_other, bicycle, person)
costs ``-log sum_{c in S} softmax(z)_c``: the model may put the probability on any member, and is only pushed
away from classes outside S. For a set of one this is exactly cross-entropy.

The labels are :class:`~mseg_semantic.taxonomy.LabelSets` codes (one integer per pixel, 255 = ignore); the
members come from a ``codes x max set size`` table, one gather per slot. No N x C x H x W mask is built: the
forward keeps the log-softmax (as cross-entropy does) and per-pixel values; the backward writes
``softmax - posterior within the set`` into one N x C x H x W gradient (as cross-entropy's backward does).
"""

from __future__ import annotations

import torch

from mseg_semantic.taxonomy import IGNORE_INDEX, LabelSets

__all__ = ["PartialLabelLoss", "partial_label_nll"]


class _SetNegLogLikelihood(torch.autograd.Function):
    """Per pixel ``-log sum_{c in set(code)} softmax(logits)_c``; 0 where code == 255."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, codes: torch.Tensor, member_ids: torch.Tensor, member_valid: torch.Tensor):
        log_probs = torch.log_softmax(logits, dim=1)
        set_log_prob = _set_log_prob(log_probs, codes, member_ids, member_valid)
        ignore = codes == IGNORE_INDEX
        ctx.save_for_backward(log_probs, codes, member_ids, member_valid, set_log_prob)
        return torch.where(ignore, torch.zeros_like(set_log_prob), -set_log_prob)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pixel: torch.Tensor):
        log_probs, codes, member_ids, member_valid, set_log_prob = ctx.saved_tensors
        # d/dz_j = p_j - [j in S] p_j / P(S): softmax minus the posterior within the set
        grad = log_probs.exp()
        for slot in range(member_ids.shape[1]):
            ids = member_ids[:, slot][codes].unsqueeze(1)
            posterior = (log_probs.gather(1, ids).squeeze(1) - set_log_prob).exp()
            posterior = torch.where(member_valid[:, slot][codes], posterior, torch.zeros_like(posterior))
            grad.scatter_add_(1, ids, -posterior.unsqueeze(1))  # one index per pixel and slot: no collisions
        scale = torch.where(codes == IGNORE_INDEX, torch.zeros_like(grad_pixel), grad_pixel)
        return grad * scale.unsqueeze(1), None, None, None


def _set_log_prob(log_probs: torch.Tensor, codes: torch.Tensor, member_ids: torch.Tensor, member_valid: torch.Tensor) -> torch.Tensor:
    """``log sum_{c in set(code)} p_c`` per pixel, summed in log space (a set whose members all underflow stays
    finite). Empty slots (and ignore pixels) contribute -inf, i.e. nothing."""
    total = None
    for slot in range(member_ids.shape[1]):
        value = log_probs.gather(1, member_ids[:, slot][codes].unsqueeze(1)).squeeze(1)
        value = torch.where(member_valid[:, slot][codes], value, torch.full_like(value, float("-inf")))
        total = value if total is None else torch.logaddexp(total, value)
    return total


def partial_label_nll(logits: torch.Tensor, codes: torch.Tensor, member_ids: torch.Tensor, member_valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel partial-label loss N x H x W (fp32; 0 at ignore pixels) of N x C x H x W logits and N x H x W
    int64 codes; ``member_ids``/``member_valid`` from :meth:`LabelSets.member_table`, on the logits' device."""
    if codes.dtype != torch.int64:
        raise TypeError(f"label codes must be int64 (the loop widens labels with .long()), got {codes.dtype}")
    return _SetNegLogLikelihood.apply(logits.float(), codes, member_ids, member_valid)


class PartialLabelLoss:
    """A pixel loss with cross-entropy's contract (``(logits, labels) -> (per-pixel loss, valid pixels per image)``)
    over label-set codes. Built once per run from the converter's ``label_sets``; the member table moves to each
    device once."""

    def __init__(self, label_sets: LabelSets):
        self.label_sets = label_sets
        ids, valid = label_sets.member_table()
        self._tables = {"cpu": (torch.from_numpy(ids), torch.from_numpy(valid))}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._tables:
            ids, valid = self._tables["cpu"]
            self._tables[key] = (ids.to(device), valid.to(device))
        return self._tables[key]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[1] != self.label_sets.num_classes:
            raise ValueError(f"the label sets are over {self.label_sets.num_classes} classes, the logits have {logits.shape[1]}")
        member_ids, member_valid = self._on(logits.device)
        pixel_loss = partial_label_nll(logits, labels, member_ids, member_valid)
        return pixel_loss, (labels != IGNORE_INDEX).flatten(1).sum(1)
