"""The training step's loss head alone: 1/4-resolution logits -> upsampled logits -> per-pixel cross-entropy -> the
gradient of the logits, old against new, eager and compiled. Prints a JSON line per variant, then one with them all.

Variants (each in a fresh subprocess: its own peak memory, compile state):

- ``interpolate``: the head before the x4 arithmetic: ``F.interpolate(low.float(), align_corners=True)`` in the
  logits' memory format, then ``cross_entropy_pixels`` (its channels-last rows path);
- ``x4``: ``UpsampledPixelLoss(cross_entropy_pixels)`` as the plain step runs it eagerly (exact x4, NHWC);
- ``interpolate_compiled`` / ``x4_compiled``: the same under ``torch.compile(dynamic=False)`` (``x4_compiled`` is
  what ``TRAIN.compile`` runs: log-sum-exp fused with the upsampling).

    python benchmarks/bench_loss_head.py --crop 713 --batch 16 --dtype bf16 --device cuda      # the W48 step's head
    python benchmarks/bench_loss_head.py --crop 257 --batch 2 --threads 1 --variants interpolate x4   # on a CPU

Times are per step (forward + backward of the head), the minimum over ``--repeats`` runs of ``--iters`` steps (on a
CPU with one thread also the thread's CPU time, which other processes on a shared machine sway less);
memory is the peak above what the inputs take (CUDA: the allocator's peak; CPU: the largest resident memory sampled
every millisecond during one step, in a separate child).
``max_abs_diff`` compares each variant's per-pixel loss and logit gradient with the first variant's.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("interpolate", "x4", "interpolate_compiled", "x4_compiled")
# CPU memory is measured in a child of its own with a fixed mmap threshold: glibc would otherwise raise the threshold
# after the first large free and keep later tensors in its heap, which the resident size then does not follow (the
# timed child keeps glibc's defaults: every tensor mapped afresh would cost page faults)
CPU_MEMORY_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")


def make_head(variant: str):
    import torch
    import torch.nn.functional as F

    from mseg_semantic.training.gradients.common import UpsampledPixelLoss, cross_entropy_pixels

    if variant.startswith("x4"):
        head = UpsampledPixelLoss(cross_entropy_pixels)
    else:
        def head(low, labels):
            return cross_entropy_pixels(F.interpolate(low.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True), labels)
    return torch.compile(head, dynamic=False) if variant.endswith("_compiled") else head


def inputs(args, device):
    import torch

    g = torch.Generator().manual_seed(0)
    low_size = (args.crop + 3) // 4  # HRNet's logits of a crop of 4k + 1 pixels: k + 1
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    low = (torch.randn(args.batch, args.classes, low_size, low_size, generator=g) * 3).to(device=device, dtype=dtype)
    low = low.contiguous(memory_format=torch.channels_last)  # the model's output under channels_last training
    labels = torch.randint(0, args.classes, (args.batch, args.crop, args.crop), generator=g)
    labels[:, : args.crop // 8] = 255
    return low, labels.to(device)


class RSSSampler:
    """The largest resident memory seen while the block runs, sampled every millisecond by a thread (large tensors
    are mapped and unmapped as they are allocated and freed, so the resident size follows them)."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s, self.peak_mb = interval_s, 0.0

    def __enter__(self):
        import threading

        from timing import rss_mb

        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, rss_mb())
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_variant(args, variant: str, save: str | None, memory_only: bool) -> dict:
    """Time the variant (and on CUDA its allocator peak); ``memory_only`` (a CPU child started with a fixed mmap
    threshold): one step with the resident size sampled."""
    import torch

    from timing import rss_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    low, labels = inputs(args, device)
    head = make_head(variant)

    def step():
        x = low.detach().requires_grad_()
        pixel_loss, valid = head(x, labels)
        (pixel_loss.sum() / valid.sum().clamp(min=1)).backward()
        return pixel_loss, x.grad

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    for _ in range(args.warmup):
        pixel_loss, grad = step()
    sync()
    warmup_s = time.perf_counter() - started
    del pixel_loss, grad
    if memory_only:
        base = rss_mb()
        with RSSSampler() as sampler:  # the process's own peak would count the compiler's memory
            pixel_loss, grad = step()
        return {"variant": variant, "peak_above_inputs_mib": round(sampler.peak_mb - base, 1)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        for _ in range(args.iters):
            pixel_loss, grad = step()
        sync()
        best = min(best, (time.perf_counter() - start) / args.iters)
        best_cpu = min(best_cpu, (time.thread_time() - start_cpu) / args.iters)
    if save:
        torch.save({"loss": pixel_loss.detach().float().cpu(), "grad": grad.float().cpu()}, save)
    result = {"variant": variant, "ms_per_step": round(1000 * best, 3), "warmup_s": round(warmup_s, 1)}
    if device.type == "cuda":
        result["peak_above_inputs_mib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
    elif torch.get_num_threads() == 1:  # the CPU time of this thread: less swayed by a shared machine
        result["thread_cpu_ms_per_step"] = round(1000 * best_cpu, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=257, help="crop side; 4k + 1 takes the exact x4 path (713 = 4 * 178 + 1)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=194)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="of the 1/4-resolution logits (bf16: autocast's output)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_variant(args, args.one, args.save, args.memory_only)), flush=True)
        return 0
    import torch

    from timing import argv_without

    passthrough = argv_without("--variants", argv)  # each child runs one variant
    results, reference, failed = [], None, False
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            save = str(Path(tmp) / f"{variant}.pt")
            done = subprocess.run([sys.executable, __file__, *passthrough, "--one", variant, "--save", save], capture_output=True, text=True)
            if done.returncode == 0 and not args.device.startswith("cuda"):
                memory = subprocess.run([sys.executable, __file__, *passthrough, "--one", variant, "--memory-only"], capture_output=True,
                                        text=True, env=CPU_MEMORY_ENV)
                done = memory if memory.returncode != 0 else done
            if done.returncode != 0:
                failed = True
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                results.append({"variant": variant, "error": last[:400]})
                continue
            entry = json.loads(done.stdout.strip().splitlines()[-1])
            if not args.device.startswith("cuda"):
                entry.update(json.loads(memory.stdout.strip().splitlines()[-1]))
            saved = torch.load(save)
            if reference is None:
                reference = saved
            entry["loss_max_abs_diff"] = float((saved["loss"] - reference["loss"]).abs().max())
            entry["grad_max_abs_diff"] = float((saved["grad"] - reference["grad"]).abs().max())
            entry["grad_max_abs"] = float(reference["grad"].abs().max())
            results.append(entry)
            print(json.dumps({"benchmark": "loss_head_variant", **entry}), flush=True)  # kept if a later variant hangs
    device = args.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    print(json.dumps({"benchmark": "loss_head", "device": device, "torch": torch.__version__, "crop": args.crop, "batch": args.batch,
                      "classes": args.classes, "logits_dtype": args.dtype, "threads": args.threads, "iters": args.iters,
                      "repeats": args.repeats, "variants": results}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
