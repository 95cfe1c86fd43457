"""Datasets over split lists: training samples (read, augment, convert the label) and full validation images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mseg_semantic.data.lists import BadSampleError, locate_and_read, read_pair
from mseg_semantic.data.rare_class import crop_holding_class
from mseg_semantic.data.sampler import STREAM_AUGMENT, STREAM_REPLACEMENT, SampleRef, stream_rng
from mseg_semantic.data.transforms import AugmentConfig, augment_crop_chw, sample_augment_params
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import Catalog, UnknownLabelError

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
        rare_classes: Any | None = None,
    ):
        """``rare_classes``: the loader's :class:`~mseg_semantic.data.rare_class.RareClassPlan`, which says where a
        row's rare class lies in its source label (the crop is drawn to hold it), or None."""
        if on_bad_sample not in BAD_SAMPLE_MODES:
            raise UserError(f"DATA.on_bad_sample={on_bad_sample!r} is not one of {', '.join(BAD_SAMPLE_MODES)}")
        if unknown_label not in UNKNOWN_LABEL_MODES:
            raise UserError(f"DATA.unknown_label={unknown_label!r} is not one of {', '.join(UNKNOWN_LABEL_MODES)}")
        self.dataset_names = list(dataset_names)
        self.samples = [list(s) for s in samples]
        self.augment = augment
        self.converter = converter
        self.seed = int(seed)
        self.on_bad_sample = on_bad_sample
        self.unknown_label = unknown_label
        self.rare_classes = rare_classes

    def load(self, dataset: int, index: int, position: int, rare_class: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """(3 x H x W uint8 RGB crop, H x W label in the training taxonomy) or BadSampleError naming the file.

        The whole label goes through the taxonomy before the crop is taken, so an unknown id anywhere in the file
        is found (a lookup-table pass, ~1 ms at 1080p), not only where the random crop happens to fall.
        """
        name = self.dataset_names[dataset]
        image_path, label_path = self.samples[dataset][index]
        image, label = read_pair(image_path, label_path, bgr=True)
        source_label = label
        if self.converter is not None:
            try:
                label = self.converter.transform_label(label, name, unknown=self.unknown_label)
            except UnknownLabelError as exc:
                raise BadSampleError(label_path, f"label ids outside the {name} taxonomy: {exc}") from None
        rng = stream_rng(self.seed, STREAM_AUGMENT, position)
        params = sample_augment_params(rng, label.shape[0], label.shape[1], self.augment)
        if rare_class >= 0 and self.rare_classes is not None:  # the same stream, drawn on: (seed, position) still decides
            params = crop_holding_class(source_label, self.rare_classes.source_ids(dataset, rare_class), params, self.augment, rng)
        return augment_crop_chw(image, label, params, self.augment)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples)

    def __getitem__(self, ref: SampleRef) -> dict:
        skipped: list[SkippedSample] = []
        index = ref.index
        for attempt in range(MAX_REPLACEMENTS + 1):
            try:
                image, label = self.load(ref.dataset, index, ref.position, ref.rare_class)
                return {"image": image, "label": label, "dataset_index": ref.dataset, "batch_index": ref.batch, "skipped": skipped}
            except BadSampleError as exc:
                if self.on_bad_sample == "error":
                    # returned, not raised: a loader worker would wrap the message in its traceback
                    return {"error": str(exc), "batch_index": ref.batch, "skipped": skipped}
                skipped.append(SkippedSample(self.dataset_names[ref.dataset], exc.path, exc.reason))
                # a replacement drawn from (seed, position, attempt): the same for every run, rank count and worker
                index = int(stream_rng(self.seed, STREAM_REPLACEMENT, ref.position, attempt).integers(len(self.samples[ref.dataset])))
        name = self.dataset_names[ref.dataset]
        message = (f"{MAX_REPLACEMENTS + 1} samples of {name} in a row were bad, replacements included: the dataset is "
                   f"broken, not one file (`mseg-data verify --dataset {name}` lists every problem); last: {skipped[-1].reason}")
        return {"error": str(BadSampleError(skipped[-1].path, message)), "batch_index": ref.batch, "skipped": skipped}


def collate_train_batch(items: list[dict]) -> dict:
    """Stack per-sample dicts into the training batch contract (+ bookkeeping keys the loader removes).

    Labels stay narrow on their way to the device (uint8; int16 for label spaces with ids above 255): a third
    of the bytes of int64. A sample that failed carries ``error``; the batch then carries the first one.
    """
    bookkeeping = {"batch_index": items[0]["batch_index"], "skipped": [s for item in items for s in item["skipped"]]}
    errors = [item["error"] for item in items if "error" in item]
    if errors:
        return {"error": errors[0], **bookkeeping}
    images = torch.from_numpy(np.stack([item["image"] for item in items]))
    labels = np.stack([item["label"] for item in items])
    if labels.dtype == np.uint16:
        labels = labels.astype(np.int16)  # naive ids reach 316; torch has few uint16 kernels
    return {
        "image": images,
        "label": torch.from_numpy(labels),
        "dataset_index": torch.tensor([item["dataset_index"] for item in items], dtype=torch.int64),
        **bookkeeping,
    }


class ValDataset(torch.utils.data.Dataset):
    """Full validation/test images of one dataset, labels in the dataset's own taxonomy.

    Item: ``{"image": H x W x 3 uint8 RGB, "label": H x W uint8, "image_path": str, "label_path": str,
    "index": int}``. Resizing and cropping belong to the evaluation code.
    """

    def __init__(self, catalog: Catalog, name: str, split: str = "val"):
        self.name = name
        self.split = split
        self.location, self.samples = locate_and_read(catalog, name, split)  # never empty

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
