"""mseg-test: evaluate a checkpoint on one dataset, or run MSeg's zero-shot benchmark.

    python -m mseg_semantic.tool.test --config config/test/default_config_360_ss.yaml \\
        model_path=mseg-3m.pth dataset=camvid-11 [base_size=720 scales=[0.5,1.0] save_predictions=true]
    python -m mseg_semantic.tool.test --config config/test/default_config_1080_ss.yaml \\
        model_path=mseg-3m.pth benchmark=zero_shot

One dataset: ``<save_folder>/<dataset>/<base_size>/<ss|ms>/{summary.json, per_class.md, per_class_iou.png,
confusion.png, predictions/}``. Benchmark: the same per dataset and base size, plus
``<save_folder>/zero_shot.{md,json,png}`` (MSeg's formula; the other one as a second table); the table is printed.
Under torchrun the images are split over the ranks.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from mseg_semantic.config import Config, ConfigError
from mseg_semantic.tool.cli import config_tool

__all__ = ["main", "run", "default_save_folder"]


def default_save_folder(model_path: str) -> Path:
    path = Path(model_path)
    return path.parent / f"{path.stem}_eval"


def run_folder(save_folder: Path, dataset: str, base_size: int | None, scales) -> Path:
    """MSeg's layout: one folder per dataset, base size and single/multi-scale."""
    return save_folder / dataset / (str(base_size) if base_size is not None else "native") / ("ms" if len(scales) > 1 else "ss")


def _single_dataset(cfg: Config) -> str:
    dataset = cfg.DATA.dataset
    if isinstance(dataset, list):
        if len(dataset) != 1:
            raise ConfigError(f"DATA.dataset={dataset}: mseg-test evaluates one dataset (dataset=NAME), or use benchmark=zero_shot")
        dataset = dataset[0]
    if not dataset:
        raise ConfigError("no dataset to evaluate: pass dataset=NAME (e.g. dataset=camvid-11) or benchmark=zero_shot")
    return dataset


def run(cfg: Config) -> dict:
    """Evaluate as the config says; returns the JSON summary (rank 0) or {}."""
    import torch

    from mseg_semantic.atomic import atomic_write_json, atomic_write_text
    from mseg_semantic.evaluation.evaluate import EvalData, OutputOptions, evaluate_dataset, format_per_class_table
    from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings
    from mseg_semantic.evaluation.model_space import load_model_from_config, pick_device
    from mseg_semantic.taxonomy import add_taxonomy_files
    from mseg_semantic.evaluation.visualize import write_png
    from mseg_semantic.evaluation.zero_shot import (
        find_missing,
        format_zero_shot_table,
        ordered,
        run_zero_shot,
        zero_shot_figure,
        zero_shot_summary,
    )
    from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS
    from mseg_semantic.training.distributed import init_distributed, shutdown_distributed
    from mseg_semantic.training.run import write_demo_world_if_asked

    if cfg.TRAIN.cpu_threads:
        torch.set_num_threads(cfg.TRAIN.cpu_threads)
    add_taxonomy_files(cfg.DATA.taxonomy_files)
    benchmark = cfg.TEST.benchmark
    if benchmark and cfg.TEST.output_taxonomy:
        raise ConfigError(f"TEST.output_taxonomy={cfg.TEST.output_taxonomy!r} with benchmark=zero_shot: the benchmark scores each "
                          f"dataset in its own taxonomy as MSeg does; unset output_taxonomy")
    info = init_distributed(cfg.Distributed.dist_backend)
    try:
        write_demo_world_if_asked(cfg, info)
        device = info.device if info.distributed else pick_device(cfg.TEST.test_device)

        def missing(dataset: str) -> str | None:
            return find_missing(dataset, cfg.TEST.split, cfg.DATA.data_root, cfg.DATA.dataset_roots, cfg.DATA.dataset_lists)

        datasets = ordered(cfg.TEST.benchmark_datasets or list(ZERO_SHOT_DATASETS))
        if benchmark:  # fail before loading the model when nothing could be evaluated
            reasons = {d: missing(d) for d in datasets}
            if all(reasons.values()):
                raise ConfigError(f"benchmark=zero_shot: none of the {len(datasets)} datasets is on disk "
                                  f"({'; '.join(f'{d}: {r}' for d, r in reasons.items())}); set DATA.data_root (or MSEG_DATA_ROOT), "
                                  f"DATA.dataset_roots or TEST.benchmark_datasets")
        oracle_dataset = None if benchmark else _single_dataset(cfg)
        settings = InferenceSettings.from_config(cfg.TEST)
        loaded = load_model_from_config(cfg, device, oracle_dataset)
        engine = InferenceModel(loaded.model, settings, inplace=True)  # prepared once for every run below
        label = cfg.TEST.model_name or Path(cfg.TEST.model_path).stem
        save_folder = Path(cfg.TEST.save_folder) if cfg.TEST.save_folder else default_save_folder(cfg.TEST.model_path)
        data = EvalData.from_config(cfg)
        outputs = OutputOptions.from_config(cfg.TEST)
        progress = sys.stderr.isatty()
        if benchmark is None:
            folder = run_folder(save_folder, oracle_dataset, settings.base_size, settings.scales)
            result = evaluate_dataset(loaded, oracle_dataset, settings, data, folder, outputs, progress, label, engine)
            if not info.is_main:
                return {}
            m = result.metrics
            print(format_per_class_table(result, label) if len(result.space.class_names) <= 64 else
                  f"{oracle_dataset}: mIoU {100 * m.miou_mseg:.2f} (MSeg's formula), {100 * m.miou:.2f} (absent classes left out)"
                  f"{'; PARTIAL: ' + result.partial if result.partial else ''} (per-class table: {folder / 'per_class.md'})")
            print(f"results: {folder / 'summary.json'}, {folder / 'per_class.md'}")
            return m.to_dict(result.space.class_names)

        partial: list[str] = []

        def evaluate(dataset: str, base_size: int) -> dict[str, float]:
            folder = run_folder(save_folder, dataset, base_size, settings.scales)
            result = evaluate_dataset(loaded, dataset, replace(settings, base_size=base_size), data, folder, outputs, progress, label, engine)
            if result.partial and not partial:
                partial.append(f"each list evaluated from image {data.index_start}, "
                               f"{data.index_step or 'all'} images (TEST.index_start={data.index_start}, index_step={data.index_step})")
            if info.is_main:
                m = result.metrics
                print(f"{dataset} @ base size {base_size}: mIoU {100 * m.miou_mseg:.2f} (MSeg's formula), {100 * m.miou:.2f} "
                      f"(absent classes left out){' PARTIAL' if result.partial else ''} ({folder / 'summary.json'})", flush=True)
            return {"miou_mseg": result.metrics.miou_mseg, "miou": result.metrics.miou}

        entries = run_zero_shot(evaluate, datasets, cfg.TEST.benchmark_base_sizes, missing)
        if not info.is_main:
            return {}
        note = partial[0] if partial else None
        table = format_zero_shot_table(label, entries, note)
        summary = zero_shot_summary(label, entries, cfg.TEST.split, partial=note, extra={
            "model_path": cfg.TEST.model_path,
            "model_taxonomy": loaded.model_taxonomy,
            "base_sizes": list(cfg.TEST.benchmark_base_sizes),
            "scales": list(settings.scales),
            "flip": settings.flip,
            "crop": [settings.crop_h, settings.crop_w],
            "precision": engine.settings.precision,
        })
        atomic_write_text(save_folder / "zero_shot.md", table)
        atomic_write_json(save_folder / "zero_shot.json", summary)
        files = f"{save_folder / 'zero_shot.md'}, {save_folder / 'zero_shot.json'}"
        if outputs.figures:
            write_png(save_folder / "zero_shot.png", zero_shot_figure(label, entries, note), rgb=True)
            files += f", {save_folder / 'zero_shot.png'}"
        print()
        print(table, end="")
        print(f"\ntable: {files}")
        return summary
    finally:
        shutdown_distributed(info)


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-test",
        "Evaluate a segmentation checkpoint on one dataset (dataset=NAME) or run the zero-shot benchmark (benchmark=zero_shot).",
        "config/test/default_config_360_ss.yaml",
        "key=value overrides, e.g. model_path=m.pth dataset=camvid-11 base_size=720",
        run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
