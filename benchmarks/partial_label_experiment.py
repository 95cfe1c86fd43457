"""Does partial-label training close the gap relabeling closes? Three models on the SYNTHETIC demo world, same budget.

  A  unrelabeled datasets + one-hot cross-entropy   (MSeg's unrelabeled model; config/train/demo.yaml, = `make demo`)
  B  unrelabeled datasets + partial_label loss      (config/train/demo_partial.yaml)
  C  relabeled datasets + one-hot cross-entropy     (the same images with the fine truth: what relabeling buys)

The three see the same images, crops and initial weights (same seed); only the labels and the loss differ. Each is
evaluated (1) zero-shot on the held-out camvid-11 exactly as `make demo` does (config/test/demo.yaml), and (2) in the
universal taxonomy on the val splits of the three relabeled datasets (the fine truth), pooled, for the classes the
datasets disagree on (riders, guard rails) and their neighbours.

  python benchmarks/partial_label_experiment.py [--iters 600] [--seed 0] [--out output/partial_label_experiment]

Writes <out>/results.json and <out>/results.md and prints the table (about 12 minutes on an idle 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNRELABELED = ["cityscapes-19", "ade20k-150", "mapillary-public65"]
RELABELED = [name + "-relabeled" for name in UNRELABELED]
RUNS = {
    "A": ("unrelabeled + one-hot CE", "demo.yaml", UNRELABELED),
    "B": ("unrelabeled + partial_label", "demo_partial.yaml", UNRELABELED),
    "C": ("relabeled + one-hot CE", "demo.yaml", RELABELED),
}
# the zero-shot classes the rider conflict touches, and the universal classes of the conflicts and their neighbours
CAMVID_AFFECTED = ["Pedestrian", "Bicyclist", "Fence"]
UNIVERSAL_AFFECTED = ["person", "bicyclist", "motorcyclist", "bicycle", "motorcycle", "fence", "guard_rail"]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train(run: str, args: argparse.Namespace) -> Path:
    from mseg_semantic.tool.train import main as train_main

    _, config, datasets = RUNS[run]
    output_dir = args.out / run
    overrides = [f"output_dir={output_dir}", f"max_iters={args.iters}", f"dataset=[{','.join(datasets)}]",
                 f"data_root={args.data_root}", f"seed={args.seed}", "tensorboard=False"]
    code = train_main(["--config", str(REPO / "config" / "train" / config), *overrides])
    if code != 0:
        raise SystemExit(f"training {run} failed with exit code {code}")
    return output_dir / "model_final.pth"


def evaluate(model_path: Path, dataset: str, save_folder: Path, data_root: str) -> dict:
    """The model on one dataset's val split with the demo's evaluation settings (as `make demo`'s zero-shot run)."""
    from mseg_semantic.config import load_config
    from mseg_semantic.tool.test import run as test_run

    cfg = load_config(REPO / "config" / "test" / "demo.yaml", [
        f"model_path={model_path}", f"save_folder={save_folder}", f"data_root={data_root}", "benchmark=null",
        f"dataset={dataset}", "base_size=128"])
    return test_run(cfg)


def per_class(metrics: dict) -> dict[str, dict]:
    return {c["name"]: c for c in metrics["per_class"]}


def pooled_iou(results: list[dict], name: str) -> float | None:
    """IoU of one class over several evaluations: summed intersections over summed unions (from IoU, GT and
    predicted pixels: I = IoU (G + P) / (1 + IoU))."""
    intersection = union = 0.0
    for metrics in results:
        c = per_class(metrics).get(name)
        if c is None or c["status"] == "excluded":
            continue
        g, p, iou = c["gt_pixels"], c["pred_pixels"], c["iou"] or 0.0
        i = iou * (g + p) / (1.0 + iou)
        intersection, union = intersection + i, union + g + p - i
    return intersection / union if union > 0 else None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    head = ["run", "camvid-11 mIoU", *(f"camvid {c}" for c in CAMVID_AFFECTED), *UNIVERSAL_AFFECTED, "affected mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, r in results["runs"].items():
        cells = [f"{run}: {r['what']}", percent(r["camvid"]["miou"]), *(percent(r["camvid"]["affected"][c]) for c in CAMVID_AFFECTED),
                 *(percent(r["universal"][c]) for c in UNIVERSAL_AFFECTED), percent(r["universal_affected_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    load = results["load"]
    lines.append("")
    lines.append(f"camvid-11: zero-shot, val (24 images), as `make demo`. Universal classes: IoU pooled over the val splits "
                 f"of {', '.join(RELABELED)} (fine truth). {results['iters']} iterations each, seed {results['seed']}; "
                 f"wall {results['wall_s']:.0f} s; "
                 f"load average {load['before']} before, {load['after']} after ({load['cpus']} CPUs).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=600, help="training iterations of each run (the demo's 600)")
    parser.add_argument("--out", type=Path, default=Path("output/partial_label_experiment"))
    parser.add_argument("--data-root", default="output/demo_data")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data stream of all three runs (another seed "
                        "shows the run-to-run variation; use another --out)")
    args = parser.parse_args(argv)
    from mseg_semantic.atomic import atomic_write_json, atomic_write_text

    os.chdir(REPO)
    started, load_before = time.perf_counter(), load_average()
    runs = {}
    for run in args.runs:
        model_path = train(run, args)
        camvid = evaluate(model_path, "camvid-11", args.out / run / "eval", args.data_root)
        fine = [evaluate(model_path, d, args.out / run / "eval", args.data_root) for d in RELABELED]
        universal = {name: pooled_iou(fine, name) for name in UNIVERSAL_AFFECTED}
        known = [v for v in universal.values() if v is not None]
        runs[run] = {
            "what": RUNS[run][0],
            "config": f"config/train/{RUNS[run][1]}",
            "datasets": RUNS[run][2],
            "camvid": {"miou": camvid["miou"], "pixel_acc": camvid["pixel_acc"],
                       "affected": {c: per_class(camvid)[c]["iou"] for c in CAMVID_AFFECTED},
                       "per_class": {c["name"]: c["iou"] for c in camvid["per_class"]}},
            "universal": universal,
            "universal_affected_mean": sum(known) / len(known) if known else None,
            "relabeled_val_miou": {d: m["miou"] for d, m in zip(RELABELED, fine)},
        }
    results = {"iters": args.iters, "seed": args.seed, "runs": runs, "wall_s": round(time.perf_counter() - started, 1),
               "load": {"before": load_before, "after": load_average(), "cpus": os.cpu_count()},
               "data": "SYNTHETIC demo world (mseg_semantic/data/demo_world.py)"}
    table = markdown(results)
    atomic_write_json(args.out / "results.json", results, indent=1)
    atomic_write_text(args.out / "results.md", table)
    print(table, end="")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
