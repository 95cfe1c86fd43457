"""Seconds per image of sliding-window inference: windows batched vs MSeg's per-window loop. Prints JSON.

The per-window loop is the same code with ``window_batch=2``: each forward pass holds one window and its
horizontal flip, which is what MSeg's ``net_process`` runs. The batched run puts ``--window-batch`` items
(windows and flipped windows, all scales of the image) in each pass. Both give the same probabilities.

    python benchmarks/bench_inference.py                              # small CPU run (hrnet_tiny)
    python benchmarks/bench_inference.py --model hrnet_w48 --height 1080 --width 1920 --base-size 1080 \\
        --crop 713 --window-batch 12 --device cuda --precision bf16     # MSeg's 1080p single-scale setting
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from mseg_semantic.evaluation.inference import InferenceSettings, predict_probabilities, resized_hw, window_starts
from mseg_semantic.model import build_model


def count_items(h: int, w: int, settings: InferenceSettings) -> int:
    total = 0
    for scale in settings.scales:
        nh, nw = resized_hw(h, w, settings.base_size, scale)
        ph, pw = max(nh, settings.crop_h), max(nw, settings.crop_w)
        total += len(window_starts(ph, settings.crop_h, settings.stride_h)) * len(window_starts(pw, settings.crop_w, settings.stride_w))
    return total * (2 if settings.flip else 1)


def time_per_image(model, image, settings, repeats: int, device) -> tuple[float, float | None]:
    """Median seconds per image, and the peak GPU memory in GiB (None on a CPU)."""
    predict_probabilities(model, [image], settings)  # warm-up (cudnn autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = predict_probabilities(model, [image], settings)
        probs[0].argmax(0).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
    return float(np.median(times)), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_tiny")
    parser.add_argument("--classes", type=int, default=194)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--base-size", type=int, default=270)
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--window-batch", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(args.model, args.classes).to(device).eval()
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    common = dict(crop_h=args.crop, crop_w=args.crop, base_size=args.base_size, scales=tuple(args.scales), flip=True, precision=args.precision)
    batched = InferenceSettings(window_batch=args.window_batch, **common)
    loop = InferenceSettings(window_batch=2, **common)
    items = count_items(args.height, args.width, batched)
    t_batched, peak_batched = time_per_image(model, image, batched, args.repeats, device)
    t_loop, peak_loop = time_per_image(model, image, loop, args.repeats, device)
    result = {
        "benchmark": "sliding_window_inference",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": args.model,
        "classes": args.classes,
        "image_hw": [args.height, args.width],
        "base_size": args.base_size,
        "crop": args.crop,
        "scales": args.scales,
        "flip": True,
        "precision": args.precision,
        "forward_items_per_image": items,
        "repeats": args.repeats,
        "per_window_loop": {"window_batch": 2, "forward_passes": -(-items // 2), "seconds_per_image": round(t_loop, 4), "peak_gpu_gib": peak_loop},
        "batched": {"window_batch": args.window_batch, "forward_passes": -(-items // args.window_batch), "seconds_per_image": round(t_batched, 4), "peak_gpu_gib": peak_batched},
        "speedup": round(t_loop / t_batched, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
