"""Converters between dataset label spaces and the model's label space (MSeg's TaxonomyConverter API).

TaxonomyConverter      universal taxonomy (194 classes, MSeg's ids)
NaiveTaxonomyConverter lower-cased union of the training datasets' names (316 logits, ids skip 255)
OracleTaxonomyConverter one dataset trained in its own taxonomy (identity mapping, with validation)

Labels go through a 256-entry lookup table. Ids a dataset does not have map to a sentinel value no real
target uses, so finding them costs one comparison pass over the uint8 output, never an int64 copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mseg_semantic.taxonomy.catalog import (
    DEFAULT_TEST_DATASETS,
    DEFAULT_TRAIN_DATASETS,
    IGNORE_INDEX,
    UNRELABELED_TRAIN_DATASETS,
    get_taxonomy,
    taxonomy_names,
)
from mseg_semantic.taxonomy.files import DEFAULT_UNIVERSAL, UNLABELED, TaxonomyFileError, suggest
from mseg_semantic.taxonomy.validation import validate_taxonomies

UNKNOWN_MODES = ("error", "ignore")
KINDS = ("universal", "naive", "oracle")


class UnknownLabelError(ValueError):
    """A label holds ids that the dataset's taxonomy does not have."""

    def __init__(self, dataset: str, ids: list[int], num_classes: int):
        self.dataset = dataset
        self.ids = ids
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        super().__init__(
            f"label of dataset {dataset!r} holds id(s) {shown} that its taxonomy does not have "
            f"(valid: 0..{num_classes - 1} and {IGNORE_INDEX}); is the label in another taxonomy (e.g. the raw "
            f"one before remapping)? Pass unknown='ignore' to map them to {IGNORE_INDEX}")


@dataclass
class LabelTable:
    """source id -> target id for one dataset, as uint8/uint16 tables for cv2.LUT."""

    dataset: str
    num_source_classes: int
    strict: np.ndarray      # (256,) unknown ids -> sentinel
    lenient: np.ndarray     # (256,) unknown ids -> 255
    sentinel: int | None    # None when every value of the dtype is a real target (then `known` is used)
    known: np.ndarray       # (256,) bool
    max_target: int
    _torch_tables: dict | None = None

    @classmethod
    def from_mapping(cls, dataset: str, num_source_classes: int, mapping: dict[int, int],
                     max_model_id: int) -> "LabelTable":
        # the output dtype depends on the model's label space, not on this dataset's targets, so that every
        # dataset of a converter gives the same dtype (naive: always uint16 / int64)
        max_target = max([IGNORE_INDEX, max_model_id, *mapping.values()])
        dtype = np.uint8 if max_target <= 255 else np.uint16
        used = set(mapping.values()) | {IGNORE_INDEX}
        top = int(np.iinfo(dtype).max)
        sentinel = next((v for v in range(top, -1, -1) if v not in used), None)
        known = np.zeros(256, dtype=bool)
        lenient = np.full(256, IGNORE_INDEX, dtype=dtype)
        for src, tgt in mapping.items():
            lenient[src] = tgt
            known[src] = True
        known[IGNORE_INDEX] = True
        lenient[IGNORE_INDEX] = IGNORE_INDEX
        strict = lenient.copy()
        if sentinel is not None:
            strict[~known] = sentinel
        return cls(dataset, num_source_classes, strict, lenient, sentinel, known, max_target)

    def unknown_ids_in(self, ids: np.ndarray) -> list[int]:
        present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
        return [int(i) for i in present if not self.known[i]]

    def apply_uint8(self, label: np.ndarray, unknown: str) -> np.ndarray:
        if label.size == 0:
            return np.zeros(label.shape, dtype=self.strict.dtype)
        flat = np.ascontiguousarray(label).reshape(-1)
        if unknown == "ignore":
            return cv2.LUT(flat, self.lenient).reshape(label.shape)
        out = cv2.LUT(flat, self.strict).reshape(label.shape)
        if self.sentinel is None:
            bad = self.unknown_ids_in(flat)
        elif (out == self.sentinel).any():
            bad = self.unknown_ids_in(flat)
        else:
            return out
        if bad:
            raise UnknownLabelError(self.dataset, bad, self.num_source_classes)
        return out

    def apply_numpy(self, label: np.ndarray, unknown: str) -> np.ndarray:
        if label.dtype == np.uint8:
            return self.apply_uint8(label, unknown)
        if label.dtype == np.bool_ or not np.issubdtype(label.dtype, np.integer):
            raise TypeError(f"label for dataset {self.dataset!r} must hold integers (uint8 preferred), "
                            f"got dtype {label.dtype}")
        if label.size == 0:
            return np.zeros(label.shape, dtype=self.strict.dtype)
        lo, hi = int(label.min()), int(label.max())
        if lo >= 0 and hi <= 255:
            return self.apply_uint8(label.astype(np.uint8), unknown)
        outside = (label < 0) | (label > 255)
        if unknown == "error":
            bad = sorted(int(v) for v in np.unique(label[outside]))
            inside = label[~outside].astype(np.uint8)
            bad = sorted(set(bad) | set(self.unknown_ids_in(inside)))
            raise UnknownLabelError(self.dataset, bad, self.num_source_classes)
        clipped = np.where(outside, IGNORE_INDEX, label).astype(np.uint8)
        return self.apply_uint8(clipped, unknown)

    def apply_torch(self, label: torch.Tensor, unknown: str) -> torch.Tensor:
        if label.dtype == torch.bool or label.is_floating_point() or label.is_complex():
            raise TypeError(f"label for dataset {self.dataset!r} must be an integer tensor, got {label.dtype}")
        out_dtype = label.dtype if _dtype_holds(label.dtype, self.max_target) else torch.int64
        if label.device.type == "cpu" and label.dtype == torch.uint8:
            out = torch.from_numpy(self.apply_uint8(label.numpy(), unknown))
            return out if out.dtype == out_dtype else out.to(out_dtype)
        idx = label.long()
        if idx.numel() == 0:
            return torch.zeros(label.shape, dtype=out_dtype, device=label.device)
        table, known = self._tables_on(label.device)
        lo, hi = torch.aminmax(idx)
        in_range = None
        if int(lo) < 0 or int(hi) > 255:
            in_range = (idx >= 0) & (idx <= 255)
            if unknown == "error":
                bad = set(torch.unique(idx[~in_range]).tolist())
                ok_ids = idx[in_range]
                bad |= set(torch.unique(ok_ids[~known[ok_ids]]).tolist())
                raise UnknownLabelError(self.dataset, sorted(int(b) for b in bad), self.num_source_classes)
            idx = torch.where(in_range, idx, torch.full_like(idx, IGNORE_INDEX))
        out = table[idx]
        is_unknown = ~known[idx]
        if bool(is_unknown.any()):
            if unknown == "error":
                bad = sorted(int(b) for b in torch.unique(idx[is_unknown]).tolist())
                raise UnknownLabelError(self.dataset, bad, self.num_source_classes)
            out = torch.where(is_unknown, torch.full_like(out, IGNORE_INDEX), out)
        return out.to(out_dtype)

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(lenient table as int64, known) on ``device``; unknown ids are found with ``known``."""
        if self._torch_tables is None:
            self._torch_tables = {}
        key = str(device)
        if key not in self._torch_tables:
            self._torch_tables[key] = (torch.from_numpy(self.lenient.astype(np.int64)).to(device),
                                       torch.from_numpy(self.known.copy()).to(device))
        return self._torch_tables[key]


def _dtype_holds(dtype: torch.dtype, value: int) -> bool:
    return value <= torch.iinfo(dtype).max


class _LabelSpaceConverter:
    """What the three converters share: tables per training dataset, 0/1 projections per test dataset."""

    kind = ""

    def __init__(self, train_datasets, test_datasets, class_names: list[str]):
        self.train_datasets = list(train_datasets)
        self.test_datasets = list(test_datasets)
        self.ignore_label = IGNORE_INDEX
        self.class_names = class_names
        self.num_uclasses = len(class_names)
        self.uid2uname = {uid: name for uid, name in enumerate(class_names) if uid != IGNORE_INDEX}
        self.uid2uname[IGNORE_INDEX] = UNLABELED
        self.uname2uid = {}
        for uid, name in self.uid2uname.items():
            self.uname2uid.setdefault(name, uid)
        self.uname2uid[UNLABELED] = IGNORE_INDEX
        self.dataset_classnames = {d: list(get_taxonomy(d).class_names)
                                   for d in dict.fromkeys(self.train_datasets + self.test_datasets)}
        self.id_to_uid_maps: dict[str, dict[int, int]] = {}
        self._tables: dict[str, LabelTable] = {}
        self._projections: dict[str, torch.Tensor] = {}
        self._projection_cache: dict[tuple, torch.Tensor] = {}

    def _add_train_mapping(self, dataset: str, id2uid: dict[int, int]) -> None:
        self.id_to_uid_maps[dataset] = {**id2uid, IGNORE_INDEX: IGNORE_INDEX}
        self._tables[dataset] = LabelTable.from_mapping(dataset, len(self.dataset_classnames[dataset]), id2uid,
                                                        max_model_id=self.num_uclasses - 1)

    def _add_test_projection(self, dataset: str, pairs: list[tuple[int, int]]) -> None:
        matrix = torch.zeros(len(self.dataset_classnames[dataset]), self.num_uclasses, dtype=torch.float32)
        for uid, test_id in pairs:
            matrix[test_id, uid] = 1.0
        self._projections[dataset] = matrix

    def transform_label(self, label, dataset: str, unknown: str = "error"):
        """Map a label in `dataset`'s taxonomy to model ids. numpy in -> numpy out (uint8, or uint16 when a
        target id exceeds 255); torch in -> torch out (input dtype when it holds the ids, else int64).
        255 stays 255. Ids the dataset does not have raise UnknownLabelError (a ValueError), or become 255 with
        unknown='ignore'."""
        if unknown not in UNKNOWN_MODES:
            raise ValueError(f"unknown={unknown!r}: expected one of {UNKNOWN_MODES}")
        table = self._tables.get(dataset)
        if table is None:
            raise KeyError(f"{dataset!r} is not a training dataset of this {self.kind} converter"
                           f"{suggest(dataset, self._tables)}; its training datasets: {', '.join(self._tables)}")
        if isinstance(label, torch.Tensor):
            return table.apply_torch(label, unknown)
        if isinstance(label, np.ndarray):
            return table.apply_numpy(label, unknown)
        raise TypeError(f"label must be a numpy array or a torch tensor, got {type(label).__name__}")

    def test_projection_matrix(self, dataset: str) -> torch.Tensor:
        """float32 K x num_uclasses of 0/1; row k = the model classes whose probability test class k receives."""
        return self._projection(dataset).clone()

    def _projection(self, dataset: str) -> torch.Tensor:
        if dataset not in self._projections:
            raise KeyError(f"{dataset!r} is not a test dataset of this {self.kind} converter"
                           f"{suggest(dataset, self._projections)}; its test datasets: {', '.join(self._projections)}")
        return self._projections[dataset]

    def transform_predictions_test(self, logits: torch.Tensor, dataset: str) -> torch.Tensor:
        """N x C x H x W logits -> N x K x H x W probabilities: softmax, then each test class sums the
        probability of its model classes (a fixed 1x1 convolution, as MSeg)."""
        projection = self._projection(dataset)
        probs = self.transform_predictions_universal(logits, dataset)
        key = (dataset, probs.device, probs.dtype)
        weight = self._projection_cache.get(key)
        if weight is None:
            weight = projection.to(device=probs.device, dtype=probs.dtype)[:, :, None, None]
            self._projection_cache[key] = weight
        return F.conv2d(probs, weight)

    def transform_predictions_universal(self, logits: torch.Tensor, dataset: str | None = None) -> torch.Tensor:
        """Softmax over the class dimension of N x C x H x W logits (`dataset` is accepted for MSeg's signature)."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_uclasses:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"expected logits N x {self.num_uclasses} x H x W for this {self.kind} converter, "
                             f"got {shape}")
        return torch.softmax(logits, dim=1)

    def dataset_universal_ids(self, dataset: str) -> list[int]:
        """Sorted model ids a dataset can express: a training dataset's targets, or what feeds a test dataset."""
        if dataset in self.id_to_uid_maps:
            return sorted({u for u in self.id_to_uid_maps[dataset].values() if u != IGNORE_INDEX})
        if dataset in self._projections:
            return sorted(int(u) for u in torch.nonzero(self._projections[dataset].sum(0)).flatten())
        known = list(self.id_to_uid_maps) + list(self._projections)
        raise KeyError(f"{dataset!r} is not a dataset of this {self.kind} converter{suggest(dataset, known)}; "
                       f"known: {', '.join(known)}")


def _require_role(name: str, roles: tuple[str, ...], purpose: str) -> None:
    tax = get_taxonomy(name)
    if tax.role not in roles:
        valid = [n for n in taxonomy_names() if get_taxonomy(n).role in roles]
        raise ValueError(f"{name!r} has role {tax.role!r} and cannot be a {purpose}; valid: {', '.join(valid)}")


class TaxonomyConverter(_LabelSpaceConverter):
    """MSeg's universal taxonomy: universal id = MSeg's id, so MSeg's released checkpoints stay usable."""

    kind = "universal"

    def __init__(self, train_datasets=tuple(DEFAULT_TRAIN_DATASETS), test_datasets=tuple(DEFAULT_TEST_DATASETS),
                 universal: str = DEFAULT_UNIVERSAL):
        for d in train_datasets:
            _require_role(d, ("train",), "training dataset of a universal converter")
        for d in test_datasets:
            _require_role(d, ("test",), "test dataset of a universal converter")
        _require_role(universal, ("universal",), "universal taxonomy")
        uni = get_taxonomy(universal)
        involved = [get_taxonomy(d) for d in dict.fromkeys([*train_datasets, *test_datasets])]
        for tax in involved:
            if tax.maps_to != universal:
                raise ValueError(f"dataset {tax.name!r} maps to {tax.maps_to!r}, not to {universal!r}")
        report = validate_taxonomies([uni, *involved], check_coverage=False)
        if report.errors:
            raise TaxonomyFileError(report)
        super().__init__(train_datasets, test_datasets, list(uni.class_names))
        self.universal = universal
        for d in self.train_datasets:
            tax = get_taxonomy(d)
            self._add_train_mapping(d, {i: self.uname2uid[t[0]] for i, t in enumerate(tax.universal)})
        for d in self.test_datasets:
            tax = get_taxonomy(d)
            self._add_test_projection(d, [(self.uname2uid[u], i) for i, us in enumerate(tax.universal) for u in us])
        supplied = {u for d in self.train_datasets for u in self.dataset_universal_ids(d)}
        # universal classes no training dataset labels (empty with MSeg's 15 datasets); the model never learns them
        self.unsupplied_uids = [u for u in range(self.num_uclasses) if u not in supplied]


def naive_class_names(train_datasets) -> list[str]:
    """Lower-cased names in dataset order, duplicates removed; id 255 is skipped (its name is '')."""
    names: list[str] = []
    seen: set[str] = set()
    for d in train_datasets:
        for cls in get_taxonomy(d).class_names:
            low = cls.lower()
            if low in seen:
                continue
            seen.add(low)
            if len(names) == IGNORE_INDEX:
                names.append("")
            names.append(low)
    return names


class NaiveTaxonomyConverter(_LabelSpaceConverter):
    """MSeg's naive taxonomy: no domain knowledge, classes merged only when their lower-cased names match."""

    kind = "naive"

    def __init__(self, train_datasets=tuple(UNRELABELED_TRAIN_DATASETS),
                 test_datasets=tuple(DEFAULT_TEST_DATASETS)):
        for d in train_datasets:
            _require_role(d, ("train",), "training dataset of a naive converter")
        for d in test_datasets:
            _require_role(d, ("test", "train"), "test dataset of a naive converter")
        super().__init__(train_datasets, test_datasets, naive_class_names(train_datasets))
        for d in self.train_datasets:
            self._add_train_mapping(d, {i: self.uname2uid[c.lower()]
                                        for i, c in enumerate(self.dataset_classnames[d])})
        for d in self.test_datasets:
            # a test class whose name is in no training dataset gets probability 0, as in MSeg
            self._add_test_projection(d, [(self.uname2uid[c.lower()], i)
                                          for i, c in enumerate(self.dataset_classnames[d])
                                          if c.lower() in self.uname2uid and c.lower() != UNLABELED])

    def get_naive_taxonomy_classnames(self) -> list[str | None]:
        """MSeg's accessor: class names by logit, None at 255."""
        return [None if i == IGNORE_INDEX else n for i, n in enumerate(self.class_names)]


class OracleTaxonomyConverter(_LabelSpaceConverter):
    """One dataset trained and tested in its own taxonomy (MSeg `universal: False`)."""

    kind = "oracle"

    def __init__(self, train_datasets, test_datasets=None):
        train_datasets = [train_datasets] if isinstance(train_datasets, str) else list(train_datasets)
        if len(train_datasets) != 1:
            raise ValueError(f"an oracle converter trains on exactly one dataset, got {train_datasets}")
        dataset = train_datasets[0]
        names = list(get_taxonomy(dataset).class_names)
        test_datasets = [dataset] if test_datasets is None else list(test_datasets)
        for d in test_datasets:
            if list(get_taxonomy(d).class_names) != names:
                raise ValueError(f"oracle test dataset {d!r} has other classes than the training dataset "
                                 f"{dataset!r}; an oracle model can only be tested in its own taxonomy")
        super().__init__(train_datasets, test_datasets, names)
        self._add_train_mapping(dataset, {i: i for i in range(len(names))})
        for d in self.test_datasets:
            self._add_test_projection(d, [(i, i) for i in range(len(names))])


def build_taxonomy_converter(kind: str, train_datasets=None, test_datasets=None):
    """kind: 'universal' | 'naive' | 'oracle'; None datasets mean that kind's defaults."""
    if kind == "universal":
        return TaxonomyConverter(train_datasets if train_datasets is not None else DEFAULT_TRAIN_DATASETS,
                                 test_datasets if test_datasets is not None else DEFAULT_TEST_DATASETS)
    if kind == "naive":
        return NaiveTaxonomyConverter(train_datasets if train_datasets is not None else UNRELABELED_TRAIN_DATASETS,
                                      test_datasets if test_datasets is not None else DEFAULT_TEST_DATASETS)
    if kind == "oracle":
        if not train_datasets:
            raise ValueError("an oracle converter needs train_datasets=[one dataset]")
        return OracleTaxonomyConverter(train_datasets, test_datasets)
    raise ValueError(f"unknown taxonomy kind {kind!r}{suggest(kind, KINDS)}; valid: {', '.join(KINDS)}")
