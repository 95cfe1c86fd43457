"""CCSA baseline: contrastive semantic alignment across domains (Motiian et al., ICCV 2017), as MSeg adapted it.

Each training dataset is a domain. Besides the usual cross-entropy, pixel embeddings (the head features
the classifier reads, at 1/4 of the input resolution) from *different* domains are paired: pairs of the
same class are pulled together (squared distance), pairs of different classes are pushed apart beyond a
margin (``max(0, margin - distance)^2``). The loss is ``(1 - alpha) * CE + alpha * contrastive``, MSeg's
mixing. Pairs are sampled on the fly from each batch: the first pixel of a pair by choosing a domain
uniformly, then a pixel uniformly within it (MSeg's protocol, which avoids the extreme class imbalance of
sampling by class); the second pixel uniformly among the pixels of the other domains that satisfy the
pair's condition. Labels are downsampled to the embedding resolution; ignore pixels are never paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from mseg_semantic.taxonomy import IGNORE_INDEX
from mseg_semantic.training.gradients.common import (
    StepContext,
    StepOutput,
    backward,
    check_dataset_index,
    cross_entropy_pixels,
    global_pixel_mean,
    per_dataset_mean,
)

__all__ = [
    "CCSAOptions",
    "PixelPairs",
    "downsample_labels",
    "sample_pairs",
    "ccsa_loss",
    "ccsa_backward_step",
]

DOWNSAMPLE_MODES = ("nearest", "mode")

# Negatives are drawn by rejection (the second pixel must be of another class); after this many rounds
# the few pairs still unresolved are dropped rather than looping on a near-impossible condition.
_NEGATIVE_ROUNDS = 32


@dataclass(frozen=True)
class CCSAOptions:
    """The config's CCSA section (its defaults live in the schema; ``use_ccsa`` is the switch, not an option)."""

    alpha: float  # weight of the contrastive term (MSeg: 0.25)
    margin: float  # negatives closer than this are pushed apart (MSeg: 1)
    num_pairs: int  # pairs per batch (MSeg: 1000 positives + 3000 negatives)
    positive_ratio: float  # fraction of the pairs that are same-class (MSeg: 1 positive : 3 negatives)
    label_downsample: str  # nearest (MSeg) | mode (majority of the block)
    normalize_embeddings: bool  # compare unit vectors, so that the margin has a fixed meaning

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"CCSA alpha must lie in [0, 1], got {self.alpha}")
        if not self.margin > 0:
            raise ValueError(f"CCSA margin must be > 0, got {self.margin}")
        if self.num_pairs < 0:
            raise ValueError(f"CCSA num_pairs must be >= 0, got {self.num_pairs}")
        if not 0.0 <= self.positive_ratio <= 1.0:
            raise ValueError(f"CCSA positive_ratio must lie in [0, 1], got {self.positive_ratio}")
        if self.label_downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"CCSA label_downsample {self.label_downsample!r} is not valid; use one of {', '.join(DOWNSAMPLE_MODES)}")

    @classmethod
    def from_config(cls, section: Mapping) -> "CCSAOptions":
        """From the config's CCSA section."""
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


@dataclass
class PixelPairs:
    """Pairs of pixels as flat indices ``n * h * w + y * w + x`` into an N x h x w label map."""

    first: torch.Tensor  # int64 [P]
    second: torch.Tensor  # int64 [P]
    same_class: torch.Tensor  # bool [P]; the positives come first

    @property
    def num_positive(self) -> int:
        return int(self.same_class.sum())

    @property
    def num_negative(self) -> int:
        return int(self.same_class.numel() - self.same_class.sum())


def _block_indices(size_in: int, size_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output cell i, the input indices [floor(i*in/out), floor((i+1)*in/out)), padded to a
    common length; returns (indices [out, k] clamped into range, mask [out, k] of the real ones)."""
    starts = torch.div(torch.arange(size_out, device=device) * size_in, size_out, rounding_mode="floor")
    ends = torch.div((torch.arange(size_out, device=device) + 1) * size_in, size_out, rounding_mode="floor")
    length = int((ends - starts).max())
    indices = starts[:, None] + torch.arange(length, device=device)[None, :]
    return indices.clamp_max(size_in - 1), indices < ends[:, None]


def downsample_labels(labels: torch.Tensor, size: tuple[int, int], mode: str = "nearest", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """N x H x W integer labels -> N x h x w, for h <= H and w <= W.

    ``nearest``: the label at input pixel ``floor(i * H / h)`` (PyTorch's nearest, which MSeg used); an
    ignore pixel stays ignore. ``mode``: the most frequent non-ignore label in the cell's block of input
    pixels ``[floor(i*H/h), floor((i+1)*H/h))`` (ties: the smallest id); ignore only when the whole
    block is ignore.
    """
    if labels.ndim != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer N x H x W tensor, got {tuple(labels.shape)} {labels.dtype}")
    height, width = int(size[0]), int(size[1])
    n, in_h, in_w = labels.shape
    if not (0 < height <= in_h and 0 < width <= in_w):
        raise ValueError(f"downsample_labels: target size {(height, width)} must be positive and at most the label size {(in_h, in_w)}")
    if mode == "nearest":
        rows = torch.div(torch.arange(height, device=labels.device) * in_h, height, rounding_mode="floor")
        cols = torch.div(torch.arange(width, device=labels.device) * in_w, width, rounding_mode="floor")
        return labels.index_select(1, rows).index_select(2, cols)
    if mode != "mode":
        raise ValueError(f"downsample_labels: unknown mode {mode!r}; use one of {', '.join(DOWNSAMPLE_MODES)}")

    rows, row_ok = _block_indices(in_h, height, labels.device)
    cols, col_ok = _block_indices(in_w, width, labels.device)
    kh, kw = rows.shape[1], cols.shape[1]
    blocks = labels.index_select(1, rows.reshape(-1)).index_select(2, cols.reshape(-1))
    blocks = blocks.view(n, height, kh, width, kw).permute(0, 1, 3, 2, 4).reshape(n, height, width, kh * kw)
    inside = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(height, width, kh * kw)
    blocks = blocks.masked_fill(~inside, ignore_index)

    # Most frequent value per block: sort, measure the run each position ends, ignore runs of ignore.
    values, _ = blocks.sort(dim=-1)
    position = torch.arange(kh * kw, device=labels.device).expand_as(values)
    run_starts = torch.ones_like(values, dtype=torch.bool)
    run_starts[..., 1:] = values[..., 1:] != values[..., :-1]
    run_length = position - torch.where(run_starts, position, torch.zeros_like(position)).cummax(dim=-1).values + 1
    run_length = run_length.masked_fill(values == ignore_index, 0)
    longest, end = run_length.max(dim=-1)  # first maximum = smallest id among ties
    result = values.gather(-1, end.unsqueeze(-1)).squeeze(-1)
    return result.masked_fill(longest == 0, ignore_index)


def _uniform_below(bounds: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One integer uniformly in [0, bound) per entry of ``bounds`` (all > 0)."""
    draws = torch.rand(bounds.shape, dtype=torch.float64, device=bounds.device, generator=generator)
    return (draws * bounds).long().clamp_max(bounds - 1)


def _domain_then_pixel(eligible: torch.Tensor, domain: torch.Tensor, num_domains: int, count: int, generator) -> torch.Tensor:
    """``count`` positions among the eligible ones: a domain uniformly among those with an eligible
    position, then a position uniformly within that domain."""
    candidates = eligible.nonzero().squeeze(1)
    if count == 0 or candidates.numel() == 0:
        return candidates[:0]
    candidate_domain = domain[candidates]
    order = torch.argsort(candidate_domain, stable=True)
    per_domain = torch.bincount(candidate_domain, minlength=num_domains)
    offsets = torch.cumsum(per_domain, 0) - per_domain
    present = (per_domain > 0).nonzero().squeeze(1)
    chosen = present[torch.randint(present.numel(), (count,), device=domain.device, generator=generator)]
    return candidates[order[offsets[chosen] + _uniform_below(per_domain[chosen], generator)]]


def sample_pairs(
    labels_ds: torch.Tensor,
    domains: torch.Tensor,
    num_pairs: int,
    positive_ratio: float,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> PixelPairs:
    """Cross-domain pixel pairs from a label map at the embedding resolution.

    ``labels_ds``: N x h x w class ids (``ignore_index`` never paired); ``domains``: [N] domain of each
    image. Returns ``round(num_pairs * positive_ratio)`` positives (same class, different domains) and the
    rest negatives (different classes, different domains), sampled with replacement. Fewer are returned
    when the batch cannot supply them: none with fewer than two domains, no positives when no class
    appears in two domains. ``generator`` (on the labels' device) makes the draw reproducible.
    """
    if labels_ds.ndim != 3:
        raise ValueError(f"labels_ds must be N x h x w, got shape {tuple(labels_ds.shape)}")
    if domains.shape != (labels_ds.shape[0],):
        raise ValueError(f"domains must have one entry per image ({labels_ds.shape[0]}), got shape {tuple(domains.shape)}")
    if num_pairs < 0 or not 0.0 <= positive_ratio <= 1.0:
        raise ValueError(f"need num_pairs >= 0 and positive_ratio in [0, 1], got {num_pairs} and {positive_ratio}")
    device = labels_ds.device
    num_positive = int(round(num_pairs * positive_ratio))
    num_negative = num_pairs - num_positive
    _, h, w = labels_ds.shape
    flat = labels_ds.reshape(-1)
    valid = (flat != ignore_index).nonzero().squeeze(1)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if valid.numel() == 0:
        return PixelPairs(empty, empty, empty.bool())

    # Compact ids so the (class, domain) tables stay small whatever the taxonomy.
    _, domain = torch.unique(domains.to(device).repeat_interleave(h * w)[valid], return_inverse=True)
    _, klass = torch.unique(flat[valid], return_inverse=True)
    num_domains, num_classes = int(domain.max()) + 1, int(klass.max()) + 1
    if num_domains < 2:
        return PixelPairs(empty, empty, empty.bool())
    key = klass * num_domains + domain
    per_key = torch.bincount(key, minlength=num_classes * num_domains)
    per_class_domain = per_key.view(num_classes, num_domains)
    per_class = per_class_domain.sum(1)
    per_domain = per_class_domain.sum(0)
    same_class_elsewhere = per_class[klass] - per_class_domain[klass, domain]
    other_class_elsewhere = (valid.numel() - per_domain[domain]) - same_class_elsewhere

    # Positives: the partner is uniform among the pixels of the same class in other domains. In the
    # positions sorted by (class, domain) those form the class's block minus the anchor domain's sub-block.
    pos_first = _domain_then_pixel(same_class_elsewhere > 0, domain, num_domains, num_positive, generator)
    by_key = torch.argsort(key, stable=True)
    key_offsets = torch.cumsum(per_key, 0) - per_key
    c, d = klass[pos_first], domain[pos_first]
    class_start = key_offsets[c * num_domains]
    skipped_start = key_offsets[c * num_domains + d] - class_start
    draw = _uniform_below(same_class_elsewhere[pos_first], generator)
    draw = draw + torch.where(draw >= skipped_start, per_class_domain[c, d], torch.zeros_like(draw))
    pos_second = by_key[class_start + draw]

    # Negatives: the partner is uniform among the pixels of other domains, redrawn while it has the
    # anchor's class (rare: the anchor is only chosen where another class exists in another domain).
    neg_first = _domain_then_pixel(other_class_elsewhere > 0, domain, num_domains, num_negative, generator)
    by_domain = torch.argsort(domain, stable=True)
    domain_offsets = torch.cumsum(per_domain, 0) - per_domain
    neg_second = torch.full_like(neg_first, -1)
    pending = torch.arange(neg_first.numel(), device=device)
    for _ in range(_NEGATIVE_ROUNDS):
        if pending.numel() == 0:
            break
        d = domain[neg_first[pending]]
        draw = _uniform_below(valid.numel() - per_domain[d], generator)
        draw = draw + torch.where(draw >= domain_offsets[d], per_domain[d], torch.zeros_like(draw))
        partner = by_domain[draw]
        accepted = klass[partner] != klass[neg_first[pending]]
        neg_second[pending[accepted]] = partner[accepted]
        pending = pending[~accepted]
    found = neg_second >= 0
    neg_first, neg_second = neg_first[found], neg_second[found]

    first = valid[torch.cat([pos_first, neg_first])]
    second = valid[torch.cat([pos_second, neg_second])]
    same_class = torch.cat([torch.ones_like(pos_first, dtype=torch.bool), torch.zeros_like(neg_first, dtype=torch.bool)])
    return PixelPairs(first, second, same_class)


def ccsa_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, same_class: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over pairs of the CCSA contrastive loss on P x E embeddings.

    Positives: ``||a - b||^2`` (semantic alignment); negatives: ``max(0, margin - ||a - b||)^2``
    (separation). Zero pairs give a zero loss.
    """
    if emb_a.shape != emb_b.shape or emb_a.ndim != 2 or same_class.shape != emb_a.shape[:1]:
        raise ValueError(f"ccsa_loss: need P x E embeddings and [P] same_class, got {tuple(emb_a.shape)}, {tuple(emb_b.shape)}, {tuple(same_class.shape)}")
    if emb_a.shape[0] == 0:
        return emb_a.sum() * 0.0
    squared = (emb_a - emb_b).pow(2).sum(1)
    # The clamp keeps the gradient of sqrt finite for coinciding negatives (as in MSeg's code).
    distance = squared.clamp_min(1e-8).sqrt()
    per_pair = torch.where(same_class, squared, (margin - distance).clamp_min(0.0).pow(2))
    return per_pair.mean()


def _gather_pixels(emb: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Rows of an N x E x h x w map at flat indices ``n*h*w + y*w + x`` -> P x E (no full-map copy)."""
    _, _, h, w = emb.shape
    n = torch.div(flat_index, h * w, rounding_mode="floor")
    rest = flat_index - n * h * w
    y = torch.div(rest, w, rounding_mode="floor")
    return emb[n, :, y, rest - y * w]


def ccsa_backward_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, ctx: StepContext,
                       options: CCSAOptions) -> StepOutput:
    """One CCSA step (see :mod:`mseg_semantic.training.gradients.common` for the contract).

    ``model(images, return_features=True) -> (logits, emb)``. CE is the mean over the global batch's valid
    pixels (as in the plain CE step); the contrastive term uses pairs sampled within this process's batch
    (under DDP each rank pairs its own images, so a rank needs images of two domains; DDP averages the
    contrastive gradients over ranks).
    Embeddings are L2-normalised before the distance unless ``normalize_embeddings`` is false.
    """
    check_dataset_index(dataset_index, ctx.num_datasets)
    with ctx.autocast():
        logits, emb = model(images, return_features=True)
    pixel_loss, valid_per_image = cross_entropy_pixels(logits, labels)
    ce = global_pixel_mean(pixel_loss.sum(), valid_per_image.sum(), ctx)  # as in the plain CE step

    labels_ds = downsample_labels(labels, emb.shape[-2:], options.label_downsample)
    pairs = sample_pairs(labels_ds, dataset_index, options.num_pairs, options.positive_ratio)
    emb_a = _gather_pixels(emb, pairs.first).float()
    emb_b = _gather_pixels(emb, pairs.second).float()
    if options.normalize_embeddings:
        emb_a, emb_b = F.normalize(emb_a, dim=1), F.normalize(emb_b, dim=1)
    contrastive = ccsa_loss(emb_a, emb_b, pairs.same_class, options.margin)

    loss = (1.0 - options.alpha) * ce + options.alpha * contrastive
    backward(loss, ctx)

    per_dataset_loss = per_dataset_mean(pixel_loss.detach().flatten(1).sum(1), valid_per_image, dataset_index, ctx.num_datasets)
    return StepOutput(
        loss=loss.detach(),
        per_dataset_loss=per_dataset_loss,
        scalars={
            "ccsa/ce": float(ce.detach()),
            "ccsa/contrastive": float(contrastive.detach()),
            "ccsa/pairs_positive": float(pairs.num_positive),
            "ccsa/pairs_negative": float(pairs.num_negative),
        },
    )
