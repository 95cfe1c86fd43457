"""Which samples make up each global batch: multi-dataset mixing, deterministic for a seed, resumable.

The global batch ``b`` (``batch_size`` rows over all ranks) is a function of ``(seed, b)`` and of the
per-dataset draw counts before it, which are themselves a function of ``(seed, b)``; rank ``r`` of ``W`` takes
rows ``[r*B/W, (r+1)*B/W)``. So the data never depends on the world size or the number of loader workers,
and a :class:`SamplerCursor` (batch index + draw counts) is all a resume needs.

Mixing modes
- default: each global batch is stratified over all datasets by the sampling weights (uniform by default):
  dataset ``d`` gets ``floor(B * w_d)`` rows plus, for the remaining rows, systematic sampling with inclusion
  probability equal to the fractional part, so the expected count is exactly ``B * w_d``; the rows are then
  shuffled so every rank sees a mix. With uniform weights and B a multiple of the dataset count every batch
  holds exactly ``B / D`` rows of each dataset, as MSeg's one-dataset-per-GPU setup does.
- ``dataset_gpu_mapping`` (MSeg's mode): rank ``r``'s rows are drawn only from the datasets mapped to ``r``
  (stratified the same way when several are). The world size must equal the number of ranks in the mapping.

Within a dataset, samples are taken in a seeded permutation, a new one each pass (epoch) over the dataset; with
rare-class sampling (:mod:`mseg_semantic.data.rare_class`) a row instead shows a class and an image drawn from
(seed, the row's position), and the draw counts still advance.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mseg_semantic.errors import UserError

# Distinct streams derived from one seed: batch composition, per-dataset permutations, per-sample augmentation,
# replacements of bad samples.
_STREAM_BATCH = 1
_STREAM_PERMUTATION = 2
STREAM_AUGMENT = 3
STREAM_REPLACEMENT = 4


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, stream, keys): no process, worker or call-order state."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, *[int(k) for k in keys]]))


@dataclass(frozen=True)
class SampleRef:
    """One row of a global batch."""

    batch: int  # global batch index
    row: int  # row in the global batch
    position: int  # batch * batch_size + row: the key of this sample's augmentation
    dataset: int  # index into the loader's dataset list
    index: int  # line index in that dataset's split list
    rare_class: int = -1  # rare-class sampling: the model class the crop should hold (-1: none)


@dataclass
class SamplerCursor:
    """Where the stream stands: the next global batch and how many samples each dataset has given so far."""

    batch: int
    draws: list[int] = field(default_factory=list)

    def copy(self) -> "SamplerCursor":
        return SamplerCursor(self.batch, list(self.draws))


def stratified_counts(rows: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows per dataset: floor(rows * w) each, the rest by systematic sampling on the fractional parts."""
    quota = rows * weights / weights.sum()
    counts = np.floor(quota + 1e-9).astype(np.int64)
    remaining = rows - int(counts.sum())
    if remaining > 0:
        fraction = np.clip(quota - counts, 0.0, None)
        order = rng.permutation(len(weights))
        edges = np.cumsum(fraction[order])
        edges *= remaining / edges[-1]  # guards against float drift; the sum is `remaining` up to rounding
        picks = rng.random() + np.arange(remaining)
        # a pick rounding past the last edge goes to the last dataset with a share, never to a weight-0 one
        last = int(np.flatnonzero(fraction[order] > 0)[-1])
        chosen = order[np.minimum(np.searchsorted(edges, picks, side="right"), last)]
        np.add.at(counts, chosen, 1)
    return counts


def normalized_weights(names: Sequence[str], sampling_weights: Mapping[str, float] | None) -> np.ndarray:
    if not sampling_weights:
        return np.ones(len(names), dtype=np.float64)
    unknown = sorted(set(sampling_weights) - set(names))
    missing = [n for n in names if n not in sampling_weights]
    if unknown or missing:
        raise UserError(
            f"sampling_weights must give one weight per training dataset; "
            f"{'unknown: ' + ', '.join(unknown) + '; ' if unknown else ''}"
            f"{'missing: ' + ', '.join(missing) + '; ' if missing else ''}training datasets: {', '.join(names)}"
        )
    weights = np.array([float(sampling_weights[n]) for n in names], dtype=np.float64)
    if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise UserError(f"sampling_weights must be finite, >= 0 and not all 0, got {dict(sampling_weights)}")
    return weights


@dataclass(frozen=True)
class _Segment:
    rows: int
    weights: np.ndarray  # over all datasets; 0 for datasets this segment never draws from


class MixingSampler:
    """Plans global batches over several datasets (see the module docstring for the modes)."""

    def __init__(
        self,
        dataset_names: Sequence[str],
        dataset_sizes: Sequence[int],
        batch_size: int,
        seed: int,
        world_size: int = 1,
        sampling_weights: Mapping[str, float] | None = None,
        dataset_gpu_mapping: Mapping[str, Sequence[int] | int] | None = None,
        rare_classes: Any | None = None,
    ):
        """``rare_classes``: a :class:`~mseg_semantic.data.rare_class.RareClassPlan` over the same datasets, or None."""
        names = list(dataset_names)
        if not names:
            raise UserError("no training datasets given")
        if len(set(names)) != len(names):
            raise UserError(f"a training dataset is listed twice: {names}")
        if len(dataset_sizes) != len(names):
            raise UserError("dataset_sizes must have one entry per dataset")
        empty = [n for n, size in zip(names, dataset_sizes) if size <= 0]
        if empty:
            raise UserError(f"training dataset(s) with an empty split list: {', '.join(empty)}")
        if batch_size <= 0 or world_size <= 0:
            raise UserError(f"batch_size and world_size must be positive, got {batch_size} and {world_size}")
        if batch_size % world_size:
            raise UserError(f"batch_size {batch_size} (global, over all ranks) is not divisible by world_size {world_size}")
        self.dataset_names = names
        self.dataset_sizes = [int(s) for s in dataset_sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size = int(world_size)
        weights = normalized_weights(names, sampling_weights)
        self.mapping = check_dataset_gpu_mapping(names, dataset_gpu_mapping, world_size) if dataset_gpu_mapping else None
        if self.mapping is None:
            self._segments = [_Segment(self.batch_size, weights)]
        else:
            rows = self.batch_size // world_size
            self._segments = []
            for rank in range(world_size):
                mask = np.array([rank in self.mapping[n] for n in names], dtype=np.float64)
                if (weights * mask).sum() <= 0:
                    raise UserError(f"every dataset mapped to rank {rank} has sampling weight 0")
                self._segments.append(_Segment(rows, weights * mask))
        self._weights = weights
        self.rare_classes = rare_classes
        self._permutations: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def fingerprint(self) -> dict:
        """What must match for a saved cursor to mean the same stream."""
        return {
            "datasets": self.dataset_names,
            "sizes": self.dataset_sizes,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "weights": [round(float(w / self._weights.sum()), 12) for w in self._weights],
            "dataset_gpu_mapping": {n: sorted(r) for n, r in self.mapping.items()} if self.mapping else None,
            # None when off, so that an old state (without the key) matches a run without it
            "rare_class_sampling": self.rare_classes.fingerprint() if self.rare_classes is not None else None,
        }

    def start(self) -> SamplerCursor:
        return SamplerCursor(0, [0] * len(self.dataset_names))

    def rank_rows(self, rank: int) -> range:
        if not 0 <= rank < self.world_size:
            raise UserError(f"rank {rank} is outside world_size {self.world_size}")
        per_rank = self.batch_size // self.world_size
        return range(rank * per_rank, (rank + 1) * per_rank)

    def _permutation(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        perm = self._permutations.get(key)
        if perm is None:
            perm = stream_rng(self.seed, _STREAM_PERMUTATION, dataset, epoch).permutation(self.dataset_sizes[dataset])
            self._permutations[key] = perm
            while len(self._permutations) > 2 * len(self.dataset_names):  # current and next epoch of each
                self._permutations.popitem(last=False)
        return perm

    def sample_index(self, dataset: int, draw: int) -> int:
        """The line index of the ``draw``-th sample ever taken from ``dataset``."""
        size = self.dataset_sizes[dataset]
        return int(self._permutation(dataset, draw // size)[draw % size])

    def batch_refs(self, cursor: SamplerCursor) -> tuple[list[SampleRef], SamplerCursor]:
        """All rows of global batch ``cursor.batch`` and the cursor after it."""
        b = cursor.batch
        rng = stream_rng(self.seed, _STREAM_BATCH, b)
        draws = list(cursor.draws)
        refs: list[SampleRef] = []
        for segment in self._segments:
            counts = stratified_counts(segment.rows, segment.weights, rng)
            slots = rng.permutation(np.repeat(np.arange(len(counts)), counts))
            for d in slots.tolist():
                row = len(refs)
                position = b * self.batch_size + row
                if self.rare_classes is not None and self.rare_classes.draws_from(d):
                    rare_class, index = self.rare_classes.choose(self.seed, position, d)
                    refs.append(SampleRef(b, row, position, d, index, rare_class))
                else:
                    refs.append(SampleRef(b, row, position, d, self.sample_index(d, draws[d])))
                draws[d] += 1
        return refs, SamplerCursor(b + 1, draws)

    def check_state(self, fingerprint: Mapping) -> None:
        """A clear error when a saved state belongs to a different stream."""
        mine = self.fingerprint()
        diffs = _differences("", fingerprint, mine)
        if diffs:
            raise UserError("the checkpoint's data-loader state does not match this run's data stream ("
                            + "; ".join(diffs) + "): the datasets, their lists or label files, or the sampling changed "
                            "since the checkpoint was written")


def _differences(where: str, saved: Any, now: Any) -> list[str]:
    """Where two fingerprints differ, down to the changed entry (e.g. one dataset's class counts)."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        return [d for key in now  # what this loader has (an older state may lack a key whose value is None now)
                for d in _differences(f"{where}.{key}" if where else str(key), saved.get(key), now.get(key))]
    return [] if saved == now else [f"{where}: saved {saved!r}, now {now!r}"]


def check_dataset_gpu_mapping(names: Sequence[str], mapping: Mapping[str, Sequence[int] | int], world_size: int) -> dict[str, set[int]]:
    """MSeg's ``{dataset: [ranks]}``: every training dataset mapped, ranks 0..world_size-1 all used. -> name: ranks."""
    unknown = sorted(set(mapping) - set(names))
    missing = [n for n in names if n not in mapping]
    if unknown or missing:
        raise UserError(
            "dataset_gpu_mapping must map exactly the training datasets; "
            f"{'not training datasets: ' + ', '.join(unknown) + '; ' if unknown else ''}"
            f"{'unmapped: ' + ', '.join(missing) + '; ' if missing else ''}training datasets: {', '.join(names)}"
        )
    ranks: dict[str, set[int]] = {}
    for name in names:
        value = mapping[name]
        values = [value] if isinstance(value, int) else list(value)
        if not values or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in values):
            raise UserError(f"dataset_gpu_mapping[{name!r}] must be a non-empty list of GPU ranks (ints >= 0), got {value!r}")
        ranks[name] = set(values)
    used = set().union(*ranks.values())
    mapped_gpus = max(used) + 1
    if mapped_gpus != world_size:
        raise UserError(
            f"dataset_gpu_mapping uses {mapped_gpus} GPUs (ranks 0..{mapped_gpus - 1}) but world_size is {world_size}: "
            f"launch torchrun --nproc_per_node {mapped_gpus}, or set dataset_gpu_mapping=null to mix every dataset into "
            f"every batch (the same optimisation on any number of GPUs)"
        )
    idle = sorted(set(range(world_size)) - used)
    if idle:
        raise UserError(f"dataset_gpu_mapping leaves rank(s) {idle} without a dataset")
    return ranks
