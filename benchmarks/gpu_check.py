"""Every GPU figure of the performance table, and the CUDA tests, in one call: for a GPU machine's short lease.

    python benchmarks/gpu_check.py --out gpu_check.json              # on the GPU machine (a few minutes)
    python benchmarks/gpu_check.py --quick --out /tmp/check.json     # CPU dry run at tiny sizes: checks the script

Each job runs in its own subprocess with a time limit, so one slow or failing job costs only itself; every result
(or error) is one JSON object in the list written to ``--out`` and printed as it finishes. Jobs:

  step_*       benchmarks/bench_step.py: the trainer's step on in-memory batches (HRNet-W48 713 x 713 bf16 +
               channels_last at batch 16 and 8, fp32 at batch 2; the demo's hrnet_w18_small), eager vs
               TRAIN.compile vs TRAIN.cuda_graphs
  numerics     bf16 training step vs fp32 on the same weights and batch (loss and gradient agreement)
  loader_fed   benchmarks/bench_train.py on a world of 1080p JPEGs written first (15 workers, batch 15, bf16 + CL)
  demo_loader  benchmarks/bench_train.py with config/train/demo.yaml (the loader-fed demo), eager vs cuda_graphs
  inference    benchmarks/bench_inference.py at 1080 x 1920, base 1080, 713 windows, flip, bf16
  cuda_tests   pytest -m gpu (and every test that skips without CUDA)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _jobs(quick: bool, world: Path) -> list[tuple[str, list[str], float]]:
    py = sys.executable
    w48 = ["--model", "hrnet_tiny", "--crop", "64"] if quick else ["--model", "hrnet_w48", "--crop", "713"]
    short = ["--warmup", "1", "--iters", "2"] if quick else ["--warmup", "5", "--iters", "20"]
    all_variants = ["eager", "compile", "cuda_graphs", "compile+cuda_graphs"]
    loader_overrides = [f"data_root={world}", "dataset=[cityscapes-19,ade20k-150,mapillary-public65]", "dataset_gpu_mapping=null",
                        "precision=bf16", "channels_last=True"]
    return [
        ("step_w48_bf16_cl_b16", [py, str(BENCH / "bench_step.py"), *w48, "--batch", "2" if quick else "16", "--precision", "bf16",
                                  "--channels-last", *short, "--variants", "eager", "compile", "cuda_graphs"], 420),
        ("step_w48_bf16_cl_b8", [py, str(BENCH / "bench_step.py"), *w48, "--batch", "2" if quick else "8", "--precision", "bf16",
                                 "--channels-last", *short, "--variants", *all_variants], 300),
        ("step_w48_fp32_b2", [py, str(BENCH / "bench_step.py"), *w48, "--batch", "2", "--precision", "fp32", *short,
                              "--variants", "eager", "cuda_graphs"], 240),
        ("step_demo_model", [py, str(BENCH / "bench_step.py"), "--model", "hrnet_w18_small", "--crop", "96", "--batch", "6",
                             "--precision", "fp32", *short, "--variants", "eager", "cuda_graphs", "compile+cuda_graphs"], 240),
        ("numerics", [py, __file__, "--numerics", *(["--quick"] if quick else [])], 120),
        ("loader_fed", [py, str(BENCH / "bench_train.py"), "--config", "config/train/1080_release/mseg-relabeled-1m.yaml",
                        "--warmup", "2" if quick else "5", "--iters", "2" if quick else "30", *loader_overrides,
                        "batch_size=3" if quick else "batch_size=15", "workers=2" if quick else "workers=15",
                        *(["model=hrnet_tiny", "train_h=64", "train_w=64", "short_size=96"] if quick else [])], 420),
        ("demo_loader_eager", [py, str(BENCH / "bench_train.py"), "--config", "config/train/demo.yaml", "--warmup", "5",
                               "--iters", "5" if quick else "60", "data_root=output/demo_data", "cpu_threads=null", "workers=4"], 240),
        ("demo_loader_cuda_graphs", [py, str(BENCH / "bench_train.py"), "--config", "config/train/demo.yaml", "--warmup", "5",
                                     "--iters", "5" if quick else "60", "data_root=output/demo_data", "cpu_threads=null",
                                     "workers=4", *([] if quick else ["cuda_graphs=True"])], 240),
        ("inference_1080p", [py, str(BENCH / "bench_inference.py"), *(["--model", "hrnet_tiny", "--height", "96", "--width", "128",
                             "--base-size", "96", "--crop", "64"] if quick else ["--model", "hrnet_w48", "--height", "1080",
                             "--width", "1920", "--base-size", "1080", "--crop", "713", "--precision", "bf16"]),
                             "--window-batch", "12", "--device", "cpu" if quick else "cuda"], 300),
        ("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"], 600),
    ]


def numerics(quick: bool) -> dict:
    """The bf16 + channels_last training step against fp32 on the same weights and batch (the speed options keep these)."""
    import torch

    sys.path.insert(0, str(REPO))
    from mseg_semantic.model import autocast_context, build_model
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step

    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    name, batch, crop = ("hrnet_tiny", 2, 64) if quick else ("hrnet_w48", 2, 513)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(0, 194, (batch, crop, crop), generator=g).to(device)
    grads, losses = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(name, 194).to(device)
        for p in model.parameters():
            if p.dim() > 1:  # weights of a trained network's scale, not the initial N(0, 0.001)
                torch.nn.init.normal_(p, std=0.05)
        fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        ctx = StepContext(num_datasets=1, autocast=lambda: autocast_context(precision, device.type))
        out = ce_backward_step(model, images.contiguous(memory_format=fmt), labels, torch.zeros(batch, dtype=torch.long, device=device), ctx)
        losses[precision] = float(out.loss)
        grads[precision] = torch.cat([p.grad.flatten().float() for p in model.parameters()])
    a, b = grads["fp32"], grads["bf16"]
    return {"job": "numerics", "model": name, "loss_fp32": losses["fp32"], "loss_bf16": losses["bf16"],
            "grad_cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)), "grad_rel_l2": float((a - b).norm() / a.norm()),
            "device": str(device)}


def write_1080p_world(root: Path, per_dataset: int) -> None:
    """The synthetic world's scenes, upscaled to 1080 x 1920 JPEGs (what the loader decodes in a real run)."""
    import cv2

    sys.path.insert(0, str(REPO))
    from mseg_semantic.atomic import atomic_write_text
    from mseg_semantic.data.catalog import DATASET_DIRS, default_list_file
    from mseg_semantic.data.demo_world import render_sample

    for name in ("cityscapes-19", "ade20k-150", "mapillary-public65"):
        lines = []
        for i in range(per_dataset):
            image, label = render_sample(name, 0, "train", i)
            image = cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (1920, 1080), interpolation=cv2.INTER_NEAREST)
            rel_image, rel_label = f"hd/images/{i:04d}.jpg", f"hd/labels/{i:04d}.png"
            out = root / DATASET_DIRS[name]
            (out / rel_image).parent.mkdir(parents=True, exist_ok=True)
            (out / rel_label).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel_image), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(out / rel_label), label)
            lines.append(f"{rel_image} {rel_label}\n")
        atomic_write_text(default_list_file(root, name, "train"), "".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--only", nargs="*", help="job names to run (default: all)")
    parser.add_argument("--numerics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.numerics:
        print(json.dumps(numerics(args.quick)), flush=True)
        return 0
    results = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world_1080p"
        jobs = [job for job in _jobs(args.quick, world) if not args.only or job[0] in args.only]
        if any(name == "loader_fed" for name, _, _ in jobs):
            started = time.perf_counter()
            write_1080p_world(world, 4 if args.quick else 40)
            results.append({"job": "write_1080p_world", "seconds": round(time.perf_counter() - started, 1)})
        for name, command, limit in jobs:
            started = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
                lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
                parsed = []
                for line in lines:
                    try:
                        parsed.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
                if not parsed and done.stdout.strip().startswith("{"):
                    parsed = [json.loads(done.stdout)]  # bench_train prints one indented object
                entry = {"job": name, "returncode": done.returncode, "results": parsed}
                if done.returncode != 0 or not parsed:
                    entry["tail"] = (done.stdout + done.stderr)[-1500:]
            except subprocess.TimeoutExpired:
                entry = {"job": name, "error": f"timed out after {limit} s"}
            entry["seconds"] = round(time.perf_counter() - started, 1)
            results.append(entry)
            print(json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
