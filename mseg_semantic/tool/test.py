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

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from mseg_semantic.config import Config, ConfigError, load_config

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
    from mseg_semantic.evaluation.builders import build_inference_settings, load_model_from_config
    from mseg_semantic.evaluation.evaluate import evaluate_dataset, format_per_class_table
    from mseg_semantic.evaluation.model_space import pick_device
    from mseg_semantic.evaluation.zero_shot import find_missing, format_zero_shot_table, run_zero_shot, zero_shot_summary
    from mseg_semantic.atomic import atomic_write_json, atomic_write_text
    from mseg_semantic.training.distributed import init_distributed, shutdown_distributed
    from mseg_semantic.training.run import prepare_data_root

    if cfg.TRAIN.cpu_threads:
        import torch

        torch.set_num_threads(cfg.TRAIN.cpu_threads)
    info = init_distributed(cfg.Distributed.dist_backend)
    try:
        prepare_data_root(cfg, info)
        device = info.device if info.distributed else pick_device(cfg.TEST.test_device)
        benchmark = cfg.TEST.benchmark
        if benchmark not in (None, "zero_shot"):
            raise ConfigError(f"TEST.benchmark={benchmark!r}: valid values are zero_shot or unset (one dataset)")
        oracle_dataset = None if benchmark else _single_dataset(cfg)
        settings = build_inference_settings(cfg)
        loaded = load_model_from_config(cfg, device, oracle_dataset)
        label = cfg.TEST.model_name or Path(cfg.TEST.model_path).stem
        save_folder = Path(cfg.TEST.save_folder) if cfg.TEST.save_folder else default_save_folder(cfg.TEST.model_path)
        common = dict(
            split=cfg.TEST.split,
            data_root=cfg.DATA.data_root,
            dataset_roots=cfg.DATA.dataset_roots,
            dataset_lists=cfg.DATA.dataset_lists,
            save_predictions=cfg.TEST.save_predictions,
            index_start=cfg.TEST.index_start,
            index_step=cfg.TEST.index_step,
            images_per_batch=cfg.TEST.batch_size_val,
            workers=cfg.TRAIN.workers,
            model_label=label,
        )
        if benchmark is None:
            folder = run_folder(save_folder, oracle_dataset, settings.base_size, settings.scales)
            result = evaluate_dataset(loaded, oracle_dataset, settings=settings, save_folder=folder, **common)
            if not info.is_main:
                return {}
            print(format_per_class_table(result, label) if len(result.space.class_names) <= 64 else
                  f"{oracle_dataset}: mIoU {100 * result.miou:.2f} (per-class table: {folder / 'per_class.md'})")
            print(f"results: {folder / 'summary.json'}, {folder / 'per_class.md'}")
            return result.metrics.to_dict(result.space.class_names)

        def evaluate(dataset: str, base_size: int) -> float:
            folder = run_folder(save_folder, dataset, base_size, settings.scales)
            result = evaluate_dataset(loaded, dataset, settings=replace(settings, base_size=base_size), save_folder=folder, **common)
            if info.is_main:
                print(f"{dataset} @ base size {base_size}: mIoU {100 * result.miou:.2f} ({folder / 'summary.json'})", flush=True)
            return result.miou

        def missing(dataset: str) -> str | None:
            return find_missing(dataset, cfg.TEST.split, cfg.DATA.data_root, cfg.DATA.dataset_roots, cfg.DATA.dataset_lists)

        entries = run_zero_shot(evaluate, cfg.TEST.benchmark_datasets, cfg.TEST.benchmark_base_sizes, missing)
        if not info.is_main:
            return {}
        table = format_zero_shot_table(label, entries)
        summary = zero_shot_summary(label, entries, cfg.TEST.split, extra={
            "model_path": cfg.TEST.model_path,
            "model_taxonomy": loaded.taxonomy,
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
    parser = argparse.ArgumentParser(
        prog="mseg-test",
        description="Evaluate a segmentation checkpoint on one dataset (dataset=NAME) or run the zero-shot benchmark (benchmark=zero_shot).",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. config/test/default_config_360_ss.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model_path=m.pth dataset=camvid-11 base_size=720")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"mseg-test: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
