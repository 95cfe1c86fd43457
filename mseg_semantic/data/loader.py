"""The training loader: an endless, resumable stream of mixed-dataset batches for one rank.

Each batch is ``{"image": uint8 N x 3 x H x W (RGB), "label": int64 N x H x W (training taxonomy, 255
ignore), "dataset_index": int64 N}`` with N = batch_size / world_size; normalise the images on the device
with :func:`mseg_semantic.data.transforms.normalize_images`. Global batch ``b`` is a function of
``(seed, b)`` only (see :mod:`mseg_semantic.data.sampler`), so ``state_dict()`` / ``load_state_dict()``
resume mid-epoch exactly, on any world size and with any number of workers.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

import torch

from mseg_semantic.data.datasets import TrainSampleReader, collate_train_batch, configure_worker_threads
from mseg_semantic.data.lists import locate_and_read
from mseg_semantic.data.sampler import MixingSampler, SamplerCursor
from mseg_semantic.data.transforms import AugmentConfig

log = logging.getLogger(__name__)

_STATE_VERSION = 1


class _RankPlan:
    """Batch sampler for torch's DataLoader: this rank's rows of consecutive global batches, endlessly."""

    def __init__(self, sampler: MixingSampler, cursor: SamplerCursor, rank: int):
        self.sampler = sampler
        self.cursor = cursor.copy()
        self.rows = sampler.rank_rows(rank)
        self.cursor_after: dict[int, SamplerCursor] = {}  # batches planned but not yet handed to the trainer

    def __iter__(self):
        while True:
            refs, after = self.sampler.plan(self.cursor)
            self.cursor_after[self.cursor.batch] = after
            self.cursor = after
            yield [refs[r] for r in self.rows]


class TrainLoader:
    """Iterate for batches; one live iterator at a time (a new ``iter()`` or ``load_state_dict`` ends the old one)."""

    def __init__(
        self,
        reader: TrainSampleReader,
        sampler: MixingSampler,
        rank: int = 0,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        sampler.rank_rows(rank)  # validates the rank
        self.reader = reader
        self.sampler = sampler
        self.rank = rank
        self.workers = workers
        self.pin_memory = pin_memory
        self.dataset_names = list(sampler.dataset_names)
        self.batch_size_per_rank = sampler.batch_size // sampler.world_size
        self._cursor = sampler.start()
        self._skipped: Counter[str] = Counter()
        self._generation = 0

    @property
    def batches_consumed(self) -> int:
        return self._cursor.batch

    def skipped_counts(self) -> dict[str, int]:
        """Bad samples skipped (and replaced) on this rank so far, per dataset."""
        return {name: self._skipped[name] for name in self.dataset_names}

    def state_dict(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "batch": self._cursor.batch,
            "draws": list(self._cursor.draws),
            "skipped": dict(self._skipped),
            "fingerprint": self.sampler.fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data-loader state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})")
        self.sampler.check_state(state["fingerprint"])
        draws = [int(d) for d in state["draws"]]
        if len(draws) != len(self.dataset_names) or int(state["batch"]) < 0:
            raise ValueError("data-loader state is malformed (batch / draws)")
        self._cursor = SamplerCursor(int(state["batch"]), draws)
        self._skipped = Counter({k: int(v) for k, v in state.get("skipped", {}).items()})
        self._generation += 1  # an iterator made before this call must not keep going from the old position

    def _batches(self, plan: _RankPlan) -> Iterator[dict]:
        if self.workers == 0:
            for refs in plan:
                yield collate_train_batch([self.reader[ref] for ref in refs])
            return
        loader = torch.utils.data.DataLoader(
            self.reader,
            batch_sampler=plan,
            num_workers=self.workers,
            collate_fn=collate_train_batch,
            pin_memory=self.pin_memory,
            worker_init_fn=configure_worker_threads,
        )
        yield from loader

    def __iter__(self) -> Iterator[dict]:
        self._generation += 1
        generation = self._generation
        plan = _RankPlan(self.sampler, self._cursor, self.rank)
        for batch in self._batches(plan):
            if generation != self._generation:
                raise RuntimeError("this loader iterator is stale: iter(loader) or load_state_dict() was called after it was made")
            index = batch.pop("batch_index")
            if index != self._cursor.batch:
                raise RuntimeError(f"data loader delivered global batch {index}, expected {self._cursor.batch}")
            for skipped in batch.pop("skipped"):
                self._skipped[skipped.dataset] += 1
                log.warning("skipped bad sample of %s (%d so far): %s: %s", skipped.dataset, self._skipped[skipped.dataset], skipped.path, skipped.reason)
            self._cursor = plan.cursor_after.pop(index)
            yield batch


def build_train_loader(
    datasets: Sequence[str],
    converter: Any | None,
    *,
    data_root: str | os.PathLike | None,
    dataset_roots: Mapping[str, str] | None = None,
    dataset_lists: Mapping[str, Mapping[str, str]] | None = None,
    split: str = "train",
    batch_size: int,
    train_h: int,
    train_w: int,
    short_size: int,
    scale_min: float = 0.5,
    scale_max: float = 2.0,
    rotate_min: float = -10.0,
    rotate_max: float = 10.0,
    rotate_prob: float = 0.5,
    blur_prob: float = 0.5,
    flip_prob: float = 0.5,
    ignore_label: int = 255,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    workers: int = 0,
    sampling_weights: Mapping[str, float] | None = None,
    dataset_gpu_mapping: Mapping[str, Sequence[int] | int] | None = None,
    on_bad_sample: str = "error",
    unknown_label: str = "error",
    pin_memory: bool = False,
) -> TrainLoader:
    """The training stream of one rank (``batch_size`` is global, over all ranks).

    ``converter``: the taxonomy converter of the run (universal / naive / oracle), or None for the datasets'
    own ids. ``workers``: loader processes of this rank (``TRAIN.workers`` counts per node; the trainer
    divides it among the node's ranks). Every split list is read up front, so a missing list fails here,
    naming the file.
    """
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    augment = AugmentConfig(
        train_h=train_h,
        train_w=train_w,
        short_size=short_size,
        scale_min=scale_min,
        scale_max=scale_max,
        rotate_min=rotate_min,
        rotate_max=rotate_max,
        rotate_prob=rotate_prob,
        blur_prob=blur_prob,
        flip_prob=flip_prob,
        ignore_label=ignore_label,
    )
    samples = [locate_and_read(name, split, data_root, dataset_roots, dataset_lists)[1] for name in names]
    sampler = MixingSampler(names, [len(s) for s in samples], batch_size, seed, world_size, sampling_weights, dataset_gpu_mapping)
    reader = TrainSampleReader(names, samples, augment, converter, seed, on_bad_sample, unknown_label)
    return TrainLoader(reader, sampler, rank=rank, workers=workers, pin_memory=pin_memory)


def train_loader_arguments(cfg: Any) -> dict:
    """build_train_loader's keyword arguments that a Config's DATA and TRAIN sections give as they are.

    What depends on the process is left to the caller: ``rank``, ``world_size``, ``pin_memory``, ``workers``
    (per process, while ``TRAIN.workers`` is per node) and ``dataset_gpu_mapping`` (MSeg's mapping needs the
    run's dataset list and process count to mean anything). :func:`mseg_semantic.training.run.build_loader`
    adds them from its run plan; left out, they default to one process loading in place with mixed batches.
    """
    data, train = cfg.DATA, cfg.TRAIN
    keys = ("batch_size", "train_h", "train_w", "short_size", "scale_min", "scale_max", "rotate_min", "rotate_max",
            "rotate_prob", "blur_prob", "flip_prob", "ignore_label", "seed")
    arguments = {key: train[key] for key in keys}
    arguments.update(
        data_root=data.data_root or None,
        dataset_roots=data.dataset_roots,
        dataset_lists=data.dataset_lists,
        sampling_weights=data.sampling_weights,
        on_bad_sample=data.on_bad_sample,
        unknown_label=data.unknown_label,
    )
    return arguments
