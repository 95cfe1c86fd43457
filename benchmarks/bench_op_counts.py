"""Operators of one HRNet forward under bf16 autocast, by name and output dtype, before and after upsampled branches
keep their dtype (mseg_semantic/model/hrnet.py: _upsample). Prints JSON. Runs on a CPU.

    python benchmarks/bench_op_counts.py --model hrnet_w48

CUDA's autocast runs ``upsample_bilinear2d`` in fp32; CPU's keeps bf16. To count what a GPU runs without a GPU, the
interpolation is given CUDA's policy (input cast to fp32, fp32 output) in both variants: ``before`` passes that
fp32 output on, as the model did (every fusion sum, ReLU and residual add that receives it is then promoted to
fp32, and the next convolution casts back); ``after`` is the model as it is. Op counts do not depend on the image
size, so a small input is used.

``--step`` counts a whole training step instead: gradient zeroing, forward, loss, backward and the fused SGD update,
as a CUDA-graphed step runs them (static gradient buffers zeroed each step), in fp32 and in bf16 autocast (CUDA's
interpolation policy, as above). ``before``: stock BatchNorm (``num_batches_tracked += 1`` per layer and step), the
logits upsampled by ``F.interpolate`` inside the model, one ``zero_`` per gradient; ``after``: the model and step as
they are (HRNet's BatchNorm, the loss head on 1/4-resolution logits with the exact x4 upsampling, the crop being
4k + 1, and ``zero_gradients``); ``after_grads_none``: the same with the gradients set to None instead of zeroed
(backward then writes each gradient rather than adding it into a zeroed buffer: what a graph capture that allocates
the gradients inside the graph would run). View ops (no kernel) are left out of ``ops``; ``by_kind`` splits the rest.

    python benchmarks/bench_op_counts.py --model hrnet_w48 --step
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mseg_semantic.model import build_model  # noqa: E402
from mseg_semantic.model import hrnet  # noqa: E402

_interpolate = F.interpolate


def interpolate_as_cuda_autocast(x, *args, **kwargs):
    """F.interpolate with CUDA autocast's policy for upsample_bilinear2d: computed in fp32."""
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return _interpolate(x.float(), *args, **kwargs)
    return _interpolate(x, *args, **kwargs)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_name: Counter = Counter()
        self.fp32_elementwise: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        self.by_name[name] += 1
        if name in ("add", "add_", "relu", "relu_") and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            self.fp32_elementwise[name] += 1
        return out


def count(model_name: str, variant: str, size: int) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, 194).train()
    x = torch.randn(1, 3, size, size)
    upsample = hrnet._upsample
    hrnet.F.interpolate = interpolate_as_cuda_autocast
    if variant == "before":
        hrnet._upsample = lambda t, shape, align_corners: interpolate_as_cuda_autocast(t, size=shape, mode="bilinear", align_corners=align_corners)
    try:
        with OpCounter() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    finally:
        hrnet.F.interpolate = _interpolate
        hrnet._upsample = upsample
    return {
        "variant": variant, "model": model_name, "ops": sum(counter.by_name.values()),
        "casts": counter.by_name["_to_copy"], "fp32_add_relu": sum(counter.fp32_elementwise.values()),
        "batch_norm": counter.by_name["native_batch_norm"] + counter.by_name["_native_batch_norm_legit"],
        "relu": counter.by_name["relu"] + counter.by_name["relu_"], "add": counter.by_name["add"] + counter.by_name["add_"],
        "convolution": counter.by_name["convolution"],
    }


class KernelCounter(TorchDispatchMode):
    """Every non-view operator run below autograd (forward, backward, optimizer): about one kernel each."""

    def __init__(self):
        super().__init__()
        self.by_name: Counter = Counter()
        self.counter_adds = 0  # num_batches_tracked += 1: an in-place add on a 0-dim int64 tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.__name__.split(".")[0] not in ("detach", "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh"):
            self.by_name[func.__name__.split(".")[0]] += 1
            target = args[0] if args else None
            if func.__name__.startswith("add_") and isinstance(target, torch.Tensor) and target.dtype == torch.int64 and target.dim() == 0:
                self.counter_adds += 1
        return out


_KINDS = {
    "convolution": ("convolution", "convolution_backward"),
    "batch_norm": ("native_batch_norm", "_native_batch_norm_legit", "native_batch_norm_backward", "_native_batch_norm_legit_functional"),
    "upsample": ("upsample_bilinear2d", "upsample_bilinear2d_backward"),
    "softmax_nll": ("_log_softmax", "_log_softmax_backward_data", "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward",
                    "nll_loss2d_backward"),
    "optimizer": ("_fused_sgd_", "_foreach_add_", "_foreach_mul_", "_foreach_add", "_foreach_lerp_"),
    "zero": ("zero_", "_foreach_zero_", "fill_"),
    "cast": ("_to_copy",),
}


def zero_gradients(parameters) -> None:  # static gradient buffers zeroed by foreach: the variant the graphed step does not use
    """Zero the existing ``.grad`` of ``parameters`` in place with one ``torch._foreach_zero_`` per device and dtype
    (a few kernels instead of one per parameter: what a CUDA-graphed step with static gradient buffers needs)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        torch._foreach_zero_(grads)


def count_step(model_name: str, variant: str, size: int, precision: str) -> dict:
    """Operators of one training step (the second: the first makes the optimizer's momentum buffers)."""
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step

    crop = 4 * (size // 4) + 1  # 4k + 1, as 713: the exact x4 upsampling applies
    torch.manual_seed(0)
    patches = []
    if variant == "before":
        patches = [(hrnet, "_bn", lambda c: torch.nn.BatchNorm2d(c, momentum=hrnet.BN_MOMENTUM)),
                   (hrnet, "upsample_logits", lambda x, s: F.interpolate(x.float(), size=s, mode="bilinear", align_corners=True))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    hrnet.F.interpolate = interpolate_as_cuda_autocast
    try:
        model = build_model(model_name, 194).train()
        params = [p for p in model.parameters()]
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
        for p in params:
            p.grad = torch.zeros_like(p)  # static gradient buffers, as in a graphed step
        g = torch.Generator().manual_seed(0)
        images = torch.randn(2, 3, crop, crop, generator=g)
        labels = torch.randint(0, 194, (2, crop, crop), generator=g)
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
        ctx = StepContext(num_datasets=1, autocast=autocast)
        if variant == "before":
            def forward_backward():
                with ctx.autocast():
                    logits = model(images)
                from mseg_semantic.training.gradients.common import cross_entropy_pixels, global_pixel_mean
                pixel_loss, valid = cross_entropy_pixels(logits, labels)
                global_pixel_mean(pixel_loss.sum(), valid.sum(), ctx).backward()

            def zero():
                for p in params:
                    p.grad.zero_()
        else:
            def forward_backward():
                ce_backward_step(model, images, labels, torch.zeros(2, dtype=torch.long), ctx)

            def zero():
                if variant == "after_grads_none":
                    for p in params:  # backward then writes each gradient instead of adding it to a zeroed buffer
                        p.grad = None
                else:
                    zero_gradients(params)

        def step():
            zero()
            forward_backward()
            optimizer.step()

        step()
        with KernelCounter() as counter:
            step()
    finally:
        hrnet.F.interpolate = _interpolate
        for owner, name, value in saved:
            setattr(owner, name, value)
    by_kind = {kind: sum(counter.by_name[n] for n in names) for kind, names in _KINDS.items()}
    by_kind["num_batches_tracked_add"] = counter.counter_adds
    by_kind["other"] = sum(counter.by_name.values()) - sum(by_kind.values())
    return {"count": "training_step", "variant": variant, "model": model_name, "precision": precision, "crop": crop,
            "ops": sum(counter.by_name.values()), "by_kind": by_kind,
            "top_other": dict(Counter({n: c for n, c in counter.by_name.items() if not any(n in names for names in _KINDS.values())}).most_common(8))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_w48")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--step", action="store_true", help="count a whole training step (before/after, fp32 and bf16)")
    args = parser.parse_args(argv)
    if args.step:
        for precision in ("fp32", "bf16"):
            for variant in ("before", "after", "after_grads_none"):
                print(json.dumps(count_step(args.model, variant, args.size, precision)), flush=True)
        return 0
    for variant in ("before", "after"):
        print(json.dumps(count(args.model, variant, args.size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
