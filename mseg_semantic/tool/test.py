"""mseg-test: evaluate a checkpoint on one dataset, or run MSeg's zero-shot benchmark.

    python -m mseg_semantic.tool.test --config config/test/default_config_360_ss.yaml \\
        model_path=mseg-3m.pth dataset=camvid-11 [base_size=720 scales=[0.5,1.0] save_predictions=true]
    python -m mseg_semantic.tool.test --config config/test/default_config_1080_ss.yaml \\
        model_path=mseg-3m.pth benchmark=zero_shot

One dataset: ``<save_folder>/<dataset>/<base_size>/<ss|ms>/{summary.json, per_class.md, predictions/}``.
Benchmark: the same per dataset and base size, plus ``<save_folder>/zero_shot.{md,json}``; the table is printed.
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
    from mseg_semantic.evaluation.evaluate import EvalData, evaluate_dataset, format_per_class_table
    from mseg_semantic.evaluation.inference import InferenceSettings
    from mseg_semantic.evaluation.model_space import load_model_from_config, pick_device
    from mseg_semantic.evaluation.zero_shot import find_missing, format_zero_shot_table, run_zero_shot, zero_shot_summary
    from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS
    from mseg_semantic.training.distributed import init_distributed, shutdown_distributed
    from mseg_semantic.training.run import write_demo_world_if_asked

    if cfg.TRAIN.cpu_threads:
        torch.set_num_threads(cfg.TRAIN.cpu_threads)
    info = init_distributed(cfg.Distributed.dist_backend)
    try:
        write_demo_world_if_asked(cfg, info)
        device = info.device if info.distributed else pick_device(cfg.TEST.test_device)
        benchmark = cfg.TEST.benchmark
        oracle_dataset = None if benchmark else _single_dataset(cfg)
        settings = InferenceSettings.from_config(cfg.TEST)
        loaded = load_model_from_config(cfg, device, oracle_dataset)
        label = cfg.TEST.model_name or Path(cfg.TEST.model_path).stem
        save_folder = Path(cfg.TEST.save_folder) if cfg.TEST.save_folder else default_save_folder(cfg.TEST.model_path)
        data = EvalData.from_config(cfg)
        progress = sys.stderr.isatty()
        if benchmark is None:
            folder = run_folder(save_folder, oracle_dataset, settings.base_size, settings.scales)
            result = evaluate_dataset(loaded, oracle_dataset, settings, data, folder, cfg.TEST.save_predictions, progress, label)
            if not info.is_main:
                return {}
            print(format_per_class_table(result, label) if len(result.space.class_names) <= 64 else
                  f"{oracle_dataset}: mIoU {100 * result.miou:.2f} (per-class table: {folder / 'per_class.md'})")
            print(f"results: {folder / 'summary.json'}, {folder / 'per_class.md'}")
            return result.metrics.to_dict(result.space.class_names)

        def evaluate(dataset: str, base_size: int) -> float:
            folder = run_folder(save_folder, dataset, base_size, settings.scales)
            result = evaluate_dataset(loaded, dataset, replace(settings, base_size=base_size), data, folder,
                                      cfg.TEST.save_predictions, progress, label)
            if info.is_main:
                print(f"{dataset} @ base size {base_size}: mIoU {100 * result.miou:.2f} ({folder / 'summary.json'})", flush=True)
            return result.miou

        def missing(dataset: str) -> str | None:
            return find_missing(dataset, cfg.TEST.split, cfg.DATA.data_root, cfg.DATA.dataset_roots, cfg.DATA.dataset_lists)

        datasets = cfg.TEST.benchmark_datasets or list(ZERO_SHOT_DATASETS)
        entries = run_zero_shot(evaluate, datasets, cfg.TEST.benchmark_base_sizes, missing)
        if not info.is_main:
            return {}
        table = format_zero_shot_table(label, entries)
        summary = zero_shot_summary(label, entries, cfg.TEST.split, extra={
            "model_path": cfg.TEST.model_path,
            "model_taxonomy": loaded.model_taxonomy,
            "base_sizes": list(cfg.TEST.benchmark_base_sizes),
            "scales": list(settings.scales),
            "flip": settings.flip,
            "crop": [settings.crop_h, settings.crop_w],
        })
        atomic_write_text(save_folder / "zero_shot.md", table)
        atomic_write_json(save_folder / "zero_shot.json", summary)
        print()
        print(table, end="")
        print(f"\ntable: {save_folder / 'zero_shot.md'}, {save_folder / 'zero_shot.json'}")
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
