"""The evaluation orchestrator (``mseg-test``): one dataset, or MSeg's zero-shot benchmark, from a config.

One dataset: ``<save_folder>/<dataset>/<base_size>/<ss|ms>/{summary.json, per_class.md, per_class_iou.png,
confusion.png, predictions/}``. Benchmark: the same per dataset and base size, plus
``<save_folder>/zero_shot.{md,json,png}`` (MSeg's formula; the other one as a second table); the table is printed.
Under torchrun the images are split over the ranks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mseg_semantic.atomic import atomic_write_json, atomic_write_text
from mseg_semantic.config import Config, ConfigError
from mseg_semantic.errors import did_you_mean
from mseg_semantic.data import demo_world
from mseg_semantic.distributed import DistInfo, init_distributed, shutdown_distributed
from mseg_semantic.evaluation.evaluate import EvalData, OutputOptions, evaluate_dataset, format_per_class_table
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings
from mseg_semantic.evaluation.model_space import LoadedModel, describe_model_path, load_model_from_config, pick_device
from mseg_semantic.evaluation.visualize import write_png
from mseg_semantic.evaluation.zero_shot import format_zero_shot_table, ordered, run_zero_shot, zero_shot_figure, zero_shot_summary
from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS, Catalog

__all__ = ["default_save_folder", "describe_inference", "run_evaluation", "run_folder"]


def default_save_folder(model_path: str) -> Path:
    path = Path(model_path)
    return path.parent / f"{path.stem}_eval"


def run_folder(save_folder: Path, dataset: str, base_size: int | None, scales) -> Path:
    """MSeg's layout: one folder per dataset, base size and single/multi-scale."""
    return save_folder / dataset / (str(base_size) if base_size is not None else "native") / ("ms" if len(scales) > 1 else "ss")


def describe_inference(cfg: Config) -> list[str]:
    """What an inference tool would do with ``cfg`` (``--print-config``), after the checks it would make first: the
    user taxonomy files and tables, the output taxonomy, the inference settings, the device and the model's name."""
    catalog = Catalog.from_config(cfg)
    t = cfg.TEST
    if t.output_taxonomy and t.output_taxonomy not in catalog.taxonomy_names():
        raise ConfigError(f"TEST.output_taxonomy={t.output_taxonomy!r} is not a known taxonomy{did_you_mean(t.output_taxonomy, catalog.taxonomy_names())} "
                          f"(a user taxonomy's file goes in DATA.taxonomy_files)")
    settings = InferenceSettings.from_config(t)
    device = pick_device(t.test_device)
    settings = settings.for_device(device)
    window = f"{settings.crop_h} x {settings.crop_w} windows" if settings.mode == "sliding" else "whole images"
    return [describe_model_path(t.model_path),
            f"inference: short side {settings.base_size or 'as is'}, scales {list(settings.scales)}, {window}, "
            f"flip {settings.flip}, {settings.precision} on {device}, {t.batch_size_val} image(s) per call"]


def _single_dataset(cfg: Config) -> str:
    dataset = cfg.DATA.dataset
    if isinstance(dataset, list):
        if len(dataset) != 1:
            raise ConfigError(f"DATA.dataset={dataset}: mseg-test evaluates one dataset (dataset=NAME), or use benchmark=zero_shot")
        dataset = dataset[0]
    if not dataset:
        raise ConfigError("no dataset to evaluate: pass dataset=NAME (e.g. dataset=camvid-11) or benchmark=zero_shot")
    return dataset


@dataclass
class _Evaluation:
    """What every dataset of one mseg-test call shares."""

    cfg: Config
    info: DistInfo
    loaded: LoadedModel
    engine: InferenceModel
    settings: InferenceSettings
    data: EvalData
    outputs: OutputOptions
    save_folder: Path
    label: str

    def evaluate(self, dataset: str, base_size: int | None):
        settings = self.settings if base_size is None else replace(self.settings, base_size=base_size)
        folder = run_folder(self.save_folder, dataset, settings.base_size, settings.scales)
        # progress: a bar on a terminal, lines in a log file (evaluation/progress.py)
        result = evaluate_dataset(self.loaded, dataset, settings, self.data, folder, self.outputs, True,
                                  self.label, self.engine, self.info)
        return folder, result


def run_evaluation(cfg: Config) -> dict:
    """Evaluate as the config says; returns the JSON summary (rank 0) or {}."""
    if cfg.TRAIN.cpu_threads:
        torch.set_num_threads(cfg.TRAIN.cpu_threads)
    catalog = Catalog.from_config(cfg)
    benchmark = cfg.TEST.benchmark
    if benchmark and cfg.TEST.output_taxonomy:
        raise ConfigError(f"TEST.output_taxonomy={cfg.TEST.output_taxonomy!r} with benchmark=zero_shot: the benchmark scores each "
                          f"dataset in its own taxonomy as MSeg does; unset output_taxonomy")
    datasets = ordered(cfg.TEST.benchmark_datasets or list(ZERO_SHOT_DATASETS))
    info = init_distributed(cfg.Distributed.dist_backend)
    finished = False
    try:
        demo_world.write_if_asked(cfg.DATA, info)
        if benchmark:  # fail before loading the model when nothing could be evaluated
            reasons = {d: catalog.list_file_missing(d, cfg.TEST.split) for d in datasets}
            if all(reasons.values()):
                raise ConfigError(f"benchmark=zero_shot: none of the {len(datasets)} datasets is on disk "
                                  f"({'; '.join(f'{d}: {r}' for d, r in reasons.items())}); set DATA.data_root (or MSEG_DATA_ROOT), "
                                  f"DATA.dataset_roots or TEST.benchmark_datasets")
        device = info.device if info.distributed else pick_device(cfg.TEST.test_device)
        oracle_dataset = None if benchmark else _single_dataset(cfg)
        settings = InferenceSettings.from_config(cfg.TEST)
        loaded = load_model_from_config(cfg, device, oracle_dataset, catalog)
        run = _Evaluation(cfg, info, loaded, InferenceModel(loaded.model, settings, inplace=True), settings, EvalData.from_config(cfg, catalog),
                          OutputOptions.from_config(cfg.TEST),
                          Path(cfg.TEST.save_folder) if cfg.TEST.save_folder else default_save_folder(cfg.TEST.model_path),
                          cfg.TEST.model_name or Path(cfg.TEST.model_path).stem)
        if benchmark is None:
            summary = _one_dataset(run, oracle_dataset)
        else:
            summary = _zero_shot(run, datasets, lambda d: catalog.list_file_missing(d, cfg.TEST.split))
        finished = True
        return summary
    finally:
        shutdown_distributed(info, finished=finished)


def _one_dataset(run: _Evaluation, dataset: str) -> dict:
    folder, result = run.evaluate(dataset, None)
    if not run.info.is_main:
        return {}
    m = result.metrics
    print(format_per_class_table(result, run.label) if len(result.space.class_names) <= 64 else
          f"{dataset}: mIoU {100 * m.miou_mseg:.2f} (MSeg's formula), {100 * m.miou:.2f} (absent classes left out)"
          f"{'; PARTIAL: ' + result.partial if result.partial else ''} (per-class table: {folder / 'per_class.md'})")
    print(f"results: {folder / 'summary.json'}, {folder / 'per_class.md'}")
    return m.to_dict(result.space.class_names)


def _zero_shot(run: _Evaluation, datasets: list[str], missing) -> dict:
    partial: list[str] = []

    def evaluate(dataset: str, base_size: int) -> dict[str, float]:
        folder, result = run.evaluate(dataset, base_size)
        if result.partial and not partial:
            partial.append(f"each list evaluated from image {run.data.index_start}, {run.data.index_step or 'all'} images "
                           f"(TEST.index_start={run.data.index_start}, index_step={run.data.index_step})")
        if run.info.is_main:
            m = result.metrics
            print(f"{dataset} @ base size {base_size}: mIoU {100 * m.miou_mseg:.2f} (MSeg's formula), {100 * m.miou:.2f} "
                  f"(absent classes left out){' PARTIAL' if result.partial else ''} ({folder / 'summary.json'})", flush=True)
        return {"miou_mseg": result.metrics.miou_mseg, "miou": result.metrics.miou}

    cfg, settings = run.cfg, run.settings
    entries = run_zero_shot(evaluate, datasets, cfg.TEST.benchmark_base_sizes, missing)
    if not run.info.is_main:
        return {}
    note = partial[0] if partial else None
    table = format_zero_shot_table(run.label, entries, note)
    summary: dict[str, Any] = zero_shot_summary(run.label, entries, cfg.TEST.split, partial=note, extra={
        "model_path": cfg.TEST.model_path, "model_taxonomy": run.loaded.model_taxonomy, "base_sizes": list(cfg.TEST.benchmark_base_sizes),
        "scales": list(settings.scales), "flip": settings.flip, "crop": [settings.crop_h, settings.crop_w],
        "precision": run.engine.settings.precision,
    })
    folder = run.save_folder
    atomic_write_text(folder / "zero_shot.md", table)
    atomic_write_json(folder / "zero_shot.json", summary)
    files = [folder / "zero_shot.md", folder / "zero_shot.json"]
    if run.outputs.figures:
        write_png(folder / "zero_shot.png", zero_shot_figure(run.label, entries, note), rgb=True)
        files.append(folder / "zero_shot.png")
    print()
    print(table, end="")
    print(f"\ntable: {', '.join(map(str, files))}")
    return summary


def run_demo_from_config(cfg: Config, unreadable: list[str] | None = None) -> list[Path]:
    """``mseg-demo``: segment an image, a folder of images or a video (:func:`mseg_semantic.evaluation.demo.run_demo`).
    ``unreadable``: in a folder, images that cannot be read are reported on stderr (one line each), appended to it
    and skipped, instead of stopping the run."""
    from mseg_semantic.evaluation.api import Segmenter
    from mseg_semantic.evaluation.demo import run_demo

    t = cfg.TEST
    if not t.input:
        raise ConfigError("no demo input: pass input=IMAGE | FOLDER | VIDEO")
    segmenter = Segmenter.from_config(cfg)  # the Python API's model, space and settings: the same labels
    engine, space, settings = segmenter.engine, segmenter.space, segmenter.settings
    out_dir = Path(t.save_folder) if t.save_folder else Path(t.model_path).parent / f"{Path(t.model_path).stem}_demo"

    def report(error: Exception) -> None:
        print(f"mseg-demo: skipped {error}", file=sys.stderr)
        unreadable.append(str(error))

    written = run_demo(engine, space, settings, t.input, out_dir, batch_size=t.batch_size_val, progress=True,
                       confidence=t.save_confidence, probabilities=t.save_probabilities,
                       on_unreadable=report if unreadable is not None else None)
    for note in space.notes:
        print(f"{space.name}: {note}")
    print(f"{len(written)} files in {out_dir} (taxonomy {space.name})")
    return written


def run_export_from_config(cfg: Config) -> list:
    """``mseg-export``: the checkpoint as ONNX and/or TorchScript, each checked against eager PyTorch."""
    from mseg_semantic.evaluation.export import check_exportable, check_onnx, check_torchscript, export_onnx, export_torchscript

    t = cfg.TEST
    loaded = load_model_from_config(cfg, torch.device("cpu"), _oracle_dataset(cfg))  # an oracle of a user dataset: by class count
    check_exportable(loaded.model, t.test_h, t.test_w, t.export_dynamic)  # before any file is written
    stem = Path(t.model_path).stem
    out_dir = Path(t.save_folder) if t.save_folder else Path(t.model_path).parent
    # a different size than the example shows that dynamic axes really are dynamic
    check_shape = (2, 3, t.test_h + 8, t.test_w + 16) if t.export_dynamic else (1, 3, t.test_h, t.test_w)
    reports = []
    if t.export_format in ("onnx", "both"):
        report = export_onnx(loaded.model, out_dir / f"{stem}.onnx", t.test_h, t.test_w, dynamic=t.export_dynamic, opset=t.export_opset, dynamo=t.export_dynamo)
        report.max_abs_diff = check_onnx(loaded.model, report.path, check_shape)
        reports.append(report)
    if t.export_format in ("torchscript", "both"):
        report = export_torchscript(loaded.model, out_dir / f"{stem}.torchscript.pt", t.test_h, t.test_w)
        report.max_abs_diff = check_torchscript(loaded.model, report.path, check_shape)
        reports.append(report)
    for r in reports:
        opset = f", opset {r.opset}" if r.opset is not None else ""
        print(f"{r.format}: {r.path} ({r.exporter}{opset}, input {r.input_shape}, {loaded.num_classes} classes in the {loaded.model_taxonomy} taxonomy); "
              f"max |exported - eager| on {check_shape}: {r.max_abs_diff:.3g}")
    return reports


def _oracle_dataset(cfg: Config) -> str | None:
    """The dataset an oracle checkpoint without meta was trained on (``dataset=NAME``)."""
    return cfg.DATA.dataset if isinstance(cfg.DATA.dataset, str) else None
