"""Validation during training: every ``TRAIN.val_every`` iterations, score held-out lists and keep the best model.

Each validation runs the evaluation of ``mseg-test`` (batched sliding windows as the TEST keys say; a prepared copy
of the model, so the weights being trained are not touched) on every dataset of ``TRAIN.val_datasets``: a
training dataset is scored in the model's taxonomy over its own classes, a test dataset with the model's
probabilities projected into its taxonomy (:func:`~mseg_semantic.evaluation.model_space.evaluation_space`).
Under torchrun each rank evaluates every ``world_size``-th image and the confusion matrices are summed
(:func:`~mseg_semantic.evaluation.evaluate.evaluate_dataset`); every rank then holds the same numbers.

Logged (tensorboard and ``metrics.jsonl`` through the reporter's ``write_scalars``, and one log line):
``val/<dataset>/{miou, miou_mseg, pixel_acc, mean_acc}``, their means over the datasets ``val/{miou, miou_mseg,
pixel_acc}``, ``val/seconds`` and ``val/best_<metric>``. ``model_best.pth`` (the final-weights format, with the
iteration and score in its meta) is rewritten, atomically, whenever ``val/<TRAIN.val_metric>`` beats the best so
far. The best so far lives in the training parts' ``extra`` state, which every checkpoint saves and a resume
restores, so a resumed run compares against the same best as the run it continues.

With ``TRAIN.precise_bn_iters`` the validation of the last iteration waits for the re-estimated BatchNorm
statistics (:meth:`Validator.finish`), so that it scores the model that is written as ``model_final.pth``. Each
validation line then says which it is: the ones during training score BatchNorm's running statistics (after a few
hundred iterations far from the real ones: a few mIoU points where the same weights score several times more after
precise BN), the last one the re-estimated statistics; ``val/after_precise_bn`` (0 or 1) records it too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mseg_semantic.config import ConfigError
from mseg_semantic.data.lists import locate_and_read
from mseg_semantic.distributed import DistInfo
from mseg_semantic.evaluation.evaluate import EvalData, evaluate_dataset
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings
from mseg_semantic.evaluation.model_space import LoadedModel, evaluation_space, universal_taxonomy_of
from mseg_semantic.model import save_weights, unwrap_model
from mseg_semantic.model.vit_seg import deployable_state_dict
from mseg_semantic.taxonomy import Catalog

__all__ = ["BEST_NAME", "STATE_KEY", "ValidationSettings", "Validator", "build_validator"]

log = logging.getLogger("mseg_semantic.validation")

BEST_NAME = "model_best.pth"
STATE_KEY = "validation"  # where the best so far lives in TrainingParts.extra (saved in every checkpoint)
PER_DATASET = ("miou", "miou_mseg", "pixel_acc", "mean_acc")


@dataclass(frozen=True)
class ValidationSettings:
    """When and what to validate (the config's TRAIN.val_* keys)."""

    every: int  # TRAIN.val_every; 0 = never
    datasets: tuple[str, ...]  # TRAIN.val_datasets (default: the training datasets)
    images: int  # TRAIN.val_images: the first N images of each list; 0 = all
    metric: str  # TRAIN.val_metric: miou | miou_mseg | pixel_acc, averaged over the datasets

    @classmethod
    def from_config(cls, train: Mapping[str, Any], training_datasets: Sequence[str]) -> "ValidationSettings":
        names = train["val_datasets"]
        names = [names] if isinstance(names, str) else list(names or training_datasets)
        return cls(train["val_every"], tuple(dict.fromkeys(str(n) for n in names)), train["val_images"], train["val_metric"])

    @property
    def metric_name(self) -> str:
        return f"val/{self.metric}"


class Validator:
    """The training loop's hook: ``validator(iteration, stats)`` validates when ``iteration`` is due."""

    def __init__(
        self,
        settings: ValidationSettings,
        inference: InferenceSettings,
        data: EvalData,
        model: torch.nn.Module,
        meta: Mapping[str, Any],
        output_dir: Path,
        max_iters: int,
        state: dict,
        write_scalars: Callable[[int, Mapping[str, float]], None],
        info: DistInfo,
        catalog: Catalog,
        defer_last: bool = False,
    ):
        self.settings = settings
        self.inference = inference
        self.data = data
        self.model = model
        self.meta = dict(meta)
        self.output_dir = Path(output_dir)
        self.max_iters = max_iters
        self.state = state  # TrainingParts.extra: the Checkpointer saves it, a resume refills it
        self.write_scalars = write_scalars
        self.info = info  # the ranks share the images; rank 0 writes model_best.pth
        self.catalog = catalog
        self.defer_last = defer_last  # precise BN re-estimates the statistics after the last iteration
        self.after_precise_bn = False  # set by finish(): the statistics are precise BN's

    def loaded(self) -> LoadedModel:
        meta = self.meta
        return LoadedModel(unwrap_model(self.model), str(self.output_dir), meta["model"], meta["model_taxonomy"],
                           int(meta["num_classes"]), list(meta["train_datasets"]), dict(meta),
                           universal_taxonomy_of(meta, list(meta["train_datasets"]), self.catalog), self.catalog)

    def due(self, iteration: int) -> bool:
        if iteration == self.max_iters:
            return not self.defer_last
        return iteration % self.settings.every == 0

    def __call__(self, iteration: int, stats: Any = None) -> None:
        if self.due(iteration):
            self.validate(iteration)

    def finish(self) -> None:
        """The validation of the last iteration when it waited for precise BN."""
        if self.defer_last:
            self.after_precise_bn = True
            self.validate(self.max_iters)

    @property
    def best(self) -> dict | None:
        best = self.state.get(STATE_KEY)
        if best and best.get("metric") != self.settings.metric_name:
            log.info(f"TRAIN.val_metric changed from {best.get('metric')} to {self.settings.metric_name}: "
                     f"the best so far ({100 * float(best.get('value', 0.0)):.2f}) no longer counts; {BEST_NAME} is replaced by "
                     f"the next validation")
            self.state.pop(STATE_KEY)
            return None
        return best

    def validate(self, iteration: int) -> dict[str, float]:
        """Score every dataset, log the scalars, keep the best; returns the scalars (the same on every rank)."""
        started = time.perf_counter()
        loaded = self.loaded()
        with torch.random.fork_rng(devices=_cuda_devices(loaded.model)):  # validation leaves the training RNG as it was
            engine = InferenceModel(loaded.model, self.inference)  # a prepared copy: the trained weights stay as they are
            scalars: dict[str, float] = {}
            for dataset in self.settings.datasets:
                result = evaluate_dataset(loaded, dataset, self.inference, self.data, progress=False, engine=engine, info=self.info)
                for key in PER_DATASET:
                    scalars[f"val/{dataset}/{key}"] = float(getattr(result.metrics, key))
                scalars[f"val/{dataset}/bad_samples"] = float(len(result.skipped))
            del engine
        for key in ("miou", "miou_mseg", "pixel_acc"):
            values = [scalars[f"val/{d}/{key}"] for d in self.settings.datasets]
            scalars[f"val/{key}"] = float(sum(values) / len(values))
        scalars["val/seconds"] = time.perf_counter() - started
        if self.defer_last:
            scalars["val/after_precise_bn"] = float(self.after_precise_bn)
        name, value = self.settings.metric_name, scalars[self.settings.metric_name]
        best = self.best
        improved = not math.isnan(value) and (best is None or value > best["value"])
        if improved:
            best = {"metric": name, "value": value, "iteration": iteration}
            self.state[STATE_KEY] = best
            if self.info.is_main:
                meta = {**self.meta, "iteration": iteration, "val_metric": name, "val_value": value}
                save_weights(deployable_state_dict(unwrap_model(self.model)), meta, self.output_dir / BEST_NAME)  # LoRA merged
        if best is not None:
            scalars[f"val/best_{self.settings.metric}"] = best["value"]
        self.write_scalars(iteration, scalars)
        per_dataset = " ".join(f"{d}={100 * scalars[f'val/{d}/miou']:.2f}" for d in self.settings.datasets)
        best_text = f"best {100 * best['value']:.2f} at {best['iteration']}" if best else "no best yet"
        bad = int(sum(scalars[f"val/{d}/bad_samples"] for d in self.settings.datasets))
        log.info(f"validation at iteration {iteration}{self._bn_note()}: {name} {100 * value:.2f} ({best_text}{', written to ' + BEST_NAME if improved else ''}) "
                 f"| mIoU {per_dataset} | {scalars['val/seconds']:.1f} s{f' | {bad} bad sample(s) left out (named above)' if bad else ''}")
        return scalars


    def _bn_note(self) -> str:
        if not self.defer_last:
            return ""
        if self.after_precise_bn:
            return " (after precise BN: the model written as model_final.pth)"
        return " (before precise BN: BatchNorm running statistics from training, read the final validation for the model)"


def _cuda_devices(model: torch.nn.Module) -> list[int]:
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and parameter.device.type == "cuda":
        return [parameter.device.index or 0]
    return []


def build_validator(cfg: Any, model: torch.nn.Module, meta: Mapping[str, Any], state: dict, output_dir: Path, max_iters: int,
                    info: DistInfo, write_scalars: Callable[[int, Mapping[str, float]], None],
                    catalog: Catalog | None = None) -> Validator | None:
    """The validation hook a config asks for (None when ``TRAIN.val_every`` is 0). Every list and every dataset's
    scoring are checked now, so that a wrong name stops the run before the first iteration, not at the first
    validation. ``catalog``: the run's (default: the config's)."""
    if cfg.TRAIN.val_every == 0:
        return None
    catalog = catalog or Catalog.from_config(cfg)
    settings = ValidationSettings.from_config(cfg.TRAIN, meta["train_datasets"])
    # a bad validation sample is reported and left out: it must never stop a training run hours in
    data = EvalData(cfg.TEST.split, catalog, index_start=0, index_step=settings.images, images_per_batch=cfg.TEST.batch_size_val,
                    workers=0, on_bad_sample="skip")
    validator = Validator(settings, InferenceSettings.from_config(cfg.TEST), data, model, meta, output_dir, max_iters, state,
                          write_scalars, info, catalog, defer_last=cfg.TRAIN.precise_bn_iters > 0)
    loaded = validator.loaded()
    for dataset in settings.datasets:
        reason = catalog.list_file_missing(dataset, data.split)
        if reason is not None:
            raise ConfigError(f"TRAIN.val_datasets: {dataset} {data.split} list {reason}; fix DATA.data_root / dataset_lists, "
                              f"or validate other datasets (val_datasets=[...])")
        evaluation_space(loaded, dataset)  # raises when this model cannot be scored on it (e.g. an oracle of another dataset)
        _check_files_exist(catalog, dataset, data)
    return validator


def _check_files_exist(catalog: Catalog, dataset: str, data: EvalData) -> None:
    """Every file the validation will read exists (a cheap stat, before iteration 1); a file that exists but cannot
    be decoded, or holds unknown label ids, is reported and left out when its validation comes."""
    location, pairs = locate_and_read(catalog, dataset, data.split)
    chosen = pairs[: data.index_step] if data.index_step else pairs
    missing = [str(path) for pair in chosen for path in pair if not path.is_file()]
    if missing:
        raise ConfigError(f"TRAIN.val_datasets: {len(missing)} file(s) of {location.list_file} do not exist (first: {missing[0]}); "
                          f"fix the list, or validate other datasets (val_datasets=[...])")
