"""Export a segmentation model to ONNX and TorchScript.

The exported graph takes the normalised image (float32 ``N x 3 x H x W``, ImageNet mean/std on the 0..255
scale, RGB) and returns the logits ``N x C x H x W`` at the input size; softmax, flip, windows and the
taxonomy projection stay outside (they are cheap, and a caller may want logits). ``dynamic=False`` fixes the
input to ``1 x 3 x H x W``; ``dynamic=True`` leaves batch, height and width free.

ONNX goes through ``torch.onnx.export``: the ``torch.export``-based exporter (``dynamo=True``, the default of
recent PyTorch) or the older TorchScript-based one (``dynamo=False``), at the opset the installed exporter
picks unless one is given. Files are written to a temporary name and renamed when complete.

A DINOv2 model exports at a fixed size only (:func:`check_exportable`): its graph holds the positional embedding
resampled to the export size, so a dynamic-size file would give wrong results (or fail) at any other size; and the
size must be a multiple of its patch size (14).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mseg_semantic.atomic import renamed_into_place
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.engine import input_multiple

__all__ = ["ExportReport", "MIN_OPSET", "check_exportable", "export_onnx", "export_torchscript", "check_onnx", "check_torchscript",
           "supported_opsets"]


@dataclass
class ExportReport:
    path: Path
    format: str  # onnx | torchscript
    input_shape: tuple  # example shape used; -1 marks a dynamic axis
    opset: int | None = None
    exporter: str = ""
    max_abs_diff: float | None = None  # vs eager PyTorch on the example input, when checked


class _LogitsOnly(torch.nn.Module):
    """The model's plain forward (some models take extra flags or return tuples)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        return out[0] if isinstance(out, (tuple, list)) else out


def _example(height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, height, width, generator=generator)


MIN_OPSET = 17  # TEST.export_opset's minimum


def supported_opsets(dynamo: bool = True) -> tuple[int, int]:
    """The ONNX opsets :func:`export_onnx` can write with this installation: from :data:`MIN_OPSET` to the newest the
    onnx package defines (the TorchScript-based exporter: to its own newest, where torch says)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not dynamo:
        try:
            from torch.onnx import _constants
        except ImportError:
            pass
        else:
            newest = min(newest, getattr(_constants, "ONNX_MAX_OPSET", newest))
    return MIN_OPSET, newest


def _exporter_name(dynamo: bool) -> str:
    return "torch.export (dynamo)" if dynamo else "TorchScript-based"


def check_exportable(model: torch.nn.Module, height: int, width: int, dynamic: bool) -> None:
    """Refuse what a model's exported graph could not do, naming the TEST key: a ViT exports at one size (a multiple
    of its patch size), never with dynamic height and width."""
    multiple = input_multiple(model)
    if multiple is None:
        return
    name = getattr(model, "name", "") or type(model).__name__
    if dynamic:
        raise UserError(f"TEST.export_dynamic=true: {name} cannot be exported with a dynamic size (its graph holds the positional "
                        f"embedding resampled to one size); export at the size you will run, export_dynamic=false test_h=H test_w=W")
    if height % multiple or width % multiple:
        nearest = [max(multiple, (side + multiple // 2) // multiple * multiple) for side in (height, width)]
        raise UserError(f"TEST.test_h x test_w = {height} x {width}: {name} takes sizes that are multiples of its patch size "
                        f"{multiple}; use test_h={nearest[0]} test_w={nearest[1]}")


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    height: int,
    width: int,
    dynamic: bool = False,
    opset: int | None = None,
    dynamo: bool = True,
) -> ExportReport:
    import onnx

    path = Path(path)
    check_exportable(model, height, width, dynamic)
    exporter = _exporter_name(dynamo)
    if opset is not None:
        low, high = supported_opsets(dynamo)
        if not low <= opset <= high:
            raise UserError(f"ONNX opset {opset} (TEST.export_opset): the {exporter} exporter here writes opsets "
                            f"{low}..{high}; pick one of those, or leave export_opset unset for the exporter's default")
    wrapped = _LogitsOnly(model).eval().cpu()
    example = _example(height, width)
    kwargs: dict = {"input_names": ["image"], "output_names": ["logits"], "dynamo": dynamo}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs["external_data"] = False  # one self-contained file (models under 2 GB)
        if dynamic:
            dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)}
            kwargs["dynamic_shapes"] = {"image": dims}
    elif dynamic:
        kwargs["dynamic_axes"] = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings(), renamed_into_place(path) as tmp:
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(wrapped, (example,), str(tmp), **kwargs)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset_used != opset:  # the exporter's version conversion failed and kept its own
            raise UserError(f"ONNX opset {opset} (TEST.export_opset): the {exporter} exporter could not convert the "
                            f"model to it and wrote opset {opset_used}; nothing was written to {path}. Use "
                            f"export_opset={opset_used}, or leave it unset")
    shape = (-1, 3, -1, -1) if dynamic else (1, 3, height, width)
    return ExportReport(path, "onnx", shape, opset_used, exporter)


def export_torchscript(model: torch.nn.Module, path: str | os.PathLike, height: int, width: int) -> ExportReport:
    """``torch.jit.trace`` of the forward pass; the traced HRNet computes its resize sizes from the input,
    so the file also runs at other sizes (checked by :func:`check_torchscript`)."""
    path = Path(path)
    check_exportable(model, height, width, dynamic=False)
    wrapped = _LogitsOnly(model).eval().cpu()
    with warnings.catch_warnings(), renamed_into_place(path) as tmp:
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent PyTorch; it still works
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, (_example(height, width),), check_trace=False)
        torch.jit.save(traced, str(tmp))
    return ExportReport(path, "torchscript", (1, 3, height, width), exporter="torch.jit.trace")


@torch.no_grad()
def _eager(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return _LogitsOnly(model).eval().cpu()(x).numpy()


def check_onnx(model: torch.nn.Module, path: str | os.PathLike, shape: tuple[int, int, int, int]) -> float:
    """Max |onnxruntime - eager PyTorch| of the logits on a random input of ``shape``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - _eager(model, x)).max())


def check_torchscript(model: torch.nn.Module, path: str | os.PathLike, shape: tuple[int, int, int, int]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in recent PyTorch; it still works
        loaded = torch.jit.load(str(path), map_location="cpu")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    # the profiling executor would spend seconds optimising a graph run once
    with torch.no_grad(), torch.jit.optimized_execution(False):
        out = loaded(x).numpy()
    return float(np.abs(out - _eager(model, x)).max())
