"""Sliding-window inference in MSeg's post-processing order (evaluation/reference_order.py) against the reordered one
(evaluation/inference.py), on the same prepared model and windows: seconds per image to the labels. Prints JSON.

    python benchmarks/bench_postprocess.py --model replay --height 1080 --width 1920 --base-size 1080 --crop 713 \\
        --precision bf16 --device cuda                              # post-processing alone at MSeg's 1080p setting
    python benchmarks/bench_postprocess.py --model hrnet_w48 --height 1080 --width 1920 --base-size 1080 --crop 713 \\
        --precision bf16 --cuda-graphs --device cuda                # end to end, single scale + flip
    python benchmarks/bench_postprocess.py --threads 1              # small CPU run (hrnet_tiny)

``--model replay`` stands a model in that returns stored random logits (the window's 1/4 resolution, 194 classes,
bf16 under ``--precision bf16`` as HRNet's head gives them), so that only the post-processing is timed: upsampling,
softmax, flip average, projection, the canvas and the labels. Variants, timed alternately (the minimum of
``--repeats`` per variant): ``mseg_order``, ``reordered`` (the default path) and ``reordered_fused``
(``fused_postprocess``: the post-processing compiled; its first call compiles). ``label_agreement`` and
``max_abs_diff`` (probabilities before the resize) compare each variant with ``mseg_order``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_image_probabilities  # noqa: E402
from mseg_semantic.evaluation.reference_order import mseg_order_image_probabilities  # noqa: E402
from mseg_semantic.model import build_model  # noqa: E402
from mseg_semantic.taxonomy import Projection  # noqa: E402

VARIANTS = ("mseg_order", "reordered", "reordered_fused")


class ReplayLogits(torch.nn.Module):
    """Returns stored random logits at 1/4 of the input's size (as HRNet's head does), one tensor per input shape."""

    def __init__(self, classes: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.classes, self.dtype = classes, dtype
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device), requires_grad=False)  # the device, for InferenceModel
        self.stored: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        key = (h, w, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self.stored or self.stored[key].shape[0] < n:
            g = torch.Generator().manual_seed(0)
            logits = (torch.randn(n, self.classes, -(-h // 4), -(-w // 4), generator=g) * 3).to(x.device, self.dtype)
            self.stored[key] = logits.contiguous(memory_format=torch.channels_last) if key[2] else logits
        return self.stored[key][:n]


def example_projection(classes: int, outputs: int) -> Projection:
    """``outputs`` classes of three model classes each (the rest of the model's classes unused)."""
    return Projection(classes, [[k + j * outputs for j in range(3) if k + j * outputs < classes] for k in range(outputs)])


def one_image(variant: str, engine: InferenceModel, image, settings: InferenceSettings, projection, device) -> tuple[float, object]:
    start = time.perf_counter()
    run = mseg_order_image_probabilities if variant == "mseg_order" else predict_image_probabilities
    result = run(engine, [image], settings, projection)[0]
    result.labels().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_tiny", help="a model name, or 'replay' (stored logits: post-processing only)")
    parser.add_argument("--classes", type=int, default=194)
    parser.add_argument("--projection", type=int, default=0, help="project onto this many output classes (0: the model's classes)")
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--base-size", type=int, default=270)
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--window-batch", type=int, default=None, help="default: 16 on CUDA, 8 on a CPU")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on a CPU")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["mseg_order", "reordered"], choices=VARIANTS)
    parser.add_argument("--sequential", action="store_true", help="one variant at a time (its engine freed before the next)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    settings = InferenceSettings(crop_h=args.crop, crop_w=args.crop, base_size=args.base_size, scales=tuple(args.scales), flip=not args.no_flip,
                                 mode="sliding", window_batch=args.window_batch, precision=args.precision, channels_last=None, fold_bn=True,
                                 cuda_graphs=args.cuda_graphs, subset="full").for_device(device)
    torch.manual_seed(0)
    if args.model == "replay":
        model = ReplayLogits(args.classes, torch.bfloat16 if settings.precision == "bf16" else torch.float32, device)
    else:
        from timing import settle_batchnorm

        model = build_model(args.model, args.classes).to(device).eval()
        settle_batchnorm(model)
    projection = example_projection(args.classes, args.projection) if args.projection else None
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    variant_settings = {v: dataclasses.replace(settings, fused_postprocess=v == "reordered_fused") for v in args.variants}
    engines, results, outputs = {}, {}, {}

    def prepare(variant: str) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        engines[variant] = InferenceModel(model, variant_settings[variant])
        one_image(variant, engines[variant], image, variant_settings[variant], projection, device)  # warm-up, capture, compile
        results[variant] = {"warmup_s": round(time.perf_counter() - started, 2), "times": []}

    def measure(variant: str) -> None:
        seconds, result = one_image(variant, engines[variant], image, variant_settings[variant], projection, device)
        results[variant]["times"].append(seconds)
        outputs[variant] = (result.labels().cpu(), result.probabilities().cpu())  # for the comparison, off the device
        if device.type == "cuda":  # since prepare(): CUDA graph pools and compiled kernels' buffers included
            results[variant]["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)

    if args.sequential:  # one engine at a time: two W48 engines with their graphs may not fit beside each other
        for variant in args.variants:
            prepare(variant)
            for _ in range(args.repeats):
                measure(variant)
            del engines[variant]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    else:
        for variant in args.variants:
            prepare(variant)
        for _ in range(args.repeats):  # alternately, so that a busy moment of a shared machine hits every variant
            for variant in args.variants:
                measure(variant)
    reference = outputs.get("mseg_order")
    for variant, entry in results.items():
        times = entry.pop("times")
        entry["seconds_per_image"] = round(min(times), 4)
        entry["seconds_per_image_median"] = round(float(np.median(times)), 4)
        if reference is not None:
            labels, probabilities = outputs[variant]
            entry["label_agreement"] = round(float((labels == reference[0]).float().mean()), 7)
            entry["max_abs_diff"] = float((probabilities - reference[1]).abs().max())
    if "mseg_order" in results:
        for entry in results.values():
            entry["speedup"] = round(results["mseg_order"]["seconds_per_image"] / entry["seconds_per_image"], 2)
    print(json.dumps({
        "benchmark": "inference_postprocess_order",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": args.model, "classes": args.classes, "projection": args.projection or None,
        "image_hw": [args.height, args.width], "base_size": args.base_size, "crop": args.crop, "scales": args.scales,
        "flip": not args.no_flip, "window_batch": settings.window_batch, "precision": settings.precision,
        "channels_last": settings.channels_last, "cuda_graphs": settings.cuda_graphs, "repeats": args.repeats, "variants": results,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
