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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mseg_semantic.errors import UserError
from mseg_semantic.model import WeightsFileError, build_model, load_weights
from mseg_semantic.model.loading import CLASSIFIER_PREFIX, guess_variant, read_state_dict
from mseg_semantic.taxonomy import (
    IGNORE_INDEX,
    MODEL_TAXONOMIES,
    NUM_UNIVERSAL_CLASSES,
    UNRELABELED_TRAIN_DATASETS,
    Projection,
    build_taxonomy_converter,
    get_taxonomy,
    load_class_colors,
    load_class_names,
)

__all__ = ["LoadedModel", "OutputSpace", "display_space", "evaluation_space", "load_model_for_inference", "load_model_from_config", "pick_device"]

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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


def _expected_classes(model_taxonomy: str, train_datasets: list[str] | None) -> int | None:
    if model_taxonomy == "universal":
        return NUM_UNIVERSAL_CLASSES
    if model_taxonomy == "naive":
        return len(load_class_names("naive")) if not train_datasets else None
    if model_taxonomy == "oracle" and train_datasets and len(train_datasets) == 1:
        return len(load_class_names(train_datasets[0]))
    return None


def load_model_for_inference(
    path: str | Path,
    device: torch.device,
    model_name: str | None = None,
    model_taxonomy: str | None = None,
    oracle_dataset: str | None = None,
) -> LoadedModel:
    """Build the checkpoint's model and load it. ``model_name`` / ``model_taxonomy`` apply only when the file has
    no meta (MSeg's releases; a ``model_taxonomy`` that contradicts the meta is an error); ``oracle_dataset`` names
    the dataset of an oracle checkpoint without meta."""
    path = Path(path)
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
    expected = _expected_classes(space, train_datasets if space != "universal" else None)
    if expected is not None and expected != num_classes:
        raise UserError(
            f"{path}: the classifier has {num_classes} outputs but a {space} model"
            f"{' of ' + train_datasets[0] if space == 'oracle' else ''} has {expected}; "
            f"set TEST.model_taxonomy to the model taxonomy the checkpoint was trained in"
        )
    model = build_model(name, num_classes)
    load_weights(model, path, log=False, contents=(state, kind, meta))
    model.to(device).eval()
    return LoadedModel(model, str(path), name, space, num_classes, train_datasets, meta)


def load_model_from_config(cfg: Any, device: torch.device, oracle_dataset: str | None = None) -> LoadedModel:
    """The checkpoint at ``TEST.model_path`` on ``device``; ``TRAIN.model`` / ``TEST.model_taxonomy`` serve
    checkpoints without meta, ``oracle_dataset`` an oracle checkpoint without meta."""
    if not cfg.TEST.model_path:
        raise UserError("TEST.model_path is not set: pass model_path=PATH/TO/model_final.pth")
    return load_model_for_inference(cfg.TEST.model_path, device, model_name=cfg.TRAIN.model,
                                    model_taxonomy=cfg.TEST.model_taxonomy, oracle_dataset=oracle_dataset)


def _model_space_names(loaded: LoadedModel) -> tuple[str, list[str], np.ndarray]:
    if loaded.model_taxonomy == "universal":
        return "universal", load_class_names("universal"), load_class_colors("universal")
    if loaded.model_taxonomy == "naive":
        return "naive", load_class_names("naive"), load_class_colors("naive")
    dataset = loaded.train_datasets[0]
    return dataset, load_class_names(dataset), load_class_colors(dataset)


def _converter(loaded: LoadedModel, train: list[str], test: list[str]):
    if loaded.model_taxonomy == "oracle":
        return build_taxonomy_converter("oracle", loaded.train_datasets, test or None)
    if loaded.model_taxonomy == "naive":
        return build_taxonomy_converter("naive", loaded.train_datasets or UNRELABELED_TRAIN_DATASETS, test)
    return build_taxonomy_converter("universal", train, test)


def evaluation_space(loaded: LoadedModel, dataset: str) -> OutputSpace:
    """Where predictions for ``dataset``'s ground truth are scored (see the module docstring)."""
    role = get_taxonomy(dataset).role
    if loaded.model_taxonomy == "oracle":
        own = loaded.train_datasets[0]
        if dataset == own:
            return OutputSpace(dataset, load_class_names(dataset), load_class_colors(dataset), None)
        conv = _converter(loaded, [own], [dataset])  # raises unless the classes are the same
        return OutputSpace(dataset, load_class_names(dataset), load_class_colors(dataset), conv.projection(dataset))
    if role == "test":
        conv = _converter(loaded, [], [dataset])
        return OutputSpace(dataset, load_class_names(dataset), load_class_colors(dataset), conv.projection(dataset))
    if role == "train":
        conv = _converter(loaded, [dataset], [])
        name, names, colors = _model_space_names(loaded)
        return OutputSpace(name, names, colors, None, converter=conv, label_dataset=dataset, valid_classes=conv.dataset_universal_ids(dataset))
    raise UserError(f"cannot evaluate on taxonomy {dataset!r} (role {role!r}); evaluate on a test or training dataset")


def display_space(loaded: LoadedModel, output_taxonomy: str | None) -> OutputSpace:
    """The demo's label space: the model's own classes, or a test taxonomy the probabilities are summed into."""
    name, names, colors = _model_space_names(loaded)
    if output_taxonomy is None or output_taxonomy == name:
        return OutputSpace(name, names, colors, None)
    role = get_taxonomy(output_taxonomy).role
    if role != "test" and loaded.model_taxonomy != "naive":
        raise UserError(
            f"TEST.output_taxonomy={output_taxonomy!r} is a {role} taxonomy: a {loaded.model_taxonomy} model's predictions "
            f"can be shown in its own classes ({name}) or summed into a test taxonomy; leave output_taxonomy unset "
            f"or use one of the test datasets"
        )
    conv = _converter(loaded, [], [output_taxonomy])
    return OutputSpace(output_taxonomy, load_class_names(output_taxonomy), load_class_colors(output_taxonomy), conv.projection(output_taxonomy))


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 when every id and the ignore id fit, else uint16 (naive: 316 classes)."""
    return np.dtype(np.uint8) if num_classes <= IGNORE_INDEX else np.dtype(np.uint16)
