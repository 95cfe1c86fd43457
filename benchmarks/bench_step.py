"""The trainer's own training step (the real loop, model, fused SGD, loss and reporting) on in-memory batches:
crops/s, ms per step and peak memory of each speed option. Prints one JSON line per variant.

    python benchmarks/bench_step.py --model hrnet_w48 --crop 713 --batch 16 --precision bf16 --channels-last \\
        --variants eager compile cuda_graphs compile+cuda_graphs
    python benchmarks/bench_step.py --model hrnet_w18_small --crop 96 --batch 6 --precision fp32 --variants eager cuda_graphs
    python benchmarks/bench_step.py --model dinov2_vitl14 --crop 714 --batch 5 --precision bf16 --optimizer adamw \
        --layer-decay 0.9 --variants eager compile cuda_graphs                   # the DINOv2 release config's step
    python benchmarks/bench_step.py --model dinov2_vitb14 --backbone-mode adapters --crop 714 --batch 16 --precision bf16 \
        --optimizer adamw                                                        # the one-GPU adapters config's step

The model, parameter groups and optimizer are built as the trainer builds them (``set_backbone_mode`` for a DINOv2
model, :func:`~mseg_semantic.training.optim.parameter_groups`, :func:`~mseg_semantic.training.optim.build_optimizer`).

The data loader is left out (``bench_train.py`` measures the loader-fed loop): every iteration takes the same
uint8 images and labels from memory, so the figure is what the GPU and the host's launches allow. Each variant runs
in a fresh subprocess (its own peak memory and compile state). ``print_freq`` is the trainer's 10: the loss is read
back every 10th iteration, as in a real run. The first ``--warmup`` iterations (cuDNN autotuning, compilation,
graph capture) are not timed; their seconds are reported as ``warmup_s``. ``--profile-iters N`` runs N more steps
under torch.profiler and adds ``profile``: kernels and device time per step by category (profile_summary.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("eager", "compile", "cuda_graphs", "compile+cuda_graphs")


class MemoryBatches:
    """The loader contract (uint8 images, narrow labels, dataset index) from one fixed batch."""

    def __init__(self, batch: int, crop: int, num_classes: int, datasets: int = 3):
        import torch

        g = torch.Generator().manual_seed(0)
        self.batch = {
            "image": torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=g),
            "label": torch.randint(0, num_classes, (batch, crop, crop), generator=g).to(torch.uint8),
            "dataset_index": torch.arange(batch) % datasets,
        }
        self.batch["label"][:, : crop // 8] = 255

    def __iter__(self):
        while True:
            yield self.batch

    def state_dict(self):
        return {}


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    import torch

    from mseg_semantic.model import DINOV2_SPECS, autocast_context, build_model, set_backbone_mode
    from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts
    from mseg_semantic.distributed import DistInfo
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
    from mseg_semantic.training.loop import LoopSettings, train_loop
    from mseg_semantic.training.optim import PolyLR, build_optimizer, parameter_groups
    from mseg_semantic.training.report import TrainingReporter
    from mseg_semantic.training.run import configure_kernels
    from mseg_semantic.training.gradients.common import cross_entropy_pixels
    from mseg_semantic.training.speed import compile_loss_head, compile_regions

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    configure_kernels(device)
    graphs = "cuda_graphs" in variant
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.num_classes)
    if args.model in DINOV2_SPECS:
        set_backbone_mode(model, args.backbone_mode)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = ce_backward_step
    if "compile" in variant:  # as TRAIN.compile does: the repeated regions and the upsample-and-loss head
        compile_regions(model)
        step = functools.partial(ce_backward_step, loss_head=compile_loss_head(cross_entropy_pixels))
    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 1e-4)
    fused = device.type == "cuda" or graphs
    groups = parameter_groups(model, lr, 1e-4 if args.optimizer == "sgd" else 0.05, args.layer_decay)
    optimizer = build_optimizer(args.optimizer, groups, fused=fused, lr_on_device=device if graphs else None)
    total = args.warmup + args.iters + args.profile_iters
    parts = TrainingParts(model, optimizer, PolyLR(optimizer, total + 1), None, MemoryBatches(args.batch, args.crop, args.num_classes))
    ctx = StepContext(num_datasets=3, dataset_names=["a", "b", "c"],
                      autocast=functools.partial(autocast_context, args.precision, device.type, cache_enabled=not graphs))
    info = DistInfo(device=device)
    marks: dict[str, float] = {}
    profiler = None
    if args.profile_iters:
        from torch.profiler import ProfilerActivity, profile

        # on a GPU its kernels only: recording every host operator of thousands of launches would slow the steps
        profiler = profile(activities=[ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU])

    def hook(done, stats):
        if done == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            marks["start"] = time.perf_counter()
        if done == args.warmup + args.iters:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks["end"] = time.perf_counter()
            if profiler is not None:
                profiler.start()
                marks["profile_start"] = time.perf_counter()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        settings = LoopSettings(max_iters=total, checkpoint_every=10**9, channels_last=args.channels_last, cuda_graphs=graphs)
        reporter = TrainingReporter(tmp, False, 0, total, args.batch, device, print_freq=10, tensorboard=False)
        checkpointer = Checkpointer(Path(tmp), info)
        checkpointer.save = lambda parts, iteration: None  # timing the step, not the disk
        train_loop(parts, step, ctx, checkpointer, settings, info, reporter, hooks=[hook])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    profile_summary = None
    if profiler is not None:
        from profile_summary import profiler_kernels, summarise

        profile_wall_ms = 1000 * (time.perf_counter() - marks["profile_start"])
        profiler.stop()
        profile_summary = summarise(profiler_kernels(profiler, device.type), args.profile_iters, profile_wall_ms)
    seconds = marks["end"] - marks["start"]
    result = {
        "variant": variant, "model": args.model, "crop": args.crop, "batch": args.batch, "precision": args.precision,
        "optimizer": args.optimizer, "layer_decay": args.layer_decay,
        **({"backbone_mode": args.backbone_mode} if args.model in DINOV2_SPECS else {}),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "channels_last": args.channels_last, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "timed_iterations": args.iters, "ms_per_step": round(1000 * seconds / args.iters, 2),
        "crops_per_s": round(args.batch * args.iters / seconds, 2), "warmup_s": round(marks["start"] - started, 1),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        # a captured graph's tensors live in its private pool, allocated before the timed steps: reserved counts them
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    if profile_summary is not None:
        result["profile"] = profile_summary
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_w48")
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--num-classes", type=int, default=194)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--lr", type=float, default=None, help="default: 0.01 for SGD, 1e-4 for AdamW")
    parser.add_argument("--layer-decay", type=float, default=1.0, help="dinov2 models only")
    parser.add_argument("--backbone-mode", default="finetune", choices=["finetune", "frozen", "adapters"], help="dinov2 models only")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--profile-iters", type=int, default=0, help="then profile this many steps: kernels and time by category")
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=VARIANTS)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is present (cuda_graphs: the eager static step)")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_variant(args, args.one)), flush=True)
        return 0
    from timing import argv_without

    passthrough = argv_without("--variants", argv)  # each child runs one variant
    failed = False
    for variant in args.variants:
        done = subprocess.run([sys.executable, __file__, *passthrough, "--one", variant], capture_output=True, text=True)
        if done.returncode == 0:
            print(done.stdout.strip().splitlines()[-1], flush=True)
        else:
            failed = True
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(json.dumps({"variant": variant, "model": args.model, "batch": args.batch, "error": last[:400]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
