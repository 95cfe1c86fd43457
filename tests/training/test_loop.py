"""The training loop in process: clipping, fp16 loss scaling on CPU, a nan that is never applied, no host syncs
between report iterations, and a clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal

import pytest
import torch

from mseg_semantic.data.transforms import normalize_images
from mseg_semantic.model import autocast_context
from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts, list_checkpoints, load_checkpoint
from mseg_semantic.distributed import DistInfo
from mseg_semantic.training.gradients import StepContext
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.loop import LoopSettings, NonFiniteLossError, recalibrate_batchnorm, train_loop
from mseg_semantic.training.optim import PolyLR, build_sgd, make_grad_scaler
from mseg_semantic.training.preemption import Preempted, PreemptionSignal
from mseg_semantic.training.report import TrainingReporter


class CountingLoader:
    """Batch b is a function of b; the state is the next batch index (as the data contract promises)."""

    def __init__(self, batch: int = 4, size: int = 12, classes: int = 5):
        self.next_batch, self.batch, self.size, self.classes = 0, batch, size, classes

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.next_batch)
            images = torch.randint(0, 256, (self.batch, 3, self.size, self.size), dtype=torch.uint8, generator=g)
            labels = torch.randint(0, self.classes, (self.batch, self.size, self.size), generator=g).to(torch.uint8)
            labels[:, :2] = 255
            self.next_batch += 1
            yield {"image": images, "label": labels, "dataset_index": torch.arange(self.batch) % 2}

    def state_dict(self):
        return {"batch": self.next_batch}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))


def _run(tmp_path, max_iters=3, grad_clip=None, precision="fp32", step=ce_backward_step, checkpoint_every=1, model=None,
         fused=False, print_freq=1, preemption=None, hooks=(), cuda_graphs=False, parts=None, start=0):
    """``parts`` and ``start``: continue a run restored from a checkpoint (its model is ``parts.model``)."""
    scaler = make_grad_scaler(precision, "cpu")
    if parts is None:
        model = model if model is not None else _model()
        optimizer = build_sgd(model.parameters(), 0.01, 0.9, 1e-4, fused=fused)
        parts = TrainingParts(model, optimizer, PolyLR(optimizer, max_iters), scaler, CountingLoader())
    model = parts.model
    ctx = StepContext(num_datasets=2, dataset_names=["a", "b"], autocast=functools.partial(autocast_context, precision, "cpu"), scaler=scaler)
    info = DistInfo()
    checkpointer = Checkpointer(tmp_path / "checkpoints", info, keep=10)
    settings = LoopSettings(max_iters=max_iters, checkpoint_every=checkpoint_every, grad_clip=grad_clip, cuda_graphs=cuda_graphs)
    reporter = TrainingReporter(tmp_path, True, start, max_iters, 4, info.device, print_freq=print_freq, tensorboard=True, show_progress=False)
    try:
        stats = train_loop(parts, step, ctx, checkpointer, settings, info, reporter, start, hooks=hooks, preemption=preemption)
    finally:
        reporter.close()
    return model, stats


def test_gradient_clipping_bounds_the_applied_gradient(tmp_path):
    model, _ = _run(tmp_path, grad_clip=1e-3)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total <= 1e-3 * (1 + 1e-5)
    unclipped, _ = _run(tmp_path / "b", grad_clip=None)
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unclipped.parameters()])) > 1e-2


def test_fp16_with_loss_scaling_on_cpu_trains_and_saves_the_scaler(tmp_path):
    model, stats = _run(tmp_path, precision="fp16", grad_clip=10.0)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert stats.iterations == 3 and state["iteration"] == 3
    assert state["scaler"]["scale"] > 0 and state["sampler"] == [{"batch": 3}]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/a", "loss/b", "lr", "throughput/crops_per_s", "memory/peak_rss_gib", "amp/loss_scale"} <= tags
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3]
    # every reported scalar, one JSON object per report iteration
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3]
    assert {"loss/total", "loss/a", "lr", "amp/loss_scale", "throughput/crops_per_s"} <= set(lines[-1])


def _poisoned(at: int):
    calls = []

    def step(model, images, labels, dataset_index, ctx):
        calls.append(1)
        if len(calls) == at:
            images = images * float("nan")
        return ce_backward_step(model, images, labels, dataset_index, ctx)

    return step


def test_a_non_finite_loss_is_not_applied_and_not_checkpointed(tmp_path):
    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"at iteration 3 \(lr .*; per dataset: a=nan, b=nan\).*checkpoints holds the last good state"):
        _run(tmp_path, max_iters=10, step=_poisoned(3), model=model)
    assert [it for it, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 1]
    # the weights the exception left behind are exactly the last checkpoint's: the bad step changed nothing
    saved = load_checkpoint(tmp_path / "checkpoints" / "iter_00000002.pth")["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_with_a_fused_optimizer_the_bad_update_is_skipped_on_the_device_and_reported_at_the_next_sync(tmp_path):
    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 3; that update was skipped on the device"):
        _run(tmp_path, max_iters=10, step=_poisoned(3), model=model, fused=True, print_freq=4, checkpoint_every=4)
    assert list_checkpoints(tmp_path / "checkpoints") == []  # the first sync point (4) raised instead of saving
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _SyncCounter:
    """Counts the host reads of tensor values (each one waits for the device on a GPU)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")

    def __init__(self):
        self.count = 0

    @contextlib.contextmanager
    def watching(self):
        originals = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def counted(name):
            def wrapper(tensor, *args, **kwargs):
                self.count += 1
                return originals[name](tensor, *args, **kwargs)
            return wrapper

        for name in self.NAMES:
            setattr(torch.Tensor, name, counted(name))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def test_the_fused_loop_reads_nothing_back_between_report_iterations(tmp_path):
    counter = _SyncCounter()
    per_iteration: dict[int, int] = {}

    def record(done, stats):
        per_iteration[done] = counter.count
        counter.count = 0

    with counter.watching():
        _run(tmp_path, max_iters=12, fused=True, print_freq=5, checkpoint_every=100, hooks=[record])
    quiet = {it: n for it, n in per_iteration.items() if it % 5 and it != 12}
    assert quiet and all(n == 0 for n in quiet.values()), quiet
    assert all(per_iteration[it] > 0 for it in (5, 10))  # the report iterations read the loss


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_stops(tmp_path):
    def send_term(done, stats):
        if done == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionSignal() as preemption:
        with pytest.raises(Preempted, match=r"stopped by SIGTERM after iteration 4 of 10.*run the same command again to resume") as info:
            _run(tmp_path, max_iters=10, checkpoint_every=3, hooks=[send_term], preemption=preemption)
    assert info.value.exit_code == 75
    assert [it for it, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 3]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


def test_precise_bn_replaces_stale_running_statistics_by_the_mean_over_batches():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1, bias=False), torch.nn.BatchNorm2d(3, momentum=0.01))
    weight = model[0].weight.detach().clone()
    loader = CountingLoader(batch=4, size=6)
    expected_mean = torch.zeros(3)
    for _, batch in zip(range(5), iter(CountingLoader(batch=4, size=6))):
        with torch.no_grad():
            expected_mean += model[0](normalize_images(batch["image"])).mean(dim=(0, 2, 3)) / 5
    model.eval()
    assert recalibrate_batchnorm(model, loader, 5, DistInfo()) == 1
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    assert torch.equal(model[0].weight, weight) and model[1].momentum == 0.01 and not model.training
