"""The training loader: an endless, resumable stream of mixed-dataset batches for one rank.

Each batch is ``{"image": uint8 N x 3 x H x W (RGB), "label": uint8 N x H x W (training taxonomy, 255 ignore;
int16 for label spaces with ids above 255), "dataset_index": int64 N}`` with N = batch_size / world_size;
normalise the images and widen the labels on the device (:func:`mseg_semantic.data.transforms.normalize_images`). Global batch ``b`` is a function of
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
from mseg_semantic.data.lists import BadSampleError, locate_and_read
from mseg_semantic.data.rare_class import build_rare_class_plan
from mseg_semantic.data.sampler import MixingSampler, SamplerCursor, normalized_weights
from mseg_semantic.data.transforms import AugmentConfig
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import Catalog

log = logging.getLogger(__name__)

_STATE_VERSION = 1


class _RankBatches:
    """Batch sampler for torch's DataLoader: this rank's rows of consecutive global batches, endlessly."""

    def __init__(self, sampler: MixingSampler, cursor: SamplerCursor, rank: int):
        self.sampler = sampler
        self.cursor = cursor.copy()
        self.rows = sampler.rank_rows(rank)
        self.cursor_after: dict[int, SamplerCursor] = {}  # batches planned but not yet handed to the trainer

    def __iter__(self):
        while True:
            refs, after = self.sampler.batch_refs(self.cursor)
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
            raise UserError(f"data-loader state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})")
        self.sampler.check_state(state["fingerprint"])
        draws = [int(d) for d in state["draws"]]
        if len(draws) != len(self.dataset_names) or int(state["batch"]) < 0:
            raise UserError("data-loader state is malformed (batch / draws)")
        self._cursor = SamplerCursor(int(state["batch"]), draws)
        self._skipped = Counter({k: int(v) for k, v in state.get("skipped", {}).items()})
        self._generation += 1  # an iterator made before this call must not keep going from the old position

    def _batches(self, batches: _RankBatches) -> Iterator[dict]:
        if self.workers == 0:
            for refs in batches:
                yield collate_train_batch([self.reader[ref] for ref in refs])
            return
        loader = torch.utils.data.DataLoader(
            self.reader,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=collate_train_batch,
            pin_memory=self.pin_memory,
            worker_init_fn=configure_worker_threads,
        )
        yield from loader

    def __iter__(self) -> Iterator[dict]:
        self._generation += 1
        generation = self._generation
        batches = _RankBatches(self.sampler, self._cursor, self.rank)
        for batch in self._batches(batches):
            if generation != self._generation:
                raise RuntimeError("this loader iterator is stale: iter(loader) or load_state_dict() was called after it was made")
            index = batch.pop("batch_index")
            if index != self._cursor.batch:
                raise RuntimeError(f"data loader delivered global batch {index}, expected {self._cursor.batch}")
            for skipped in batch.pop("skipped"):
                self._skipped[skipped.dataset] += 1
                log.warning("skipped bad sample of %s (%d so far): %s: %s", skipped.dataset, self._skipped[skipped.dataset], skipped.path, skipped.reason)
            if "error" in batch:
                hint = "" if self.reader.on_bad_sample == "skip" else " (DATA.on_bad_sample=skip replaces bad samples instead)"
                raise BadSampleError(f"{batch['error']}{hint}")
            self._cursor = batches.cursor_after.pop(index)
            yield batch


def build_train_loader(
    cfg: Any,
    datasets: Sequence[str],
    converter: Any | None,
    *,
    catalog: Catalog | None = None,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    dataset_gpu_mapping: Mapping[str, Sequence[int] | int] | None = None,
    pin_memory: bool = False,
) -> TrainLoader:
    """The training stream of one rank, from a config's DATA and TRAIN sections (``TRAIN.batch_size`` is global).

    ``converter``: the taxonomy converter of the run (universal / naive / oracle), or None for the datasets' own
    ids; ``catalog``: where the data is (default: the config's DATA section). What depends on the process is the caller's: ``rank``, ``world_size``, ``workers`` (loader processes of
    this rank; ``TRAIN.workers`` counts per node) and MSeg's ``dataset_gpu_mapping`` (it means something only for
    the run's dataset list and process count). Every split list is read up front, so a missing list fails here,
    naming the file. ``DATA.rare_class_sampling``: rare-class sampling (:mod:`mseg_semantic.data.rare_class`; its
    class statistics are counted here on first use, then cached).
    """
    data, train = cfg.DATA, cfg.TRAIN
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    catalog = catalog or Catalog.from_config(cfg)
    located = [locate_and_read(catalog, name, split) for name in names]
    samples = [pairs for _, pairs in located]
    rare_classes = None
    if data.rare_class_sampling:
        # the sampler's own checks first: the plan weighs the datasets' frequencies by the sampling weights
        MixingSampler(names, [len(s) for s in samples], train.batch_size, train.seed, world_size, data.sampling_weights,
                      dataset_gpu_mapping)
        rare_classes = build_rare_class_plan([location for location, _ in located], samples, converter,
                                             normalized_weights(names, data.sampling_weights), data.rare_class_temperature,
                                             data.rare_class_min_pixels, threads=max(1, workers), on_bad_sample=data.on_bad_sample)
    sampler = MixingSampler(names, [len(s) for s in samples], train.batch_size, train.seed, world_size,
                            data.sampling_weights, dataset_gpu_mapping, rare_classes)
    reader = TrainSampleReader(names, samples, AugmentConfig.from_config(train), converter, train.seed,
                               data.on_bad_sample, data.unknown_label, rare_classes)
    return TrainLoader(reader, sampler, rank=rank, workers=workers, pin_memory=pin_memory)
