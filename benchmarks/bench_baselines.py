"""Cost of the baselines' backward steps against plain cross-entropy. Prints one JSON line per method.

Each line: method, model, device, crop, batch, datasets (tasks / domains, spread evenly over the batch),
step_ms (median forward + backward of the step, no optimizer, over --iters after --warmup),
ratio_to_ce (step_ms / the CE step's), peak_mem_mb (CUDA only: max allocated during the method's steps).
MGDA costs one backward pass per task plus the Gram matrix; CCSA one backward plus pair sampling.

  python benchmarks/bench_baselines.py --model hrnet_tiny --crop 128 --batch 6 --datasets 3 --device cpu
  python benchmarks/bench_baselines.py --model hrnet_w48 --crop 713 --batch 7 --datasets 7 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_tiny")
    parser.add_argument("--num-classes", type=int, default=194)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--methods", nargs="+", default=["ce", "mgda", "ccsa"], choices=["ce", "mgda", "ccsa"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch

    import functools

    from mseg_semantic.config import load_config
    from mseg_semantic.model import autocast_context, build_model
    from mseg_semantic.training.gradients import StepContext, backward_step_for

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.num_classes).to(device).train()
    images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch, args.crop, args.crop), device=device)
    dataset_index = (torch.arange(args.batch, device=device) % args.datasets).long()
    autocast = functools.partial(autocast_context, args.precision, device.type)
    cfg = load_config()  # each method's options at their defaults (MSeg's values)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    baseline_ms = None
    for method in args.methods:
        step = backward_step_for(method, cfg)
        ctx = StepContext(num_datasets=args.datasets, autocast=autocast)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(args.warmup + args.iters):
            model.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            step(model, images, labels, dataset_index, ctx)
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1000)
        step_ms = statistics.median(times)
        if method == "ce":
            baseline_ms = step_ms
        result = dict(
            method=method, model=args.model, device=str(device), precision=args.precision, crop=args.crop,
            batch=args.batch, datasets=args.datasets, step_ms=round(step_ms, 2),
            ratio_to_ce=round(step_ms / baseline_ms, 2) if baseline_ms else None,
            peak_mem_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
