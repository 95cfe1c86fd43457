"""Datasets over split lists: training samples (read, augment, convert the label) and full validation images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mseg_semantic.data.lists import BadSampleError, locate_and_read, read_pair
from mseg_semantic.data.sampler import STREAM_AUGMENT, STREAM_REPLACEMENT, SampleRef, stream_rng
from mseg_semantic.data.transforms import AugmentConfig, augment_crop_chw, sample_augment_params

BAD_SAMPLE_MODES = ("error", "skip")
UNKNOWN_LABEL_MODES = ("error", "ignore")
MAX_REPLACEMENTS = 16  # consecutive bad replacements before giving up: the dataset is broken, not one file


@dataclass(frozen=True)
class SkippedSample:
    dataset: str
    path: str
    reason: str


class TrainSampleReader(torch.utils.data.Dataset):
    """Map-style dataset indexed by :class:`SampleRef`: one augmented crop in the training taxonomy.

    ``converter`` follows the taxonomy contract (``transform_label(uint8 array, dataset, unknown=...)``);
    ``None`` keeps each dataset's own ids. Augmentation parameters come from ``(seed, ref.position)`` only.
    """

    def __init__(
        self,
        dataset_names: Sequence[str],
        samples: Sequence[Sequence[tuple[Path, Path]]],
        augment: AugmentConfig,
        converter: Any | None,
        seed: int,
        on_bad_sample: str = "error",
        unknown_label: str = "error",
    ):
        if on_bad_sample not in BAD_SAMPLE_MODES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_MODES}, got {on_bad_sample!r}")
        if unknown_label not in UNKNOWN_LABEL_MODES:
            raise ValueError(f"unknown_label must be one of {UNKNOWN_LABEL_MODES}, got {unknown_label!r}")
        self.dataset_names = list(dataset_names)
        self.samples = [list(s) for s in samples]
        self.augment = augment
        self.converter = converter
        self.seed = int(seed)
        self.on_bad_sample = on_bad_sample
        self.unknown_label = unknown_label

    def load(self, dataset: int, index: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(3 x H x W uint8 RGB crop, H x W label in the training taxonomy) or BadSampleError naming the file."""
        name = self.dataset_names[dataset]
        image_path, label_path = self.samples[dataset][index]
        image, label = read_pair(image_path, label_path, bgr=True)
        params = sample_augment_params(stream_rng(self.seed, STREAM_AUGMENT, position), label.shape[0], label.shape[1], self.augment)
        chw_rgb, crop_label = augment_crop_chw(image, label, params, self.augment)
        if self.converter is not None:
            try:
                crop_label = self.converter.transform_label(crop_label, name, unknown=self.unknown_label)
            except ValueError as exc:
                raise BadSampleError(label_path, f"label ids outside the {name} taxonomy: {exc}") from None
        return chw_rgb, crop_label

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples)

    def __getitem__(self, ref: SampleRef) -> dict:
        skipped: list[SkippedSample] = []
        index = ref.index
        for attempt in range(MAX_REPLACEMENTS + 1):
            try:
                image, label = self.load(ref.dataset, index, ref.position)
                return {"image": image, "label": label, "dataset_index": ref.dataset, "batch_index": ref.batch, "skipped": skipped}
            except BadSampleError as exc:
                if self.on_bad_sample == "error":
                    raise
                skipped.append(SkippedSample(self.dataset_names[ref.dataset], exc.path, exc.reason))
                # a replacement drawn from (seed, position, attempt): the same for every run, rank count and worker
                index = int(stream_rng(self.seed, STREAM_REPLACEMENT, ref.position, attempt).integers(len(self.samples[ref.dataset])))
        raise BadSampleError(skipped[-1].path, f"{MAX_REPLACEMENTS + 1} samples of {self.dataset_names[ref.dataset]} in a row were bad; last: {skipped[-1].reason}")


def collate_train_batch(items: list[dict]) -> dict:
    """Stack per-sample dicts into the training batch contract (+ bookkeeping keys the loader removes)."""
    images = torch.from_numpy(np.stack([item["image"] for item in items]))
    labels = torch.from_numpy(np.stack([item["label"] for item in items]).astype(np.int64))
    return {
        "image": images,
        "label": labels,
        "dataset_index": torch.tensor([item["dataset_index"] for item in items], dtype=torch.int64),
        "batch_index": items[0]["batch_index"],
        "skipped": [s for item in items for s in item["skipped"]],
    }


class ValDataset(torch.utils.data.Dataset):
    """Full validation/test images of one dataset, labels in the dataset's own taxonomy.

    Item: ``{"image": H x W x 3 uint8 RGB, "label": H x W uint8, "image_path": str, "label_path": str,
    "index": int}``. Resizing and cropping belong to the evaluation code.
    """

    def __init__(
        self,
        name: str,
        split: str = "val",
        data_root: str | os.PathLike | None = None,
        dataset_roots: Mapping[str, str] | None = None,
        dataset_lists: Mapping[str, Mapping[str, str]] | None = None,
    ):
        self.name = name
        self.split = split
        self.location, self.samples = locate_and_read(name, split, data_root, dataset_roots, dataset_lists)
        if not self.samples:
            raise ValueError(f"split list {self.location.list_file} of {name} is empty")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.samples[index]
        image, label = read_pair(image_path, label_path)
        return {"image": image, "label": label, "image_path": str(image_path), "label_path": str(label_path), "index": index}


def configure_worker_threads(_worker_id: int = 0) -> None:
    """One torch thread per loader worker: the workers are the parallelism.

    OpenCV's thread count is left alone: with OpenCV 5, ``cv2.setNumThreads`` in a forked worker deadlocks
    once the parent has used OpenCV's thread pool (it waits on the parent's pool threads, which the child
    does not have); OpenCV's own calls in the child work.
    """
    torch.set_num_threads(1)
