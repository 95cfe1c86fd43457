"""Label-conversion speed: TaxonomyConverter.transform_label on a 1080x1920 uint8 label, one thread.

Prints JSON with Gpixel/s for ours (numpy uint8, strict unknown-id check; unknown='ignore'; torch uint8 input;
naive taxonomy with uint16 output) and for a torch int64 lookup-table baseline (MSeg's way: int64 label,
int64 table, `table[label]`). Usage: python benchmarks/bench_taxonomy.py [--repeats 50] [--dataset NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np
import torch

from mseg_semantic.taxonomy import NaiveTaxonomyConverter, TaxonomyConverter, load_class_names


def best_seconds(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--dataset", default="mapillary-public65")
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    num_classes = len(load_class_names(args.dataset))
    label = rng.integers(0, num_classes, size=(args.height, args.width), dtype=np.uint8)
    label[rng.random(label.shape) < 0.05] = 255
    pixels = label.size

    conv = TaxonomyConverter(train_datasets=[args.dataset], test_datasets=[])
    naive = NaiveTaxonomyConverter(test_datasets=[])
    naive_dataset = args.dataset if args.dataset in naive.train_datasets else "mapillary-public65"
    naive_label = np.where(label == 255, label, label % len(load_class_names(naive_dataset))).astype(np.uint8)
    label_torch_u8 = torch.from_numpy(label)
    label_int64 = label_torch_u8.long()
    table = torch.zeros(256, dtype=torch.int64)
    for src, dst in conv.id_to_uid_maps[args.dataset].items():
        table[src] = dst

    expected = table[label_int64].numpy()
    assert np.array_equal(conv.transform_label(label, args.dataset), expected)

    cases = {
        "ours_numpy_uint8_strict": lambda: conv.transform_label(label, args.dataset),
        "ours_numpy_uint8_ignore": lambda: conv.transform_label(label, args.dataset, unknown="ignore"),
        "ours_torch_uint8_strict": lambda: conv.transform_label(label_torch_u8, args.dataset),
        "ours_naive_numpy_uint16_strict": lambda: naive.transform_label(naive_label, naive_dataset),
        "baseline_torch_int64_lut": lambda: table[label_int64],
    }
    results = {}
    for name, fn in cases.items():
        best, median = best_seconds(fn, args.repeats)
        results[name] = {"gpix_per_s_best": round(pixels / best / 1e9, 3),
                         "gpix_per_s_median": round(pixels / median / 1e9, 3),
                         "ms_median": round(median * 1e3, 3)}

    print(json.dumps({
        "benchmark": "taxonomy.transform_label",
        "label": f"{args.height}x{args.width} uint8, dataset {args.dataset}, 5% ignore pixels",
        "threads": {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads()},
        "repeats": args.repeats,
        "gpix_per_s": results["ours_numpy_uint8_strict"]["gpix_per_s_median"],
        "baseline_gpix_per_s": results["baseline_torch_int64_lut"]["gpix_per_s_median"],
        "cases": results,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": {"numpy": np.__version__, "torch": torch.__version__, "cv2": cv2.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
