"""Throughput and peak memory of full training steps (data loading included) for a training config; prints JSON.

    python benchmarks/bench_train.py --config config/train/demo.yaml
    python benchmarks/bench_train.py --config config/train/1080_release/mseg-relabeled-1m.yaml \\
        data_root=output/demo_data generate_demo_world=True dataset=[cityscapes-19,ade20k-150,mapillary-public65] \\
        dataset_gpu_mapping=null batch_size=4 workers=12 precision=bf16 channels_last=True
    torchrun --nproc_per_node 8 benchmarks/bench_train.py --config ... (figures per GPU and in total)

It builds exactly what ``mseg-train`` builds (model, optimizer, real data loader, backward step) and runs the
training loop for ``--warmup`` + ``--iters`` iterations; only the last ``--iters`` are timed. The model starts
from random weights (``weights`` is ignored: it does not change the speed). On a GPU it also reports how busy
the GPU was (NVML's utilisation, sampled every 100 ms) and the fraction of the time the loop waited for data:
a loader that keeps up has a data-wait fraction near 0 and the GPU busy > 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mseg_semantic.config import ConfigError, load_config  # noqa: E402
from mseg_semantic.training.checkpoint import Checkpointer  # noqa: E402
from mseg_semantic.distributed import all_gather_objects, init_distributed, shutdown_distributed  # noqa: E402
from mseg_semantic.training.loop import LoopSettings, LoopStats, train_loop  # noqa: E402
from mseg_semantic.training.report import TrainingReporter, setup_logging  # noqa: E402
from mseg_semantic.data import demo_world  # noqa: E402
from mseg_semantic.training.run import build_stage, configure_kernels, resolve_run  # noqa: E402


class GpuBusySampler:
    """Mean GPU utilisation (percent of time a kernel ran) over a window, from NVML or nvidia-smi."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.device, self.interval = device, interval
        self.samples: list[float] = []
        self.source = None
        self._stop = threading.Event()
        self._thread = None
        try:
            torch.cuda.utilization(device)
            self.source = "nvml"
        except Exception:
            if self._nvidia_smi() is not None:
                self.source = "nvidia-smi"

    def _nvidia_smi(self) -> float | None:
        index = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[self.device.index or 0] if os.environ.get("CUDA_VISIBLE_DEVICES") else str(self.device.index or 0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", index],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = torch.cuda.utilization(self.device) if self.source == "nvml" else self._nvidia_smi()
            if value is not None:
                self.samples.append(float(value))
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self.source is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/train/demo.yaml")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first (cuDNN autotuning, loader start-up)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"bench_train: error: {exc}", file=sys.stderr)
        return 2
    total = args.warmup + args.iters
    cfg = cfg.updated({"TRAIN.weights": None, "TRAIN.resume": None, "TRAIN.max_iters": total, "TRAIN.tensorboard": False})
    info = init_distributed(cfg.Distributed.dist_backend)
    setup_logging(None, False)  # warnings only: the JSON is the output
    try:
        configure_kernels(info.device, cfg.TRAIN.cpu_threads)
        demo_world.write_if_asked(cfg.DATA, info)
        run = build_stage(cfg, info, resolve_run(cfg, info.world_size, info.local_world_size))
        sampler = GpuBusySampler(info.device) if info.device.type == "cuda" else None
        marks: dict[str, float] = {}

        def on_iteration(done: int, stats: LoopStats) -> None:
            if done not in (args.warmup, total):
                return  # no sync between the marks: the loop runs ahead of the GPU as in a real run
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            if done == args.warmup:
                marks["start"], marks["wait_start"] = time.perf_counter(), stats.data_wait_seconds
                if info.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(info.device)
                if sampler is not None:
                    sampler.start()
            if done == total:
                marks["end"], marks["wait_end"] = time.perf_counter(), stats.data_wait_seconds

        with tempfile.TemporaryDirectory() as tmp:
            settings = LoopSettings(max_iters=total, checkpoint_every=total + 1, grad_clip=cfg.TRAIN.grad_clip,
                                    channels_last=cfg.TRAIN.channels_last, freeze_bn=cfg.TRAIN.freeze_bn, cuda_graphs=cfg.TRAIN.cuda_graphs)
            reporter = TrainingReporter(tmp, False, 0, total, run.setup.batch_size, info.device, print_freq=cfg.TRAIN.print_freq,
                                        tensorboard=False)
            if args.warmup == 0:
                on_iteration(0, LoopStats())
            train_loop(run.parts, run.step, run.step_context, Checkpointer(Path(tmp), info, keep=1), settings, info, reporter,
                       hooks=[on_iteration])
        busy = sampler.stop() if sampler is not None else None
        seconds = marks["end"] - marks["start"]
        if info.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(info.device) / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        mine = {"seconds": seconds, "wait": marks["wait_end"] - marks["wait_start"], "peak": peak, "busy": busy}
        everyone = all_gather_objects(mine, info)
        if info.is_main:
            slowest = max(r["seconds"] for r in everyone)
            crops = run.setup.batch_size * args.iters
            busy_values = [r["busy"] for r in everyone if r["busy"] is not None]
            result = {
                "config": args.config,
                "overrides": args.overrides,
                "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                "world_size": info.world_size,
                "model": cfg.TRAIN.model,
                "crop": [cfg.TRAIN.train_h, cfg.TRAIN.train_w],
                "short_size": cfg.TRAIN.short_size,
                "batch_size": run.setup.batch_size,
                "precision": run.setup.precision,
                "channels_last": cfg.TRAIN.channels_last,
                "workers_per_rank": run.setup.workers_per_rank,
                "method": run.setup.method,
                "compile": cfg.TRAIN.compile,
                "cuda_graphs": cfg.TRAIN.cuda_graphs,
                "timed_iterations": args.iters,
                "seconds": round(slowest, 3),
                "crops_per_s": round(crops / slowest, 3),
                "crops_per_s_per_gpu" if info.device.type == "cuda" else "crops_per_s_per_process": round(crops / slowest / info.world_size, 3),
                "peak_memory_gib": round(max(r["peak"] for r in everyone), 3),
                "peak_memory_kind": "cuda max_memory_allocated" if info.device.type == "cuda" else "process max RSS",
                "data_wait_fraction": round(max(r["wait"] / r["seconds"] for r in everyone), 4),
                "gpu_busy_percent": round(sum(busy_values) / len(busy_values), 1) if busy_values else None,
                "gpu_busy_source": sampler.source if sampler is not None else None,
                "torch": torch.__version__,
            }
            print(json.dumps(result, indent=1))
        return 0
    finally:
        shutdown_distributed(info)


if __name__ == "__main__":
    sys.exit(main())
