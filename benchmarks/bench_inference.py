"""Seconds per image of sliding-window inference, variant by variant, in one call. Prints JSON.

Variants (each gives the same probabilities up to float rounding; ``max_abs_diff`` says how close):

- ``per_window``: MSeg's loop: each forward pass holds one window and its flip (``window_batch=2``), BatchNorm
  as trained, NCHW;
- ``batched``: ``--window-batch`` items per pass (windows and flips of all the image's scales share passes);
- ``batched_folded``: + BatchNorm folded into the convolutions;
- ``batched_folded_nhwc``: + channels_last;
- on CUDA also ``..._bf16`` (autocast, convolution weights cast once) and ``..._bf16_graphs`` (the fixed-shape
  window batch replayed as a CUDA graph).

    python benchmarks/bench_inference.py                              # small CPU run (hrnet_tiny)
    python benchmarks/bench_inference.py --model hrnet_w48 --height 1080 --width 1920 --base-size 1080 \\
        --crop 713 --window-batch 12 --device cuda                    # MSeg's 1080p single-scale setting
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_probabilities, resized_hw, window_starts
from mseg_semantic.model import build_model


def count_items(h: int, w: int, settings: InferenceSettings) -> int:
    total = 0
    for scale in settings.scales:
        nh, nw = resized_hw(h, w, settings.base_size, scale)
        ph, pw = max(nh, settings.crop_h), max(nw, settings.crop_w)
        total += len(window_starts(ph, settings.crop_h, settings.stride_h)) * len(window_starts(pw, settings.crop_w, settings.stride_w))
    return total * (2 if settings.flip else 1)


def time_per_image(engine: InferenceModel, image, settings, repeats: int, device) -> tuple[float, float | None, torch.Tensor]:
    """Median seconds per image, the peak GPU memory in GiB (None on a CPU), and the probabilities."""
    predict_probabilities(engine, [image], settings)  # warm-up (cuDNN autotuning, allocator, graph capture)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = predict_probabilities(engine, [image], settings)[0]
        probs.argmax(0).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
    return float(np.median(times)), peak, probs.float().cpu()


def profile_one_image(engine: InferenceModel, image, settings, device) -> list[dict]:
    """The operators that take the most time on the device (or the CPU) in one image's inference."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        predict_probabilities(engine, [image], settings)[0].argmax(0).cpu()
    def device_us(event) -> float:
        if device.type != "cuda":
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    events = sorted(prof.key_averages(), key=device_us, reverse=True)[:12]
    return [{"op": e.key[:80], "calls": e.count, "self_ms": round(device_us(e) / 1000, 3)} for e in events]


def variants(args) -> dict[str, dict]:
    """name -> InferenceSettings changes, in the order measured."""
    out = {
        "per_window": dict(window_batch=2, fold_bn=False, channels_last=False, precision="fp32"),
        "batched": dict(window_batch=args.window_batch, fold_bn=False, channels_last=False, precision="fp32"),
        "batched_folded": dict(window_batch=args.window_batch, fold_bn=True, channels_last=False, precision="fp32"),
        "batched_folded_nhwc": dict(window_batch=args.window_batch, fold_bn=True, channels_last=True, precision="fp32"),
    }
    if args.device.startswith("cuda"):
        out["batched_folded_nhwc_bf16"] = dict(window_batch=args.window_batch, fold_bn=True, channels_last=True, precision="bf16")
        out["batched_folded_nhwc_bf16_graphs"] = dict(window_batch=args.window_batch, fold_bn=True, channels_last=True, precision="bf16", cuda_graphs=True)
    return out


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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", nargs="+", default=None, help="measure only these variants")
    parser.add_argument("--profile", action="store_true", help="also list the 12 costliest operators of one image (last variant)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    from timing import settle_batchnorm

    model = build_model(args.model, args.classes).to(device).eval()
    settle_batchnorm(model)
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    common = dict(crop_h=args.crop, crop_w=args.crop, base_size=args.base_size, scales=tuple(args.scales), flip=True, mode="sliding",
                  cuda_graphs=False, subset="full")
    results, reference = {}, None
    measured = [name for name in variants(args) if not args.only or name in args.only]
    for name, changes in variants(args).items():
        if args.only and name not in args.only:
            continue
        settings = InferenceSettings(**{**common, **changes})
        engine = InferenceModel(model, settings)
        seconds, peak, probs = time_per_image(engine, image, settings, args.repeats, device)
        reference = probs if reference is None else reference
        results[name] = {
            "window_batch": settings.window_batch,
            "forward_passes": -(-count_items(args.height, args.width, settings) // (2 * settings.windows_per_pass)),
            "seconds_per_image": round(seconds, 4),
            "peak_gpu_gib": peak,
            "max_abs_diff": float((probs - reference).abs().max()),
        }
        if args.profile and name == measured[-1]:
            results[name]["top_operators"] = profile_one_image(engine, image, settings, device)
        del engine
    first = next(iter(results.values()))["seconds_per_image"]
    for entry in results.values():
        entry["speedup"] = round(first / entry["seconds_per_image"], 3)
    print(json.dumps({
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
        "forward_items_per_image": count_items(args.height, args.width, InferenceSettings(**{**common, "window_batch": 2, "fold_bn": False, "channels_last": False, "precision": "fp32"})),
        "repeats": args.repeats,
        "variants": results,
    }, indent=2))


if __name__ == "__main__":
    main()
