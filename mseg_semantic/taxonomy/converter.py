"""Converters between dataset label spaces and the model's label space (MSeg's TaxonomyConverter API).

The model's label space, its *model taxonomy*, is one of three (:data:`MODEL_TAXONOMIES`):

TaxonomyConverter       universal: MSeg's universal taxonomy (194 classes, MSeg's ids)
NaiveTaxonomyConverter  naive: the lower-cased union of the training datasets' names (316 logits, ids skip 255)
OracleTaxonomyConverter oracle: one dataset trained in its own taxonomy (identity mapping, with validation)

Labels go through a 256-entry lookup table. Ids a dataset does not have map to a sentinel value no real
target uses, so finding them costs one comparison pass over the uint8 output, never an int64 copy.
Predictions go the other way through :func:`project_probabilities`: each output class receives the summed
probability of the model classes that map to it.

MSeg's attribute names (``num_uclasses``, ``uid2uname``, ``uname2uid``, ``id_to_uid_maps``,
``dataset_classnames``) remain available, as read-only aliases, so code written against MSeg's API runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mseg_semantic.errors import UnknownNameError, UserError, did_you_mean
from mseg_semantic.taxonomy.catalog import DEFAULT_TEST_DATASETS, DEFAULT_TRAIN_DATASETS, UNRELABELED_TRAIN_DATASETS, Catalog
from mseg_semantic.taxonomy.files import DEFAULT_UNIVERSAL, IGNORE_INDEX, UNLABELED, TaxonomyFileError
from mseg_semantic.taxonomy.label_set_rule import record_weights
from mseg_semantic.taxonomy.label_sets import LabelSets
from mseg_semantic.taxonomy.validation import validate_taxonomies

UNKNOWN_MODES = ("error", "ignore")
MODEL_TAXONOMIES = ("universal", "naive", "oracle")


class UnknownLabelError(UserError):
    """A label holds ids that the dataset's taxonomy does not have."""

    def __init__(self, dataset: str, ids: list[int], num_classes: int):
        self.dataset = dataset
        self.ids = ids
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        super().__init__(
            f"label of dataset {dataset!r} holds id(s) {shown} that its taxonomy does not have "
            f"(valid: 0..{num_classes - 1} and {IGNORE_INDEX}); is the label in another taxonomy (e.g. the raw "
            f"one before remapping)? DATA.unknown_label=ignore maps them to {IGNORE_INDEX}")


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


class Projection:
    """Model classes -> output classes: output class k receives the summed probability of ``members[k]``.

    The sums are exact float32 additions in a fixed order on every device (no convolution or matrix product,
    which cuDNN / cuBLAS may run in TF32), and only the model classes some output class needs are read.
    """

    def __init__(self, num_inputs: int, members: list[list[int]] | tuple[tuple[int, ...], ...]):
        self.num_inputs = int(num_inputs)
        self.members = tuple(tuple(sorted(int(m) for m in group)) for group in members)
        for group in self.members:
            if any(not 0 <= m < self.num_inputs for m in group):
                raise ValueError(f"projection members must lie in 0..{self.num_inputs - 1}, got {group}")
        self.used_inputs = sorted({m for group in self.members for m in group})
        self._first = [group[0] if group else -1 for group in self.members]
        self._extra = [(k, group[1:]) for k, group in enumerate(self.members) if len(group) > 1]
        self._index_cache: dict[str, tuple] = {}

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> "Projection":
        """From a K x C 0/1 matrix (row k: the model classes output class k receives)."""
        if matrix.ndim != 2 or not bool(((matrix == 0) | (matrix == 1)).all()):
            raise ValueError("a projection matrix must be K x C with entries 0 or 1")
        return cls(matrix.shape[1], [torch.nonzero(row).flatten().tolist() for row in matrix])

    @property
    def num_outputs(self) -> int:
        return len(self.members)

    def matrix(self) -> torch.Tensor:
        """float32 K x C of 0/1 (row k: the model classes whose probability output class k receives)."""
        out = torch.zeros(self.num_outputs, self.num_inputs, dtype=torch.float32)
        for k, group in enumerate(self.members):
            out[k, list(group)] = 1.0
        return out

    def _indices(self, device: torch.device):
        """Index tensors made once per device (a CUDA graph replays the ops that read them)."""
        key = str(device)
        if key not in self._index_cache:
            first = torch.tensor([max(f, 0) for f in self._first], dtype=torch.long, device=device)
            extra = [(k, torch.tensor(group, dtype=torch.long, device=device)) for k, group in self._extra]
            empty = [k for k, f in enumerate(self._first) if f < 0]
            self._index_cache[key] = (first, extra, torch.tensor(empty, dtype=torch.long, device=device) if empty else None)
        return self._index_cache[key]

    def __call__(self, probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``probs`` with C model classes along ``dim`` -> K output classes along ``dim``."""
        if probs.shape[dim] != self.num_inputs:
            raise ValueError(f"the projection takes {self.num_inputs} classes along dim {dim}, got shape {tuple(probs.shape)}")
        first, extra, empty = self._indices(probs.device)
        out = probs.index_select(dim, first)
        if empty is not None:  # output classes no model class feeds: probability 0
            out.index_fill_(dim, empty, 0.0)
        for k, group in extra:
            out.select(dim, k).add_(probs.index_select(dim, group).sum(dim))
        return out


class _LabelSpaceConverter:
    """What the three converters share: label tables per training dataset, projections per test dataset."""

    model_taxonomy = ""

    def __init__(self, train_datasets, test_datasets, class_names: list[str], catalog: Catalog):
        self.catalog = catalog
        self.train_datasets = list(train_datasets)
        self.test_datasets = list(test_datasets)
        self.ignore_label = IGNORE_INDEX
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.id_to_name = {uid: name for uid, name in enumerate(class_names) if uid != IGNORE_INDEX}
        self.id_to_name[IGNORE_INDEX] = UNLABELED
        self.name_to_id: dict[str, int] = {}
        for uid, name in self.id_to_name.items():
            self.name_to_id.setdefault(name, uid)
        self.name_to_id[UNLABELED] = IGNORE_INDEX
        self.dataset_class_names = {d: list(catalog.taxonomy(d).class_names)
                                    for d in dict.fromkeys(self.train_datasets + self.test_datasets)}
        self.label_maps: dict[str, dict[int, int]] = {}  # training dataset: source id -> model id (255 -> 255)
        # what the ids transform_label writes stand for: model classes (one-hot), or label-set codes (set_valued)
        self.label_sets = LabelSets.singletons(self.num_classes)
        self._tables: dict[str, LabelTable] = {}
        self._projections: dict[str, Projection] = {}

    # MSeg's names for the same things
    num_uclasses = property(lambda self: self.num_classes)
    uid2uname = property(lambda self: self.id_to_name)
    uname2uid = property(lambda self: self.name_to_id)
    id_to_uid_maps = property(lambda self: self.label_maps)
    dataset_classnames = property(lambda self: self.dataset_class_names)

    def _add_train_mapping(self, dataset: str, id2uid: dict[int, int], id2label: dict[int, int] | None = None) -> None:
        """``id2uid``: one-hot targets (MSeg's mapping); ``id2label``: what transform_label writes, when that differs
        (label-set codes)."""
        self.label_maps[dataset] = {**id2uid, IGNORE_INDEX: IGNORE_INDEX}
        self._tables[dataset] = LabelTable.from_mapping(dataset, len(self.dataset_class_names[dataset]),
                                                        id2uid if id2label is None else id2label,
                                                        max_model_id=max(self.num_classes - 1, self.label_sets.max_label_id))

    def _add_test_projection(self, dataset: str, pairs: list[tuple[int, int]]) -> None:
        members: list[list[int]] = [[] for _ in self.dataset_class_names[dataset]]
        for uid, test_id in pairs:
            members[test_id].append(uid)
        self._projections[dataset] = Projection(self.num_classes, members)

    def _unknown(self, dataset: str, role: str, known) -> UnknownNameError:
        return UnknownNameError(f"{dataset!r} is not a {role} dataset of this {self.model_taxonomy} converter"
                                f"{did_you_mean(dataset, known)}; its {role} datasets: {', '.join(known)}")

    def transform_label(self, label, dataset: str, unknown: str = "error"):
        """Map a label in `dataset`'s taxonomy to model ids (a set-valued converter: to the label ids of
        ``label_sets``, model ids for classes of one). numpy in -> numpy out (uint8, or uint16 when a
        target id exceeds 255); torch in -> torch out (input dtype when it holds the ids, else int64).
        255 stays 255. Ids the dataset does not have raise UnknownLabelError, or become 255 with
        unknown='ignore'."""
        if unknown not in UNKNOWN_MODES:
            raise ValueError(f"unknown={unknown!r}: expected one of {UNKNOWN_MODES}")
        table = self._tables.get(dataset)
        if table is None:
            raise self._unknown(dataset, "training", list(self._tables))
        if isinstance(label, torch.Tensor):
            return table.apply_torch(label, unknown)
        if isinstance(label, np.ndarray):
            return table.apply_numpy(label, unknown)
        raise TypeError(f"label must be a numpy array or a torch tensor, got {type(label).__name__}")

    def projection(self, dataset: str) -> Projection:
        """How model probabilities become probabilities of ``dataset``'s (test) classes."""
        if dataset not in self._projections:
            raise self._unknown(dataset, "test", list(self._projections))
        return self._projections[dataset]

    def test_projection_matrix(self, dataset: str) -> torch.Tensor:
        """float32 K x num_classes of 0/1; row k = the model classes whose probability test class k receives."""
        return self.projection(dataset).matrix()

    def transform_predictions_test(self, logits: torch.Tensor, dataset: str) -> torch.Tensor:
        """N x C x H x W logits -> N x K x H x W probabilities: softmax, then each test class sums the
        probability of its model classes (exactly; MSeg used a fixed 1x1 convolution)."""
        projection = self.projection(dataset)
        return projection(self.transform_predictions_universal(logits, dataset))

    def transform_predictions_universal(self, logits: torch.Tensor, dataset: str | None = None) -> torch.Tensor:
        """Softmax over the class dimension of N x C x H x W logits (`dataset` is accepted for MSeg's signature)."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"expected logits N x {self.num_classes} x H x W for this {self.model_taxonomy} converter, "
                             f"got {shape}")
        return torch.softmax(logits, dim=1)

    def dataset_universal_ids(self, dataset: str) -> list[int]:
        """Sorted model ids a dataset can express: a training dataset's targets, or what feeds a test dataset."""
        if dataset in self.label_maps:
            return sorted({u for u in self.label_maps[dataset].values() if u != IGNORE_INDEX})
        if dataset in self._projections:
            return list(self._projections[dataset].used_inputs)
        raise self._unknown(dataset, "training or test", list(self.label_maps) + list(self._projections))


def _universal_of(datasets: list[str], catalog: Catalog) -> str:
    """The universal taxonomy the datasets map to (MSeg's when there are none); they must agree."""
    targets = {d: catalog.taxonomy(d).maps_to for d in dict.fromkeys(datasets)}
    distinct = sorted(set(targets.values()))
    if len(distinct) > 1:
        shown = ", ".join(f"{d} -> {u}" for d, u in targets.items())
        raise UserError(f"the datasets map to different universal taxonomies ({shown}); one model has one label space: "
                        "use datasets that map to the same one (a user taxonomy file can map a dataset to another "
                        "with a block that 'extends' it)")
    return distinct[0] if distinct else DEFAULT_UNIVERSAL


def _require_role(name: str, roles: tuple[str, ...], purpose: str, catalog: Catalog) -> None:
    tax = catalog.taxonomy(name)
    if tax.role not in roles:
        valid = [n for n in catalog.taxonomy_names() if catalog.taxonomy(n).role in roles]
        raise UserError(f"{name!r} has role {tax.role!r} and cannot be a {purpose}; valid: {', '.join(valid)}")


class NeedsLabelSetsError(UserError):
    """A test taxonomy trained with one-hot targets: one of its classes receives several universal classes."""


def _require_one_hot(name: str, catalog: Catalog) -> None:
    """A test taxonomy's universal cell lists the universal classes a class receives, in no order of preference: a
    class with several has no one-hot target (a training taxonomy's first member is MSeg's target)."""
    tax = catalog.taxonomy(name)
    if tax.role != "test":
        return
    merged = [(cls, members) for cls, members in zip(tax.class_names, tax.universal) if len(members) > 1]
    if merged:
        cls, members = merged[0]
        more = f" (and {len(merged) - 1} more class(es))" if len(merged) > 1 else ""
        raise NeedsLabelSetsError(
            f"{name!r} is a test taxonomy: its class {cls!r} receives {len(members)} universal classes ({', '.join(members)})"
            f"{more}, so its pixels have no one-hot universal target; train it with label sets: TRAIN.loss=partial_label (loss=partial_label)")


class TaxonomyConverter(_LabelSpaceConverter):
    """MSeg's universal taxonomy: universal id = MSeg's id, so MSeg's released checkpoints stay usable.

    ``universal``: the universal taxonomy (default: the one the datasets map to, else MSeg's). ``set_valued``:
    transform_label writes label-set codes (``label_sets``) instead of one-hot targets, for partial-label
    training; ``class_sets`` holds every training class's set either way.
    """

    model_taxonomy = "universal"

    def __init__(self, train_datasets=DEFAULT_TRAIN_DATASETS, test_datasets=DEFAULT_TEST_DATASETS,
                 universal: str | None = None, set_valued: bool = False, catalog: Catalog | None = None):
        catalog = catalog or Catalog.builtin()
        for d in train_datasets:  # a test taxonomy trains too: its classes are the label sets of their universal preimages
            _require_role(d, ("train", "test"), "training dataset of a universal converter", catalog)
            if not set_valued:
                _require_one_hot(d, catalog)
        for d in test_datasets:
            _require_role(d, ("test",), "test dataset of a universal converter", catalog)
        if universal is None:
            universal = _universal_of([*train_datasets, *test_datasets], catalog)
        _require_role(universal, ("universal",), "universal taxonomy", catalog)
        uni = catalog.taxonomy(universal)
        involved = [catalog.taxonomy(d) for d in dict.fromkeys([*train_datasets, *test_datasets])]
        for tax in involved:
            if tax.maps_to != universal:
                raise UserError(f"dataset {tax.name!r} maps to {tax.maps_to!r}, not to {universal!r}")
        report = validate_taxonomies([uni, *involved], check_coverage=False)
        if report.errors:
            raise TaxonomyFileError(report)
        super().__init__(train_datasets, test_datasets, list(uni.class_names), catalog)
        self.universal = universal
        self.set_valued = bool(set_valued)
        # training dataset -> per source class: its label set as model ids, the one-hot target first; () = ignore
        self.class_sets: dict[str, list[tuple[int, ...]]] = {
            d: [() if t[0] == UNLABELED else tuple(self.name_to_id[u] for u in t) for t in catalog.taxonomy(d).universal]
            for d in self.train_datasets}
        # training dataset -> per source class: the weights of its set's members for the `records` loss (aligned
        # with class_sets; None for a set whose dataset has no record counts for it)
        self.class_set_weights: dict[str, list[tuple[float, ...] | None]] = {}
        if self.set_valued:
            for d in self.train_datasets:
                weights = record_weights(catalog.taxonomy(d))
                self.class_set_weights[d] = [weights[i] if weights is not None else (None if len(s) > 1 else (1.0,) * len(s))
                                             for i, s in enumerate(self.class_sets[d])]
            self.label_sets = LabelSets.for_sets(self.num_classes, (s for d in self.train_datasets for s in self.class_sets[d]),
                                                 (w for d in self.train_datasets for w in self.class_set_weights[d]))
        for d in self.train_datasets:
            sets = self.class_sets[d]
            one_hot = {i: s[0] if s else IGNORE_INDEX for i, s in enumerate(sets)}
            self._add_train_mapping(d, one_hot, {i: self.label_sets.code_of(s, self.class_set_weights[d][i], exact=True)
                                                 for i, s in enumerate(sets)} if self.set_valued else None)
        for d in self.test_datasets:
            tax = catalog.taxonomy(d)
            self._add_test_projection(d, [(self.name_to_id[u], i) for i, us in enumerate(tax.universal) for u in us])
        supplied = {u for d in self.train_datasets for u in self.dataset_universal_ids(d)}
        # universal classes no training dataset labels (empty with MSeg's 15 datasets); the model never learns them
        self.unsupplied_uids = [u for u in range(self.num_classes) if u not in supplied]


class NaiveTaxonomyConverter(_LabelSpaceConverter):
    """MSeg's naive taxonomy: no domain knowledge, classes merged only when their lower-cased names match."""

    model_taxonomy = "naive"

    def __init__(self, train_datasets=UNRELABELED_TRAIN_DATASETS, test_datasets=DEFAULT_TEST_DATASETS,
                 catalog: Catalog | None = None):
        catalog = catalog or Catalog.builtin()
        for d in train_datasets:
            _require_role(d, ("train",), "training dataset of a naive converter", catalog)
        for d in test_datasets:
            _require_role(d, ("test", "train"), "test dataset of a naive converter", catalog)
        super().__init__(train_datasets, test_datasets, catalog.naive_class_names(train_datasets), catalog)
        for d in self.train_datasets:
            self._add_train_mapping(d, {i: self.name_to_id[c.lower()]
                                        for i, c in enumerate(self.dataset_class_names[d])})
        for d in self.test_datasets:
            # a test class whose name is in no training dataset gets probability 0, as in MSeg
            self._add_test_projection(d, [(self.name_to_id[c.lower()], i)
                                          for i, c in enumerate(self.dataset_class_names[d])
                                          if c.lower() in self.name_to_id and c.lower() != UNLABELED])

    def get_naive_taxonomy_classnames(self) -> list[str | None]:
        """MSeg's accessor: class names by logit, None at 255."""
        return [None if i == IGNORE_INDEX else n for i, n in enumerate(self.class_names)]


class OracleTaxonomyConverter(_LabelSpaceConverter):
    """One dataset trained and tested in its own taxonomy (MSeg `universal: False`)."""

    model_taxonomy = "oracle"

    def __init__(self, train_datasets, test_datasets=None, catalog: Catalog | None = None):
        catalog = catalog or Catalog.builtin()
        train_datasets = [train_datasets] if isinstance(train_datasets, str) else list(train_datasets)
        if len(train_datasets) != 1:
            raise UserError(f"an oracle converter trains on exactly one dataset, got {train_datasets}")
        dataset = train_datasets[0]
        names = list(catalog.taxonomy(dataset).class_names)
        test_datasets = [dataset] if test_datasets is None else list(test_datasets)
        for d in test_datasets:
            if list(catalog.taxonomy(d).class_names) != names:
                raise UserError(f"oracle test dataset {d!r} has other classes than the training dataset "
                                 f"{dataset!r}; an oracle model can only be tested in its own taxonomy")
        super().__init__(train_datasets, test_datasets, names, catalog)
        self._add_train_mapping(dataset, {i: i for i in range(len(names))})
        for d in self.test_datasets:
            self._add_test_projection(d, [(i, i) for i in range(len(names))])


def build_taxonomy_converter(model_taxonomy: str, train_datasets=None, test_datasets=None, set_valued: bool = False,
                             universal: str | None = None, catalog: Catalog | None = None):
    """The converter of a model taxonomy ('universal' | 'naive' | 'oracle'); None datasets mean its defaults.
    ``set_valued`` (universal only): training labels carry label sets (see :class:`TaxonomyConverter`).
    ``universal`` (universal only): the universal taxonomy, when it must be a given one (a model's).
    ``catalog``: the run's taxonomies (default: the built-in ones)."""
    if set_valued and model_taxonomy != "universal":
        raise UserError(f"label sets exist in the universal taxonomy only; the {model_taxonomy} taxonomy maps every "
                        "class to one model class")
    if model_taxonomy == "universal":
        return TaxonomyConverter(train_datasets if train_datasets is not None else DEFAULT_TRAIN_DATASETS,
                                 test_datasets if test_datasets is not None else DEFAULT_TEST_DATASETS,
                                 universal=universal, set_valued=set_valued, catalog=catalog)
    if model_taxonomy == "naive":
        return NaiveTaxonomyConverter(train_datasets if train_datasets is not None else UNRELABELED_TRAIN_DATASETS,
                                      test_datasets if test_datasets is not None else DEFAULT_TEST_DATASETS, catalog)
    if model_taxonomy == "oracle":
        if not train_datasets:
            raise UserError("an oracle converter needs train_datasets=[one dataset]")
        return OracleTaxonomyConverter(train_datasets, test_datasets, catalog)
    raise UnknownNameError(f"unknown model taxonomy {model_taxonomy!r}{did_you_mean(model_taxonomy, MODEL_TAXONOMIES)}; valid: {', '.join(MODEL_TAXONOMIES)}")
