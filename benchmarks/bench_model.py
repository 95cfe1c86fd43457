"""Speed and memory of the HRNet widths: params, forward, training step, peak memory. Prints JSON lines.

One line per (model, device, dtype, memory format):
  params            parameters at --num-classes
  fwd_ms            inference forward (eval mode, no grad), median over --iters
  fwd_bwd_ms        training step: forward + cross-entropy + backward + SGD step (train mode), median
  train_crops_per_s batch / fwd_bwd_ms
  peak_mem_mb       CUDA: torch.cuda.max_memory_allocated during the training steps;
                    CPU: growth of the process's peak RSS over its size before the model was built
Each configuration runs in a fresh subprocess so that peak memory is its own.

  python benchmarks/bench_model.py --models hrnet_w18_small hrnet_w18 --crop 256 --batch 2 --device cpu
  python benchmarks/bench_model.py --models hrnet_w48 --crop 713 --batch 2 --device cuda --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from timing import peak_rss_mb, rss_mb, step_times_ms


def run_one(model_name: str, device: str, dtype: str, memory_format: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from mseg_semantic.model import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    result = dict(
        model=model_name,
        device=device,
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        dtype=dtype,
        memory_format=memory_format,
        crop=args.crop,
        batch=args.batch,
        iters=args.iters,
        torch=torch.__version__,
    )
    rss_before = rss_mb()
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = build_model(model_name, num_classes=args.num_classes).to(dev).to(memory_format=fmt)
    result["params"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=dev).contiguous(memory_format=fmt)
    labels = torch.randint(0, args.num_classes, (args.batch, args.crop, args.crop), device=dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def timed(step) -> float:
        return statistics.median(step_times_ms(step, dev, args.warmup, args.iters))

    def forward():
        with torch.inference_mode(), autocast:
            model(x)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        F.cross_entropy(logits.float(), labels, ignore_index=255).backward()
        optimizer.step()

    model.eval()
    result["fwd_ms"] = round(timed(forward), 2)
    model.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result["fwd_bwd_ms"] = round(timed(train_step), 2)
    result["train_crops_per_s"] = round(args.batch / (result["fwd_bwd_ms"] / 1000), 3)
    if dev.type == "cuda":
        result["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        result["peak_mem_kind"] = "cuda max_memory_allocated (training step)"
    else:
        result["peak_mem_mb"] = round(peak_rss_mb() - rss_before, 1)
        result["peak_mem_kind"] = "peak RSS growth (forward + training step)"
    return result


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | device | dtype | memory format | crop x batch | params | fwd ms | fwd+bwd ms | crops/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['device']} | {r['dtype']} | {r['memory_format']} | | | error: {r['error'][:60]} | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['device_name']} | {r['dtype']} | {r['memory_format']} | {r['crop']} x {r['batch']} | "
            f"{r['params']:,} | {r['fwd_ms']} | {r['fwd_bwd_ms']} | {r['train_crops_per_s']} | {r['peak_mem_mb']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["hrnet_w18_small", "hrnet_w18", "hrnet_w32", "hrnet_w48"])
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "all"],
                        help="auto: cuda when present, else cpu; all: cpu and cuda when present")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--memory-formats", nargs="+", default=["contiguous", "channels_last"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--num-classes", type=int, default=194)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--table", action="store_true", help="also print a Markdown table to stderr at the end")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "DEVICE", "DTYPE", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(*args.one, args)), flush=True)
        return 0

    import torch

    has_cuda = torch.cuda.is_available()
    if args.device == "auto":
        devices = ["cuda" if has_cuda else "cpu"]
    elif args.device == "all":
        devices = ["cpu"] + (["cuda"] if has_cuda else [])
    else:
        devices = [args.device]
    if "cuda" in devices and not has_cuda:
        parser.error("--device cuda: no CUDA device is available")

    passthrough = [
        "--crop", str(args.crop), "--batch", str(args.batch), "--iters", str(args.iters),
        "--warmup", str(args.warmup), "--num-classes", str(args.num_classes), "--threads", str(args.threads),
    ]  # fmt: skip
    rows = []
    for model in args.models:
        for device in devices:
            for dtype in args.dtypes:
                for memory_format in args.memory_formats:
                    command = [sys.executable, __file__, *passthrough, "--one", model, device, dtype, memory_format]
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode == 0:
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                    else:
                        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                        row = dict(model=model, device=device, dtype=dtype, memory_format=memory_format, error=last)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.table:
        print(_table(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
