"""Does rare-class sampling teach the demo world's rarest class? guard_rail, with and without DATA.rare_class_sampling.

In the SYNTHETIC demo world only mapillary-public65 labels guard rails (`Guard Rail`); ADE20K calls them `fence` and
Cityscapes leaves them unlabeled, so under one-hot training the class is rare and contradicted. Each arm trains the
demo (config/train/demo.yaml: hrnet_w18_small, 600 iterations, or demo_partial.yaml for the partial-label loss) with
the same seed, data and initial weights, with or without RCS, and is evaluated on the val split of
mapillary-public65-relabeled (the same images as mapillary-public65 val, fine truth, universal classes): guard_rail's
IoU, and fence's (its neighbour) and the mIoU as a check that nothing else broke. It also counts, over the run's
whole training stream, the crops that hold guard-rail pixels (read from the loader, no model).

  python benchmarks/rare_class_guard_rail.py [--arms ce ce+rcs] [--seeds 0] [--iters 600] [--out output/rare_class_guard_rail] [--reuse]

Prints JSON on stdout (the tools' own output goes to stderr; also written to <out>/results.json). One arm takes ~5 minutes on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATASETS = ["cityscapes-19", "ade20k-150", "mapillary-public65"]
EVAL_DATASET = "mapillary-public65-relabeled"
ARMS = {  # name: (config, rare-class sampling)
    "ce": ("demo.yaml", False),
    "ce+rcs": ("demo.yaml", True),
    "partial": ("demo_partial.yaml", False),
    "partial+rcs": ("demo_partial.yaml", True),
}
# DAFormer's 3000 pixels of a 1024 x 2048 image is 0.14% of it; the demo's images have ~25k-33k pixels
DEMO_MIN_PIXELS = 32


def rcs_overrides(on: bool, temperature: float) -> list[str]:
    return [f"rare_class_sampling={on}", f"rare_class_temperature={temperature}", f"rare_class_min_pixels={DEMO_MIN_PIXELS}"]


def guard_rail_crops(config: Path, overrides: list[str], iters: int) -> dict:
    """How many crops of the training stream hold guard-rail pixels (the loader alone, as the run builds it)."""
    from mseg_semantic.config import load_config
    from mseg_semantic.data import build_train_loader
    from mseg_semantic.training.setup import resolve_run

    cfg = load_config(config, overrides)
    setup = resolve_run(cfg)
    loader = build_train_loader(cfg, setup.datasets, setup.converter, catalog=setup.catalog)
    guard_rail = setup.converter.name_to_id["guard_rail"]
    codes = [code for code, members in enumerate(setup.converter.label_sets.members) if guard_rail in members]
    iterator = iter(loader)
    crops = holding = holding_definite = 0
    for _ in range(iters):
        labels = next(iterator)["label"].long()
        crops += labels.shape[0]
        holding += int(sum(bool(sum((row == c).any() for c in codes)) for row in labels))
        holding_definite += int(sum(bool((row == guard_rail).any()) for row in labels))
    return {"crops": crops, "holding_guard_rail_or_its_set": holding, "holding_guard_rail_label": holding_definite}


def val_images(data_root: str) -> int:
    from mseg_semantic.data.lists import locate_and_read
    from mseg_semantic.taxonomy import Catalog

    return len(locate_and_read(Catalog(data_root=Path(data_root)), EVAL_DATASET, "val")[1])


def run_arms(args: argparse.Namespace, evaluate, per_class, train_main) -> list[dict]:
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            config_name, rcs = ARMS[arm]
            config = REPO / "config" / "train" / config_name
            output_dir = args.out / f"{arm}-seed{seed}"
            overrides = [f"output_dir={output_dir}", f"max_iters={args.iters}", f"data_root={args.data_root}", f"seed={seed}",
                         "tensorboard=False", *rcs_overrides(rcs, args.temperature)]
            arm_started = time.perf_counter()
            if args.reuse and (output_dir / "model_final.pth").is_file():
                train_s = None  # trained by an earlier call: evaluated again only
            else:
                if train_main(["--config", str(config), *overrides]) != 0:
                    raise SystemExit(f"training {arm} (seed {seed}) failed")
                train_s = round(time.perf_counter() - arm_started, 1)
            metrics = evaluate(output_dir / "model_final.pth", EVAL_DATASET, output_dir / "eval", args.data_root)
            classes = per_class(metrics)
            runs.append({
                "arm": arm, "seed": seed, "config": f"config/train/{config_name}", "rare_class_sampling": rcs,
                "guard_rail_iou": classes["guard_rail"]["iou"], "fence_iou": classes["fence"]["iou"],
                "guard_rail_gt_pixels": classes["guard_rail"]["gt_pixels"], "guard_rail_pred_pixels": classes["guard_rail"]["pred_pixels"],
                "miou": metrics["miou"], "train_s": train_s,
                "training_stream": guard_rail_crops(config, overrides, args.iters),
            })
            print(json.dumps(runs[-1]), flush=True)  # stdout is stderr here
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["ce", "ce+rcs"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("output/rare_class_guard_rail"))
    parser.add_argument("--data-root", default="output/demo_data")
    parser.add_argument("--reuse", action="store_true", help="an arm whose model_final.pth exists is evaluated, not trained again")
    args = parser.parse_args(argv)
    from partial_label_experiment import evaluate, per_class

    from mseg_semantic.atomic import atomic_write_json
    from mseg_semantic.tool.train import main as train_main

    os.chdir(REPO)
    started, load_before = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    with contextlib.redirect_stdout(sys.stderr):  # the tools' own prints: stdout carries the JSON only
        runs = run_arms(args, evaluate, per_class, train_main)
    result = {
        "what": "guard_rail IoU on mapillary-public65 val (fine truth of mapillary-public65-relabeled, universal classes), "
                "demo world (SYNTHETIC), hrnet_w18_small, with and without DATA.rare_class_sampling",
        "iters": args.iters, "temperature": args.temperature, "min_pixels": DEMO_MIN_PIXELS, "eval_dataset": EVAL_DATASET,
        "val_images": val_images(args.data_root),
        "runs": runs, "wall_s": round(time.perf_counter() - started, 1),
        "load": {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()},
        "threads": "1 intra-op thread per process (the demo's cpu_threads), 1 loader worker",
    }
    atomic_write_json(args.out / "results.json", result, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
