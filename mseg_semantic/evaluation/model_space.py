"""Which model a checkpoint holds, and in which label space its predictions are scored or shown.

A project checkpoint (``model_final.pth``) carries ``meta`` (model name, class count, model taxonomy, training
datasets), so nothing needs repeating on the command line. MSeg's released checkpoints carry no meta: the
architecture is recognised from the state dict (HRNet width), the class count from the classifier, and the
model taxonomy defaults to ``universal`` (``TEST.model_taxonomy`` overrides it).

The four cases MSeg distinguishes (model taxonomy -> evaluation taxonomy):

- universal / naive model, test dataset: probabilities summed into the test taxonomy (zero-shot);
- universal / naive model, training dataset: ground truth mapped into the model's taxonomy, and only the
  classes that dataset can express enter the mean;
- oracle model (trained in one dataset's own taxonomy): that dataset, as it is.

Predictions can also be given in any other taxonomy (``TEST.output_taxonomy``, :func:`output_projection`): a test
taxonomy sums the probabilities of its universal classes (MSeg's zero-shot rule); a training taxonomy (built in,
e.g. cityscapes-19 or ade20k-150, or a user file) gives each of its classes the probability of the one model
class it maps to. Two rules decide the cases the mapping leaves open:

- *shared*: when several output classes map to the same model class (ade20k-150's ``booth``, ``building``,
  ``house``... all map to universal ``building``), its probability goes to one of them: the class named like the
  model class (case-insensitive, ``_`` read as a space), else the class named like the first of its
  ``_``-separated parts (``sidewalk_pavement`` -> ``Sidewalk``), else the lowest id. The others are never
  predicted; each tool lists them.
- *uncovered* (``TEST.uncovered_classes``): model classes no output class receives. ``drop`` (default, MSeg's
  rule): the output classes compete among themselves. ``ignore``: their summed probability is an extra 'other'
  class; where it is larger than every output class the label is 255 (unlabeled, black), a miss when scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mseg_semantic.errors import UnknownNameError, UserError, did_you_mean
from mseg_semantic.model import WeightsFileError, build_model, load_weights
from mseg_semantic.model.loading import CLASSIFIER_PREFIX, guess_variant, read_state_dict
from mseg_semantic.model.weights import WEIGHTS, cache_dir, resolve_weights, weights_path
from mseg_semantic.taxonomy import (
    DEFAULT_UNIVERSAL,
    IGNORE_INDEX,
    MODEL_TAXONOMIES,
    UNRELABELED_TRAIN_DATASETS,
    Catalog,
    Projection,
    build_taxonomy_converter,
    palette,
)

__all__ = [
    "UNCOVERED_RULES",
    "LoadedModel",
    "OutputSpace",
    "display_space",
    "evaluation_space",
    "load_model_for_inference",
    "load_model_from_config",
    "output_projection",
    "pick_device",
    "resolve_model_path",
]

UNCOVERED_RULES = ("drop", "ignore")
# the first bytes of what torch.save writes: a zip archive (PyTorch >= 1.6) or a pickle (protocol 2 and later)
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")

CLASSIFIER_KEY = CLASSIFIER_PREFIX + "weight"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    path: str
    name: str  # architecture, e.g. hrnet_w48
    model_taxonomy: str  # universal | naive | oracle
    num_classes: int
    train_datasets: list[str] | None
    meta: dict = field(default_factory=dict)
    universal_taxonomy: str = DEFAULT_UNIVERSAL  # the universal taxonomy of a universal model (MSeg's, or a user file's)
    catalog: Catalog = field(default_factory=Catalog.builtin)  # the taxonomies its classes are read with, and where data is


@dataclass
class OutputSpace:
    """The label space predictions are made in, and how ground truth gets there."""

    name: str  # a taxonomy name: 'universal', 'naive', or a dataset's
    class_names: list[str]
    colors: np.ndarray  # (K, 3) uint8
    projection: Projection | None  # the model's probabilities -> this space's K classes; None: the model's classes
    converter: Any | None = None  # maps ground truth into this space (training dataset in universal/naive)
    label_dataset: str | None = None  # the dataset name the converter maps from
    valid_classes: list[int] | None = None  # ids that enter the means (None: all)
    uncovered: str = "drop"  # TEST.uncovered_classes: drop | ignore (an 'other' class -> label 255); see the module docstring
    notes: list[str] = field(default_factory=list)  # what the projection rules decided (output classes never predicted)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_other(self) -> bool:
        """Whether the uncovered model classes form an 'other' class (label 255) beside the K output classes."""
        return self.uncovered == "ignore" and self.projection is not None

    def convert_label(self, label: np.ndarray) -> np.ndarray:
        """Ground truth in the dataset's taxonomy -> this space (unknown ids raise, never remapped silently)."""
        if self.converter is None:
            return label
        return self.converter.transform_label(label, self.label_dataset, unknown="error")


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"TEST.test_device={name!r} but no CUDA device is visible; use test_device=cpu or auto")
    return device


def universal_taxonomy_of(meta: dict, train_datasets: list[str] | None, catalog: Catalog) -> str:
    """The universal taxonomy a universal model predicts: its meta's (a user file's, e.g. universal-crosswalk), else
    the one its training datasets map to, else MSeg's (a release without meta)."""
    if meta.get("universal_taxonomy"):
        return str(meta["universal_taxonomy"])
    try:
        targets = {catalog.taxonomy(d).maps_to for d in train_datasets or ()}
    except UnknownNameError:
        targets = set()
    return targets.pop() if len(targets) == 1 else DEFAULT_UNIVERSAL


def model_class_names(model_taxonomy: str, train_datasets: list[str] | None, universal: str = DEFAULT_UNIVERSAL,
                      catalog: Catalog | None = None) -> tuple[str, list[str]]:
    """(taxonomy name, class names by model output) of a model: a universal taxonomy, the naive taxonomy of its
    training datasets, or an oracle's dataset."""
    catalog = catalog or Catalog.builtin()
    if model_taxonomy == "universal":
        return universal, catalog.class_names(universal)
    if model_taxonomy == "naive":
        return "naive", catalog.naive_class_names(train_datasets) if train_datasets else catalog.class_names("naive")
    return train_datasets[0], catalog.class_names(train_datasets[0])


def _check_taxonomies_known(path: Path, model_taxonomy: str, train_datasets: list[str] | None, universal: str, catalog: Catalog) -> None:
    """The taxonomies a model's classes come from must be loaded (a user file's: ``DATA.taxonomy_files``)."""
    names = [universal] if model_taxonomy == "universal" else list(train_datasets or [])
    known = set(catalog.taxonomy_names())
    missing = [n for n in names if n not in known]
    if missing:
        raise UnknownNameError(f"{path} was trained in taxonomies this process does not know ({', '.join(missing)}): "
                               f"load the taxonomy file that defines them, e.g. taxonomy_files=[config/taxonomy/FILE.tsv]")


def load_model_for_inference(
    path: str | Path,
    device: torch.device,
    model_name: str | None = None,
    model_taxonomy: str | None = None,
    oracle_dataset: str | None = None,
    catalog: Catalog | None = None,
) -> LoadedModel:
    """Build the checkpoint's model and load it. ``model_name`` / ``model_taxonomy`` apply only when the file has
    no meta (MSeg's releases; a ``model_taxonomy`` that contradicts the meta is an error); ``oracle_dataset`` names
    the dataset of an oracle checkpoint without meta; ``catalog``: the run's taxonomies (a user file's model needs it)."""
    catalog = catalog or Catalog.builtin()
    path = Path(path)
    _check_is_checkpoint(path)
    state, kind, meta = read_state_dict(path)
    if CLASSIFIER_KEY not in state:
        raise WeightsFileError(f"{path}: no classifier ({CLASSIFIER_KEY}) in the file ({kind}); it is not a segmentation model checkpoint")
    if model_taxonomy and meta.get("model_taxonomy") and model_taxonomy != meta["model_taxonomy"]:
        raise UserError(f"TEST.model_taxonomy={model_taxonomy!r} but {path} was trained in the {meta['model_taxonomy']!r} taxonomy (its meta); drop the override")
    name = meta.get("model") or guess_variant(state) or model_name or "hrnet_w48"
    num_classes = int(meta.get("num_classes") or state[CLASSIFIER_KEY].shape[0])
    space = meta.get("model_taxonomy") or model_taxonomy or "universal"
    if space not in MODEL_TAXONOMIES:
        raise UserError(f"{path}: model taxonomy {space!r} is not one of {', '.join(MODEL_TAXONOMIES)}")
    train_datasets = list(meta["train_datasets"]) if meta.get("train_datasets") else None
    if space == "oracle" and not train_datasets:
        if oracle_dataset is None:
            raise UserError(f"{path}: an oracle checkpoint without meta needs the dataset it was trained on (DATA.dataset)")
        train_datasets = [oracle_dataset]
    universal = universal_taxonomy_of(meta, train_datasets, catalog)
    _check_taxonomies_known(path, space, train_datasets, universal, catalog)
    taxonomy, class_names = model_class_names(space, train_datasets, universal, catalog)
    if len(class_names) != num_classes:
        of = ", ".join(train_datasets) if space == "naive" and train_datasets else "MSeg's datasets" if space == "naive" else taxonomy
        raise UserError(
            f"{path}: the classifier has {num_classes} outputs but a {space} model of {of} has {len(class_names)}; "
            f"set TEST.model_taxonomy to the model taxonomy the checkpoint was trained in"
        )
    model = build_model(name, num_classes)
    _check_head_shapes(path, state, model, name, num_classes, "its meta" if meta.get("num_classes") else "its classifier")
    load_weights(model, path, log=False, contents=(state, kind, meta))
    model.to(device).eval()
    return LoadedModel(model, str(path), name, space, num_classes, train_datasets, meta, universal, catalog)


def _check_is_checkpoint(path: Path) -> None:
    """A file torch.save wrote, before torch.load meets it (a text or HTML file makes the unpickler fail obscurely)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except IsADirectoryError:
        raise WeightsFileError(f"TEST.model_path={path} is a directory; give a checkpoint file (model_final.pth or an MSeg release)") from None
    if not head.startswith(CHECKPOINT_MAGIC):
        raise WeightsFileError(f"TEST.model_path={path} is not a PyTorch checkpoint (it starts with {head!r}, not a zip archive "
                               f"or a pickle as torch.save writes); give model_final.pth or an MSeg release (mseg-weights path NAME)")


def _check_head_shapes(path: Path, state: dict, model: torch.nn.Module, name: str, num_classes: int, source: str) -> None:
    """The head's tensors must fit the model the file describes. (The loader's advice for a mismatch, reinit_head,
    is a training option: a model under evaluation keeps the head it was trained with.)"""
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("head.") and key in own and tuple(value.shape) != tuple(own[key].shape):
            raise WeightsFileError(
                f"{path}: {key} has shape {tuple(value.shape)} but a {name} with {num_classes} classes ({source}) needs "
                f"{tuple(own[key].shape)}: the file's meta and weights disagree, so it cannot be evaluated as it is "
                f"(is it damaged or edited by hand?)"
            )


def _released_segmentation_model(value: str) -> bool:
    """Whether ``value`` names a released segmentation model (not a file; a backbone is refused with a reason)."""
    if Path(value).expanduser().exists() or value not in WEIGHTS:
        return False
    if WEIGHTS[value].num_classes is None:
        models = ", ".join(n for n, e in WEIGHTS.items() if e.num_classes is not None)
        raise UserError(f"TEST.model_path={value}: released weights of a backbone without a segmentation head; "
                        f"give a segmentation model: a checkpoint file or one of {models}")
    return True


def resolve_model_path(value: str | os.PathLike, download: bool = True) -> Path:
    """A checkpoint file as given, or a released model's name (``mseg-weights list``) -> its verified cached file,
    downloaded on first use (the cache's SHA-256 and content checks, :mod:`mseg_semantic.model.weights`)."""
    text = str(value)
    if _released_segmentation_model(text):
        return resolve_weights(text, download=download)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"TEST.model_path={text}: no such file, and not a released model name"
                                f"{did_you_mean(text, WEIGHTS)} (`mseg-weights list` shows the names)")
    return path


def describe_model_path(value: str | None) -> str:
    """One line on what ``TEST.model_path`` names (for ``--print-config``); raises when it names nothing."""
    if not value:
        return "model_path: not set (pass model_path=FILE or a released name: mseg-weights list)"
    if not _released_segmentation_model(str(value)):
        return f"model_path: the checkpoint file {resolve_model_path(value, download=False)}"
    cached = weights_path(str(value))
    state = "cached" if cached.is_file() else f"downloaded on first use into {cache_dir()}"
    return f"model_path: released model {value} -> {cached} ({state})"


def load_model_from_config(cfg: Any, device: torch.device, oracle_dataset: str | None = None, catalog: Catalog | None = None) -> LoadedModel:
    """The checkpoint at ``TEST.model_path`` on ``device``; ``TRAIN.model`` / ``TEST.model_taxonomy`` serve
    checkpoints without meta, ``oracle_dataset`` an oracle checkpoint without meta; ``catalog`` defaults to the
    config's."""
    if not cfg.TEST.model_path:
        raise UserError("TEST.model_path is not set: pass model_path=PATH/TO/model_final.pth or a released name (mseg-weights list)")
    return load_model_for_inference(resolve_model_path(cfg.TEST.model_path), device, model_name=cfg.TRAIN.model, model_taxonomy=cfg.TEST.model_taxonomy,
                                    oracle_dataset=oracle_dataset, catalog=catalog or Catalog.from_config(cfg))


def _model_space_names(loaded: LoadedModel) -> tuple[str, list[str], np.ndarray]:
    name, names = model_class_names(loaded.model_taxonomy, loaded.train_datasets, loaded.universal_taxonomy, loaded.catalog)
    return name, names, palette(len(names)) if loaded.model_taxonomy == "naive" else loaded.catalog.class_colors(name)


def _converter(loaded: LoadedModel, train: list[str], test: list[str]):
    catalog = loaded.catalog
    if loaded.model_taxonomy == "oracle":
        return build_taxonomy_converter("oracle", loaded.train_datasets, test or None, catalog=catalog)
    if loaded.model_taxonomy == "naive":
        return build_taxonomy_converter("naive", loaded.train_datasets or UNRELABELED_TRAIN_DATASETS, test, catalog=catalog)
    # the model's universal taxonomy: a dataset mapped to another one is refused, naming both
    return build_taxonomy_converter("universal", train, test, universal=loaded.universal_taxonomy, catalog=catalog)


def _normalised(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def _owner(model_class: str, candidates: list[int], names: Sequence[str]) -> int:
    """Which of several output classes mapped to one model class receives its probability (module docstring)."""
    parts = [model_class] + (model_class.split("_") if "_" in model_class else [])
    for part in parts:
        matches = [k for k in candidates if _normalised(names[k]) == _normalised(part)]
        if matches:
            return min(matches)
    return min(candidates)


def _training_taxonomy_groups(loaded: LoadedModel, taxonomy: str, model_names: Sequence[str]) -> tuple[list[list[int]], list[str]]:
    """Per class of a training taxonomy, the model classes whose probability it receives, and notes on the classes
    the shared rule leaves without any."""
    names = loaded.catalog.class_names(taxonomy)
    if loaded.model_taxonomy == "naive":  # MSeg's naive rule: a class maps to the naive class of the same name
        naive_id = {n: i for i, n in enumerate(model_names) if n}
        mapping = {k: naive_id[c.lower()] for k, c in enumerate(names) if c.lower() in naive_id}
    else:
        mapping = {k: u for k, u in _converter(loaded, [taxonomy], []).label_maps[taxonomy].items() if k != IGNORE_INDEX and u != IGNORE_INDEX}
    by_model_class: dict[int, list[int]] = {}
    for k, u in sorted(mapping.items()):
        by_model_class.setdefault(u, []).append(k)
    groups: list[list[int]] = [[] for _ in names]
    notes = []
    for u, classes in sorted(by_model_class.items()):
        owner = _owner(model_names[u], classes, names)
        groups[owner].append(u)
        losers = [names[k] for k in classes if k != owner]
        if losers:
            notes.append(f"{', '.join(losers)} -> never predicted: {model_names[u]} goes to {names[owner]} (shared class rule)")
    unmapped = [names[k] for k in range(len(names)) if k not in mapping]
    if unmapped:
        notes.append(f"{', '.join(unmapped)} -> never predicted: mapped to no {loaded.model_taxonomy} class")
    return groups, notes


def output_projection(loaded: LoadedModel, taxonomy: str) -> tuple[Projection | None, list[str]]:
    """How the model's probabilities become ``taxonomy``'s (None: it is the model's own label space), and notes on
    output classes that can never be predicted. Any test or training taxonomy, built in or from a user file."""
    own, model_names, _ = _model_space_names(loaded)
    if taxonomy == own:
        return None, []
    catalog = loaded.catalog
    if taxonomy not in catalog.taxonomy_names():
        valid = [n for n in catalog.taxonomy_names() if catalog.taxonomy(n).role in ("train", "test")]
        raise UnknownNameError(f"TEST.output_taxonomy={taxonomy!r} is not a known taxonomy{did_you_mean(taxonomy, valid)}: a "
                               f"taxonomy of your own is read from its file, pass taxonomy_files=[path/to/FILE.tsv]; "
                               f"built in: {', '.join(valid[:8])}, ... (`mseg-taxonomy list`)")
    role = catalog.taxonomy(taxonomy).role
    if loaded.model_taxonomy == "oracle":
        conv = _converter(loaded, [loaded.train_datasets[0]], [taxonomy])  # raises unless the classes are the same
        return conv.projection(taxonomy), []
    if role == "test":
        return _converter(loaded, [], [taxonomy]).projection(taxonomy), []
    if role == "train":
        groups, notes = _training_taxonomy_groups(loaded, taxonomy, model_names)
        return Projection(loaded.num_classes, groups), notes
    valid = [n for n in loaded.catalog.taxonomy_names() if loaded.catalog.taxonomy(n).role in ("train", "test")]
    raise UserError(f"TEST.output_taxonomy={taxonomy!r} has role {role!r}: predictions can be given in a test or training "
                    f"taxonomy ({', '.join(valid[:8])}, ...) or in the model's own classes ({own})")


def _space(loaded: LoadedModel, taxonomy: str, uncovered: str) -> OutputSpace:
    if uncovered not in UNCOVERED_RULES:
        raise UserError(f"TEST.uncovered_classes={uncovered!r} is not one of {', '.join(UNCOVERED_RULES)}")
    projection, notes = output_projection(loaded, taxonomy)
    if projection is None:
        name, names, colors = _model_space_names(loaded)
        return OutputSpace(name, names, colors, None, uncovered=uncovered)
    return OutputSpace(taxonomy, loaded.catalog.class_names(taxonomy), loaded.catalog.class_colors(taxonomy), projection,
                       uncovered=uncovered, notes=notes)


def evaluation_space(loaded: LoadedModel, dataset: str, output_taxonomy: str | None = None, uncovered: str = "drop") -> OutputSpace:
    """Where predictions for ``dataset``'s ground truth are scored (see the module docstring).

    ``output_taxonomy`` (unset: MSeg's choice) may name ``dataset`` itself: a training dataset is then scored in
    its own ids (its classes receive the model's probabilities by :func:`output_projection`), not in the model's
    taxonomy over its classes.
    """
    role = loaded.catalog.taxonomy(dataset).role
    if output_taxonomy is not None and output_taxonomy != dataset:
        raise UserError(f"TEST.output_taxonomy={output_taxonomy!r} but the dataset is {dataset!r}: mseg-test scores in the "
                        f"dataset's own taxonomy (output_taxonomy={dataset}) or, unset, as MSeg does")
    if role not in ("test", "train"):
        raise UserError(f"cannot evaluate on taxonomy {dataset!r} (role {role!r}); evaluate on a test or training dataset")
    if loaded.model_taxonomy == "oracle" or role == "test" or output_taxonomy == dataset:
        return _space(loaded, dataset, uncovered)
    conv = _converter(loaded, [dataset], [])
    name, names, colors = _model_space_names(loaded)
    return OutputSpace(name, names, colors, None, converter=conv, label_dataset=dataset, valid_classes=conv.dataset_universal_ids(dataset))


def display_space(loaded: LoadedModel, output_taxonomy: str | None, uncovered: str = "drop") -> OutputSpace:
    """The demo's label space: the model's own classes, or any test or training taxonomy (:func:`output_projection`)."""
    if output_taxonomy is None:
        return _space(loaded, _model_space_names(loaded)[0], uncovered)
    return _space(loaded, output_taxonomy, uncovered)


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 when every id and the ignore id fit, else uint16 (naive: 316 classes)."""
    return np.dtype(np.uint8) if num_classes <= IGNORE_INDEX else np.dtype(np.uint16)
