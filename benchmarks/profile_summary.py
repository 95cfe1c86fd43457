"""A training step's device time by kernel category, from a torch.profiler trace (bench_step.py --profile-iters).

Categories are read from kernel names (cuDNN, cuBLAS, PyTorch's own kernels and Inductor's fused Triton kernels,
whose names list the ops they fuse), in a fixed order where one name could match several: zeroing before the
optimizer (both use multi_tensor_apply), BatchNorm before convolution (cuDNN names both), softmax/NLL before
elementwise. On a CPU (``--quick`` runs) the events are ATen operators, read the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("zero", ("memset", "zero", "fillfunctor", "fill_")),
    ("optimizer", ("sgd", "multi_tensor_apply", "foreach")),
    ("bn", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("softmax_nll", ("softmax", "nll_loss", "logsumexp", "cross_entropy")),
    ("upsample", ("upsample", "lerp")),
    ("conv", ("conv", "cudnn", "xmma", "implicit_gemm", "gemm", "wgrad", "dgrad", "fprop", "cutlass", "winograd", "nhwckrsc")),
    ("copy", ("memcpy", "copy", "cat", "transpose", "nchwtonhwc", "nhwctonchw", "permute")),
    ("elementwise", ("elementwise", "triton_poi", "relu", "threshold", "add", "mul", "where", "clamp", "div", "sub")),
    ("reduce", ("reduce", "triton_red", "triton_per", "sum", "max", "mean")),
)


def kernel_category(name: str) -> str:
    """The category of a kernel (or, on a CPU, an ATen operator) by its name; ``other`` when none matches."""
    lowered = name.lower()
    for category, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


def busy_ms(intervals: Iterable[tuple[float, float]]) -> float:
    """Milliseconds during which at least one of the (start_us, end_us) intervals runs (overlaps counted once)."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1000


def summarise(kernels: list[tuple[str, float, float]], steps: int, wall_ms: float, top: int = 15) -> dict:
    """``kernels``: (name, start_us, end_us) of every kernel in ``steps`` profiled steps that took ``wall_ms`` in all.
    Per step: kernels and device ms by category, the busy fraction of the wall time, the costliest kernels."""
    by_category: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, start, stop in kernels:
        for table, key in ((by_category, kernel_category(name)), (by_name, name)):
            table[key][0] += 1
            table[key][1] += (stop - start) / 1000
    device_ms = sum(ms for _, ms in by_category.values())
    return {
        "profiled_steps": steps,
        "kernels_per_step": round(len(kernels) / steps, 1),
        "device_ms_per_step": round(device_ms / steps, 2),
        "busy_ms_per_step": round(busy_ms((s, e) for _, s, e in kernels) / steps, 2),
        "wall_ms_per_step": round(wall_ms / steps, 2),
        "busy_fraction": round(busy_ms((s, e) for _, s, e in kernels) / wall_ms, 3) if wall_ms > 0 else None,
        "by_category": {category: {"kernels": round(count / steps, 1), "ms": round(ms / steps, 2),
                                   "share": round(ms / device_ms, 3) if device_ms else 0.0}
                        for category, (count, ms) in sorted(by_category.items(), key=lambda kv: -kv[1][1])},
        "top": [{"kernel": name[:120], "category": kernel_category(name), "calls_per_step": round(count / steps, 1),
                 "ms_per_step": round(ms / steps, 3)}
                for name, (count, ms) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]],
    }


def profiler_kernels(prof, device_type: str) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the device's kernels in a finished torch.profiler run; on a CPU the ATen
    operators that have no ATen parent (what a CPU step runs at the top level)."""
    import torch

    events = prof.events()
    if device_type == "cuda":
        cuda = torch.autograd.DeviceType.CUDA
        return [(e.name, e.time_range.start, e.time_range.end) for e in events if e.device_type == cuda]
    return [(e.name, e.time_range.start, e.time_range.end) for e in events
            if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
