"""Does partial-label training close the gap relabeling closes? Three models on the SYNTHETIC demo world, same budget.

  A  unrelabeled datasets + one-hot cross-entropy   (MSeg's unrelabeled model; config/train/demo.yaml, = `make demo`)
  B  unrelabeled datasets + partial_label loss      (config/train/demo_partial.yaml)
  C  relabeled datasets + one-hot cross-entropy     (the same images with the fine truth: what relabeling buys)

  B+rcs / B+prior / B+rec  B with DATA.rare_class_sampling / TRAIN.set_prior_correction / label_set_weights=records

The arms see the same images, crops and initial weights (same seed); only the labels and the loss differ (the RCS
arm draws its own crops). Each is evaluated (1) zero-shot on the held-out camvid-11 exactly as `make demo` does
(config/test/demo.yaml), and (2) in the universal taxonomy on the val splits of the three relabeled datasets (the
fine truth), pooled, for the classes the datasets disagree on (riders, guard rails) and their neighbours.

  python benchmarks/partial_label_experiment.py [--iters 600] [--seeds 0] [--out output/partial_label_experiment]
  python benchmarks/partial_label_experiment.py --runs A B B+rcs C --seeds 0 1 2 3 --iters 500 1000 2000 --val-images 100

Several --iters give a learning curve: one full run per budget (its own poly schedule and precise BN, as a run of that
length would be). Several --seeds give paired intervals: per class, the mean of B - A and C - B over the seeds with a
t 95% interval, and the gap closure mean(B - A) / mean(C - A) over the conflict classes (mean C - A > --gap-points
IoU points) with a bootstrap 95% interval over the seeds (the statistics of benchmarks/partial_label_fast.py).
--val-images other than the demo's 20 generates a demo world with that many val images per dataset (the same
training images) under <data-root>-val<N>.

Each finished run leaves <out>/<run>-seed<s>-it<n>/record.json and is reused by a later invocation with the same --out
(so seeds can run as parallel invocations and a last one with all of them summarises; change --out when settings
change). Writes <out>/results.json and <out>/results.md and prints the table (about 12 minutes per run of 600 iterations
on an idle 2-core CPU, plus ~1 minute per 20 val images per dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNRELABELED = ["cityscapes-19", "ade20k-150", "mapillary-public65"]
RELABELED = [name + "-relabeled" for name in UNRELABELED]
RUNS = {  # name: (what, config, datasets, overrides)
    "A": ("unrelabeled + one-hot CE", "demo.yaml", UNRELABELED, []),
    "B": ("unrelabeled + partial_label", "demo_partial.yaml", UNRELABELED, []),
    "C": ("relabeled + one-hot CE", "demo.yaml", RELABELED, []),
    # rare-class sampling at the demo's image size (benchmarks/rare_class_guard_rail.py)
    "B+rcs": ("unrelabeled + partial_label + rare-class sampling", "demo_partial.yaml", UNRELABELED,
              ["rare_class_sampling=True", "rare_class_min_pixels=32"]),
    "B+prior": ("unrelabeled + partial_label + set_prior_correction", "demo_partial.yaml", UNRELABELED, ["set_prior_correction=True"]),
    "B+rec": ("unrelabeled + partial_label, label_set_weights=records", "demo_partial.yaml", UNRELABELED, ["label_set_weights=records"]),
}
DEMO_VAL_IMAGES = 20
# the zero-shot classes the rider conflict touches, and the universal classes of the conflicts and their neighbours
CAMVID_AFFECTED = ["Pedestrian", "Bicyclist", "Fence"]
UNIVERSAL_AFFECTED = ["person", "bicyclist", "motorcyclist", "bicycle", "motorcycle", "fence", "guard_rail"]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train(run: str, args: argparse.Namespace, seed: int, iters: int, output_dir: Path) -> Path:
    from mseg_semantic.tool.train import main as train_main

    _, config, datasets, extra = RUNS[run]
    overrides = [f"output_dir={output_dir}", f"max_iters={iters}", f"dataset=[{','.join(datasets)}]",
                 f"data_root={args.data_root}", f"seed={seed}", "tensorboard=False", "generate_demo_world=False", *extra]
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
        f"dataset={dataset}", "base_size=128", "generate_demo_world=False"])  # the caller writes the world
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
    head = ["run", "seed", "iters", "camvid-11 mIoU", *(f"camvid {c}" for c in CAMVID_AFFECTED), *UNIVERSAL_AFFECTED, "affected mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, r in results["runs"].items():
        cells = [f"{r['run']}: {r['what']}", str(r["seed"]), str(r["iters"]), percent(r["camvid"]["miou"]),
                 *(percent(r["camvid"]["affected"][c]) for c in CAMVID_AFFECTED),
                 *(percent(r["universal"][c]) for c in UNIVERSAL_AFFECTED), percent(r["universal_affected_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    for iters, summary in results.get("intervals", {}).items():
        lines.append("")
        lines.append(f"{iters} iterations, {len(results['seeds'])} seeds: conflict classes {', '.join(summary['conflict_classes']) or '(none)'}")
        for arm, entry in summary["arms"].items():
            if "mean_gap_closure" in entry:
                closure = entry["mean_gap_closure"]
                lines.append(f"- {arm}: mean gap closure {closure['closure']} (95% bootstrap interval {closure['ci95']}), "
                             f"pooled {entry['pooled_gap_closure']}")
    load = results["load"]
    lines.append("")
    lines.append(f"camvid-11: zero-shot, val (24 images), as `make demo`. Universal classes: IoU pooled over the val splits "
                 f"of {', '.join(RELABELED)} (fine truth, {results['val_images']} images each). Seeds {results['seeds']}, "
                 f"iterations {results['iters']}; wall {results['wall_s']:.0f} s; "
                 f"load average {load['before']} before, {load['after']} after ({load['cpus']} CPUs).")
    return "\n".join(lines) + "\n"


def prepare_world(args: argparse.Namespace) -> None:
    """The demo world at --data-root, with --val-images val images per training dataset (the same training images)."""
    from mseg_semantic.data.demo_world import DEFAULT_COUNTS, generate

    if args.val_images != DEMO_VAL_IMAGES:
        args.data_root = f"{args.data_root}-val{args.val_images}"
    generate(args.data_root, counts={**DEFAULT_COUNTS, "val": args.val_images})


def intervals(runs: dict, args: argparse.Namespace) -> dict:
    """Per iteration budget: paired differences and gap closures over the seeds (needs A and C, >= 2 seeds)."""
    import numpy as np
    from partial_label_fast import summarize

    out = {}
    for iters in args.iters:
        arms = {}
        for run in args.runs:
            rows = [[runs[f"{run}-seed{s}-it{iters}"]["universal"][c] for c in UNIVERSAL_AFFECTED] for s in args.seeds]
            arms[run] = 100 * np.array([[np.nan if v is None else v for v in row] for row in rows], np.float64)
        out[str(iters)] = summarize(arms, UNIVERSAL_AFFECTED, args.gap_points, args.resamples)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[600], help="training iterations of each run (the demo's 600); "
                        "several: a learning curve (one run per budget)")
    parser.add_argument("--out", type=Path, default=Path("output/partial_label_experiment"))
    parser.add_argument("--data-root", default="output/demo_data")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["A", "B", "C"])
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], help="initial weights and data stream of every run; "
                        "several: paired intervals")
    parser.add_argument("--val-images", type=int, default=DEMO_VAL_IMAGES, help="val images per relabeled dataset (the demo: 20)")
    parser.add_argument("--gap-points", type=float, default=5.0, help="a conflict class has mean C - A above this (IoU points)")
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args(argv)
    from mseg_semantic.atomic import atomic_write_json, atomic_write_text

    os.chdir(REPO)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    started, load_before = time.perf_counter(), load_average()
    prepare_world(args)
    runs = {}
    for seed in args.seeds:
        for iters in args.iters:
            for run in args.runs:
                key = f"{run}-seed{seed}-it{iters}"
                output_dir = args.out / key
                record = output_dir / "record.json"
                if record.is_file():  # finished before (by this or a parallel invocation with other --seeds)
                    runs[key] = json.loads(record.read_text())
                    continue
                model_path = train(run, args, seed, iters, output_dir)
                camvid = evaluate(model_path, "camvid-11", output_dir / "eval", args.data_root)
                fine = [evaluate(model_path, d, output_dir / "eval", args.data_root) for d in RELABELED]
                universal = {name: pooled_iou(fine, name) for name in UNIVERSAL_AFFECTED}
                known = [v for v in universal.values() if v is not None]
                runs[key] = {
                    "run": run, "seed": seed, "iters": iters,
                    "what": RUNS[run][0],
                    "config": f"config/train/{RUNS[run][1]}",
                    "overrides": RUNS[run][3],
                    "datasets": RUNS[run][2],
                    "camvid": {"miou": camvid["miou"], "pixel_acc": camvid["pixel_acc"],
                               "affected": {c: per_class(camvid)[c]["iou"] for c in CAMVID_AFFECTED},
                               "per_class": {c["name"]: c["iou"] for c in camvid["per_class"]}},
                    "universal": universal,
                    "universal_affected_mean": sum(known) / len(known) if known else None,
                    "relabeled_val_miou": {d: m["miou"] for d, m in zip(RELABELED, fine)},
                    "val_images": args.val_images,
                }
                atomic_write_json(record, runs[key], indent=1)
    results = {"iters": args.iters, "seeds": args.seeds, "val_images": args.val_images, "runs": runs,
               "data": "SYNTHETIC demo world (mseg_semantic/data/demo_world.py)"}
    if len(args.seeds) >= 2 and {"A", "C"} <= set(args.runs):
        results["intervals"] = intervals(runs, args)
    results |= {"wall_s": round(time.perf_counter() - started, 1),
                "load": {"before": load_before, "after": load_average(), "cpus": os.cpu_count()}}
    table = markdown(results)
    atomic_write_json(args.out / "results.json", results, indent=1)
    atomic_write_text(args.out / "results.md", table)
    print(table, end="")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
