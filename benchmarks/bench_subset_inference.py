"""What subset inference saves when the output taxonomy reads only some universal classes. Prints JSON.

For each output taxonomy (a 3-class user taxonomy, camvid-11, cityscapes-19, and the 194 universal classes as the
reference without projection) it compares ``TEST.subset_inference`` ``full`` (upsample every class to the window,
softmax, sum into the output classes), ``exact`` (the softmax normaliser accumulated over the classes in chunks;
only the used classes at full resolution) and ``fast`` (the normaliser taken at the logits' 1/4 resolution; only
the used classes upsampled):

- ``postprocess``: logits of one window batch -> output probabilities, seconds and peak memory of that step
  (CUDA: ``max_memory_allocated``; CPU: the growth of the process's peak resident memory, VmHWM, each
  measurement in a fresh process);
- ``per_image``: seconds per image of the whole sliding-window inference with a model, and how far its
  probabilities and labels are from ``full``.

    python benchmarks/bench_subset_inference.py                     # CPU, hrnet_tiny, small windows
    python benchmarks/bench_subset_inference.py --checkpoint output/demo/model_final.pth \\
        --image output/demo_data/Camvid/synthetic/images/val/000000.jpg --base-size 128 --crop 96 --window-batch 4
    python benchmarks/bench_subset_inference.py --device cuda --model hrnet_w48 --crop 713 --window-batch 12 \\
        --height 1080 --width 1920 --base-size 1080
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from mseg_semantic.data.lists import read_image_rgb
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, class_probabilities, predict_probabilities
from mseg_semantic.evaluation.model_space import load_model_for_inference
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import Projection, build_taxonomy_converter, load_class_names

TAXONOMIES = ("user-3", "camvid-11", "cityscapes-19", "universal")


def projection_of(name: str) -> Projection | None:
    if name == "universal":
        return None
    if name == "user-3":  # a user test taxonomy of three classes, as mseg-semantic #54 asks
        names = load_class_names("universal")
        groups = [["road", "sidewalk_pavement"], ["car", "bus", "truck"], ["person"]]
        return Projection(194, [[names.index(n) for n in group] for group in groups])
    if name == "cityscapes-19":
        maps = build_taxonomy_converter("universal", [name], []).label_maps[name]
        return Projection(194, [[maps[k]] for k in range(19)])
    return build_taxonomy_converter("universal", [], [name]).projection(name)


def logits_for(args, device) -> torch.Tensor:
    low = -(-args.crop // 4)  # HRNet's logits are at 1/4 of the window
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(args.window_batch, 194, low, low, generator=generator) * 3).to(device)


def peak_resident_kib() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def measure_postprocess(args, taxonomy: str, subset: str) -> dict:
    """Seconds and peak memory of one post-processing step (run in a fresh process on a CPU)."""
    device = torch.device(args.device)
    logits, projection = logits_for(args, device), projection_of(taxonomy)
    size = (args.crop, args.crop)
    if device.type == "cuda":
        class_probabilities(logits, size, projection, subset)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_resident_kib()  # the first run below sets the new peak
    start = time.perf_counter()
    class_probabilities(logits, size, projection, subset)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    else:
        peak = (peak_resident_kib() - base) / 2**20
    times = [time.perf_counter() - start]
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        class_probabilities(logits, size, projection, subset)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": round(float(np.median(times)), 4), "peak_gib": round(peak, 3)}


def postprocess_in_child(args, taxonomy: str, subset: str) -> dict:
    if args.device.startswith("cuda"):
        return measure_postprocess(args, taxonomy, subset)
    command = [sys.executable, __file__, "--child", taxonomy, subset, "--device", args.device, "--crop", str(args.crop),
               "--window-batch", str(args.window_batch), "--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_tiny")
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--base-size", type=int, default=270)
    parser.add_argument("--crop", type=int, default=257)
    parser.add_argument("--window-batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="a trained universal model (default: random weights, spread-out logits)")
    parser.add_argument("--image", default=None, help="an image file (default: random pixels of --height x --width)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)  # TAXONOMY SUBSET: one CPU measurement
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure_postprocess(args, args.child[0], args.child[1])))
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model_for_inference(args.checkpoint, device).model
        args.model = f"{getattr(model, 'name', '?')} ({args.checkpoint})"
    else:
        model = build_model(args.model, 194).to(device).eval()
        with torch.no_grad():  # logits that vary across the image, so that class boundaries exist
            model.head.classifier.weight.normal_(0, 0.5)
    if args.image:
        image = read_image_rgb(args.image)
        args.height, args.width = image.shape[:2]
    else:
        image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    results = {}
    for taxonomy in TAXONOMIES:
        projection = projection_of(taxonomy)
        entry = {"output_classes": 194 if projection is None else projection.num_outputs,
                 "model_classes_read": 194 if projection is None else len(projection.used_inputs)}
        probs = {}
        for subset in ("full", "exact", "fast") if projection is not None else ("full",):
            settings = InferenceSettings(crop_h=args.crop, crop_w=args.crop, base_size=args.base_size, scales=(1.0,), flip=True, mode="sliding",
                                         window_batch=args.window_batch, precision="fp32", channels_last=False, fold_bn=True, cuda_graphs=False,
                                         subset=subset)
            engine = InferenceModel(model, settings)
            predict_probabilities(engine, [image], settings, projection)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                probs[subset] = predict_probabilities(engine, [image], settings, projection)[0]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            entry[subset] = {"per_image_seconds": round(float(np.median(times)), 4), "postprocess": postprocess_in_child(args, taxonomy, subset)}
            if subset != "full":
                entry[subset]["per_image_speedup"] = round(entry["full"]["per_image_seconds"] / entry[subset]["per_image_seconds"], 3)
                entry[subset]["postprocess_speedup"] = round(entry["full"]["postprocess"]["seconds"] / entry[subset]["postprocess"]["seconds"], 3)
                entry[subset]["max_abs_diff"] = float((probs["full"] - probs[subset]).abs().max())
                entry[subset]["same_label"] = float((probs["full"].argmax(0) == probs[subset].argmax(0)).float().mean())
        results[taxonomy] = entry
    print(json.dumps({
        "benchmark": "subset_inference",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": args.model,
        "image": args.image or "random pixels",
        "image_hw": [args.height, args.width],
        "base_size": args.base_size,
        "crop": args.crop,
        "window_batch": args.window_batch,
        "postprocess_logits": [args.window_batch, 194, -(-args.crop // 4), -(-args.crop // 4)],
        "taxonomies": results,
    }, indent=2))


if __name__ == "__main__":
    main()
