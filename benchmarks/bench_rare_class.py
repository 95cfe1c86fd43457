"""What rare-class sampling costs the data path: loader-fed crops/s with and without DATA.rare_class_sampling; prints JSON.

1. The demo's training stream (config/train/demo.yaml's crops, the demo world): a fresh loader per repeat, in this
   process (workers=0, one torch thread, so the figure is the loader's CPU time per crop), --batches batches timed
   after one untimed batch, in CPU seconds of this process; RCS off and on alternate, --repeats times each; medians. The class statistics are
   counted before the timing (the first run caches them beside the lists; that one-off cost is reported apart).
2. One sample at MSeg's 1080p scale (a demo image and label resized to 1080 x 1920, the 1080 release's 713 x 713
   crop, short side 1080): TrainSampleReader.load without a rare class, and with a rare class (guard_rail) and a
   common one (road): read + convert + crop search + warp, medians of --samples positions.

  python benchmarks/bench_rare_class.py [--repeats 5] [--batches 20] [--data-root output/demo_data]

In a training run the loader works in its own processes beside the model's step, so the step slows down only when
the loader cannot keep up; these figures are the loader's own time, the stricter measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mseg_semantic.config import load_config  # noqa: E402
from mseg_semantic.data import build_train_loader, demo_world, rare_class  # noqa: E402
from mseg_semantic.data.datasets import TrainSampleReader  # noqa: E402
from mseg_semantic.data.transforms import AugmentConfig  # noqa: E402
from mseg_semantic.taxonomy import build_taxonomy_converter  # noqa: E402

DATASETS = ["cityscapes-19", "ade20k-150", "mapillary-public65"]
DEMO_MIN_PIXELS = 32  # as benchmarks/rare_class_guard_rail.py


def loader_seconds(cfg, converter, batches: int) -> float:
    loader = build_train_loader(cfg, DATASETS, converter)
    iterator = iter(loader)
    next(iterator)  # untimed: the first batch
    start = time.process_time()
    for _ in range(batches):
        next(iterator)
    return time.process_time() - start


def demo_stream(args, converter) -> dict:
    overrides = [f"data_root={args.data_root}", f"rare_class_min_pixels={DEMO_MIN_PIXELS}", "generate_demo_world=False"]
    plain = load_config(REPO / "config" / "train" / "demo.yaml", [*overrides, "rare_class_sampling=False"])
    rcs = load_config(REPO / "config" / "train" / "demo.yaml", [*overrides, "rare_class_sampling=True"])
    started = time.perf_counter()
    build_train_loader(rcs, DATASETS, converter)  # counts (or finds) the class statistics
    first_build = time.perf_counter() - started
    times = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode, cfg in (("off", plain), ("on", rcs)):
            times[mode].append(loader_seconds(cfg, converter, args.batches))
    crops = args.batches * plain.TRAIN.batch_size
    median = {mode: statistics.median(values) for mode, values in times.items()}
    return {
        "crops_per_repeat": crops, "crop": [plain.TRAIN.train_h, plain.TRAIN.train_w], "short_size": plain.TRAIN.short_size,
        "crops_per_cpu_s": {mode: round(crops / median[mode], 1) for mode in median},
        "cpu_seconds_per_repeat": {mode: [round(v, 3) for v in values] for mode, values in times.items()},
        "relative_cost": round(median["on"] / median["off"] - 1, 4),
        "first_loader_build_s": round(first_build, 3),
    }


def sample_1080p(args, converter) -> dict:
    image, world = demo_world.render_world("mapillary-public65", 0, "train", 3)
    label = demo_world.dataset_label_table("mapillary-public65")[world]
    image = cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (1920, 1080), interpolation=cv2.INTER_NEAREST)
    augment = AugmentConfig(713, 713, 1080, 0.5, 2.0, -10.0, 10.0, 0.5, 0.5, 0.5)  # the 1080 release's recipe
    table = rare_class.one_hot_table(converter, "mapillary-public65")
    with tempfile.TemporaryDirectory() as tmp:
        image_path, label_path = Path(tmp) / "image.jpg", Path(tmp) / "label.png"
        cv2.imwrite(str(image_path), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(label_path), label)
        counts = [rare_class.count_classes(label, table, converter.num_classes)]
        plan = rare_class.RareClassPlan(["mapillary-public65"], [rare_class.stats_from_counts(counts, converter.num_classes, "1080p")],
                                        [table], np.ones(1), 0.01, 1)
        reader = TrainSampleReader(["mapillary-public65"], [[(image_path, label_path)]], augment, converter, 0, rare_classes=plan)
        cases = {"no rare class": -1, "guard_rail": converter.name_to_id["guard_rail"], "road": converter.name_to_id["road"]}
        shares = {name: float((table[label] == c).mean()) for name, c in cases.items() if c >= 0}
        times = {name: [] for name in cases}
        for position in range(args.samples):
            order = list(cases.items())
            for name, c in order if position % 2 else order[::-1]:  # neither case always runs first
                start = time.process_time()
                reader.load(0, 0, position, c)
                times[name].append(time.process_time() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "label_size": [1080, 1920], "crop": [713, 713], "samples": args.samples,
        "class_pixel_share": {name: round(v, 5) for name, v in shares.items()},
        "cpu_ms_per_sample": {name: round(1000 * v, 2) for name, v in median.items()},
        "relative_cost": {name: round(median[name] / median["no rare class"] - 1, 4) for name in cases if name != "no rare class"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--data-root", default="output/demo_data")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = [round(v, 2) for v in os.getloadavg()]
    demo_world.generate(args.data_root)
    converter = build_taxonomy_converter("universal", DATASETS, [])
    result = {
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread, loader in-process (workers=0)",
        "timing": "CPU time of this process (time.process_time): the loader's own work, robust to other load on a shared machine",
        "demo_stream": demo_stream(args, converter),
        "sample_1080p": sample_1080p(args, converter),
        "load": {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
