"""Training augmentation throughput: the fused affine crop vs MSeg's sequential float32 recipe.

One thread (cv2.setNumThreads(1), torch.set_num_threads(1)), a 1080 x 1920 input, MSeg's 1080p recipe
(short side 1080, scale 0.5-2, rotate -10..10 p=0.5, blur p=0.5, flip p=0.5, 713 x 713 crop). Prints JSON.

  python benchmarks/bench_augment.py [--seeds 40] [--repeats 5] [--crop 713] [--short-size 1080]

Both pipelines map the label through a 256-entry lookup table (the taxonomy conversion) and end with a torch
tensor: the sequential one normalised float32 (as MSeg's ToTensor + Normalize), the fused one uint8 (it is
normalised on the training device; ``fused_normalized_on_cpu`` adds that step on the CPU for reference).
Both pipelines run on the same parameter seeds (0..N-1; the fused one repeats them), so the ratio does not
depend on which scales were drawn. ``crops_per_s`` is crops / total time (what a loader sees); the median
time per crop is reported too, as it is less sensitive to a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))  # MSeg's recipe lives with the tests
from mseg_recipe import augment_config, sequential_augment, to_normalized_tensor  # noqa: E402

from mseg_semantic.data.demo_world import render_sample
from mseg_semantic.data.transforms import augment_crop_chw, normalize_images, sample_augment_params


def synthetic_1080p() -> tuple[np.ndarray, np.ndarray]:
    """A textured 1080 x 1920 street scene (the demo world's, upscaled, plus pixel noise) and its label."""
    image, label = render_sample("mapillary-public65", 0, "train", 0)
    image = cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    label = cv2.resize(label, (1920, 1080), interpolation=cv2.INTER_NEAREST)
    noise = np.random.default_rng(0).normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), label


def timed(step, seeds: int, repeats: int = 1) -> list[float]:
    times = []
    for _ in range(repeats):
        for i in range(seeds):
            start = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - start)
    return times


def throughput(times: list[float]) -> dict:
    return {"crops_per_s": round(len(times) / sum(times), 2), "ms_per_crop_mean": round(1000 * sum(times) / len(times), 2),
            "ms_per_crop_median": round(1000 * statistics.median(times), 2), "crops": len(times)}


def result_rate(times: list[float]) -> float:
    return len(times) / sum(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40, help="parameter seeds (= sequential crops timed)")
    parser.add_argument("--repeats", type=int, default=5, help="passes of the fused pipeline over the seeds")
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--short-size", type=int, default=1080)
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cfg = augment_config(train_h=args.crop, train_w=args.crop, short_size=args.short_size)
    image_rgb, label = synthetic_1080p()
    image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    lut = np.arange(256, dtype=np.uint8)[::-1].copy()  # stands in for the taxonomy table: same cost
    ok_jpg, jpeg = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    ok_png, png = cv2.imencode(".png", label)
    assert ok_jpg and ok_png

    def fused(i: int, decode: bool = False, normalize: bool = False) -> None:
        img, lab = image_bgr, label
        if decode:
            img = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
            lab = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        params = sample_augment_params(np.random.default_rng(i), lab.shape[0], lab.shape[1], cfg)
        chw, crop_label = augment_crop_chw(img, lab, params, cfg)
        tensor = torch.from_numpy(chw)
        torch.from_numpy(cv2.LUT(crop_label, lut)).long()  # the label conversion and int64 target the loader produces
        if normalize:
            normalize_images(tensor[None])

    def sequential(i: int, decode: bool = False) -> None:
        img, lab = image_rgb, label
        if decode:
            img = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            lab = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        crop, crop_label, _ = sequential_augment(img, lab, cfg, rng=np.random.default_rng(i))
        to_normalized_tensor(crop, cv2.LUT(crop_label, lut))

    decode_times = timed(lambda i: cv2.imdecode(jpeg, cv2.IMREAD_COLOR), 20)
    fused_times = timed(fused, args.seeds, args.repeats)
    fused_normalized = timed(lambda i: fused(i, normalize=True), args.seeds, args.repeats)
    fused_decode = timed(lambda i: fused(i, decode=True), args.seeds)
    sequential_times = timed(sequential, args.seeds)
    sequential_decode = timed(lambda i: sequential(i, decode=True), args.seeds)

    result = {
        "benchmark": "augment",
        "input": "1080x1920 synthetic JPEG (quality 95) + uint8 PNG label",
        "crop": f"{args.crop}x{args.crop}",
        "short_size": args.short_size,
        "threads": 1,
        "fused": throughput(fused_times),
        "fused_normalized_on_cpu": throughput(fused_normalized),
        "fused_with_decode": throughput(fused_decode),
        "sequential_float32": throughput(sequential_times),
        "sequential_float32_with_decode": throughput(sequential_decode),
        "jpeg_decode_ms_median": round(1000 * statistics.median(decode_times), 2),
        "speedup": round(result_rate(fused_times) / result_rate(sequential_times), 1),
        "speedup_with_decode": round(result_rate(fused_decode) / result_rate(sequential_decode), 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, opencv {cv2.__version__}",
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
