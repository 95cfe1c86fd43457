"""Operators of one HRNet forward under bf16 autocast, by name and output dtype, before and after upsampled branches
keep their dtype (mseg_semantic/model/hrnet.py: _upsample). Prints JSON. Runs on a CPU.

    python benchmarks/bench_op_counts.py --model hrnet_w48

CUDA's autocast runs ``upsample_bilinear2d`` in fp32; CPU's keeps bf16. To count what a GPU runs without a GPU, the
interpolation is given CUDA's policy (input cast to fp32, fp32 output) in both variants: ``before`` passes that
fp32 output on, as the model did (every fusion sum, ReLU and residual add that receives it is then promoted to
fp32, and the next convolution casts back); ``after`` is the model as it is. Op counts do not depend on the image
size, so a small input is used.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet_w48")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    for variant in ("before", "after"):
        print(json.dumps(count(args.model, variant, args.size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
