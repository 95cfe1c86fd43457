"""Opt-in ways to spend less time per step on a GPU: regional ``torch.compile`` and a CUDA-graph step.

Both keep what is computed; they change how it is launched. ``TRAIN.compile`` compiles the repeated HRNet modules
(every high-resolution module, stage 1 and the head: a handful of distinct graphs cover almost every forward op),
which fuses BatchNorm, ReLU, the fusion sums and the casts between them; for a DINOv2 model it compiles each
transformer block (one graph serves them all: they share their code and shapes) and the pyramid head. Compiled code
is cached on disk, so only the first run on a machine pays the compile time. ``TRAIN.cuda_graphs`` captures the whole step (forward,
backward, clipping and the fused SGD update, whose learning rate is a device tensor) once and replays it: for a
fixed crop and batch the host then issues one launch per iteration instead of thousands, which is what small
models and small per-GPU batches need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from mseg_semantic.distributed import DistInfo
from mseg_semantic.model.dinov2 import Block as ViTBlock
from mseg_semantic.model.hrnet import HighResolutionModule
from mseg_semantic.training.gradients import BackwardStep, PixelLoss, StepContext, StepOutput
from mseg_semantic.training.gradients.common import UpsampledPixelLoss
from mseg_semantic.training.step import DeviceNonFiniteFlag

__all__ = ["GraphedStep", "compile_loss_head", "compile_regions", "inductor_cache_dir"]

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def inductor_cache_dir() -> Path:
    """Where compiled kernels persist: ``$TORCHINDUCTOR_CACHE_DIR``, else ``$MSEG_CACHE/inductor`` (``~/.cache/mseg_semantic``)."""
    if os.environ.get(INDUCTOR_CACHE_ENV):
        return Path(os.environ[INDUCTOR_CACHE_ENV])
    root = os.environ.get("MSEG_CACHE") or Path.home() / ".cache" / "mseg_semantic"
    path = Path(root).expanduser() / "inductor"
    os.environ[INDUCTOR_CACHE_ENV] = str(path)  # read by inductor when it first compiles
    return path


def compile_regions(model: torch.nn.Module) -> list[str]:
    """Compile the repeated regions of an HRNet (its high-resolution modules, stage 1, the head) or of a DINOv2
    segmenter (its transformer blocks, the head) in place (parameter names unchanged); returns their names."""
    inductor_cache_dir()
    compiled = []
    for name, module in model.named_modules():
        if isinstance(module, (HighResolutionModule, ViTBlock)) or name in ("layer1", "head"):
            module.compile(dynamic=False)
            compiled.append(name)
    return compiled


def compile_loss_head(pixel_loss_fn: PixelLoss) -> PixelLoss:
    """The final upsampling and the pixel loss compiled as one function: the full-resolution fp32 logits (the largest
    tensor of a step, kept for the backward pass in eager mode) become an intermediate the fused kernels never store."""
    inductor_cache_dir()
    return torch.compile(UpsampledPixelLoss(pixel_loss_fn), dynamic=False)


class GraphedStep:
    """One training step on static input buffers: zero the gradients, the backward step, clip, fused SGD/AdamW update.

    ``capture=True`` (CUDA) records it as a CUDA graph after a few warm-up steps (cuDNN autotuning, lazy buffers);
    the warm-up's effect on the weights, BatchNorm statistics and optimizer state is undone, so the run trains
    exactly the iterations it counts. ``capture=False`` runs the same step eagerly (how the CPU tests check it).
    A non-finite loss sets the optimizer's ``found_inf`` inside the step, so that update is skipped on the device;
    :meth:`check_finite` raises at the loop's next sync point. The static buffers are made from ``example`` (or the
    first batch); a batch of another shape is refused, never broadcast into them.
    """

    WARMUP_STEPS = 3

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, backward_step: BackwardStep,
                 ctx: StepContext, grad_clip: float | None, example: dict[str, torch.Tensor] | None = None, capture: bool = True,
                 info: DistInfo = DistInfo(), checkpoints: str = "the checkpoint directory"):
        if not optimizer.defaults.get("fused"):
            raise ValueError("a graphed step needs the fused optimizer (its update reads found_inf on the device)")
        self.model, self.optimizer, self.backward_step, self.ctx, self.grad_clip = model, optimizer, backward_step, ctx, grad_clip
        self.capture = capture
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: StepOutput | None = None
        self.buffers: dict[str, torch.Tensor] | None = None
        self.device_flag = DeviceNonFiniteFlag(info, checkpoints, ctx.diagnostics if ctx is not None else ())
        if example is not None:
            self._make_buffers(example)

    def _make_buffers(self, example: dict[str, torch.Tensor]) -> None:
        self.buffers = {key: example[key].clone() for key in ("image", "label", "dataset_index")}
        self.found_inf = torch.zeros((), dtype=torch.float32, device=self.buffers["image"].device)
        if self.capture:
            self._capture()

    def _step(self) -> StepOutput:
        # no gradient buffers before backward: it then writes each gradient (from the graph's private pool when
        # captured, the same memory every replay) instead of zeroing a static buffer and adding into it
        for p in self.params:
            p.grad = None
        b = self.buffers
        out = self.backward_step(self.model, b["image"], b["label"], b["dataset_index"], self.ctx)
        self.found_inf.copy_(torch.logical_not(torch.isfinite(out.loss)).to(torch.float32))
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.found_inf = self.found_inf
        self.optimizer.step()
        return out

    def _snapshot(self) -> list[torch.Tensor]:
        """Everything the warm-up changes: parameters and buffers (BatchNorm statistics), the optimizer's state (SGD's
        momentum buffers; AdamW's moments and step counts), which the fused optimizers make up front."""
        state = list(self.model.state_dict().values())
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state += [value for _, value in sorted(self.optimizer.state[p].items()) if isinstance(value, torch.Tensor)]
        return state

    def undone(self, run: Callable[[], None]) -> None:
        """``run()`` (the warm-up steps and the capture), then every parameter, buffer (BatchNorm statistics and
        counters) and momentum buffer back to its value before, in place: the graph keeps pointing at these tensors."""
        saved = [t.detach().clone() for t in self._snapshot()]
        run()
        with torch.no_grad():
            for tensor, value in zip(self._snapshot(), saved):
                tensor.copy_(value)

    def _capture(self) -> None:
        def warm_up_and_capture() -> None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._step()

        self.undone(warm_up_and_capture)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, iteration: int | None = None) -> StepOutput:
        batch = {"image": images, "label": labels, "dataset_index": dataset_index}
        if self.buffers is None:
            self._make_buffers(batch)
        for key, value in batch.items():
            static = self.buffers[key]
            if value.shape != static.shape:
                raise ValueError(f"a graphed step replays one batch shape: {key} of shape {tuple(value.shape)}, captured "
                                 f"{tuple(static.shape)} (TRAIN.cuda_graphs needs every batch the same size)")
            static.copy_(value, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.out = self._step()
        self.device_flag.record(self.found_inf > 0, -1 if iteration is None else iteration)
        return self.out

    def check_finite(self) -> None:
        self.device_flag.check()
