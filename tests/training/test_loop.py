"""The training loop in process: clipping, fp16 loss scaling on CPU, and a nan that is never applied."""

from __future__ import annotations

import pytest
import torch

from mseg_semantic.training.checkpoint import list_checkpoints, load_checkpoint
from mseg_semantic.training.distributed import DistInfo
from mseg_semantic.training.logging import TrainingReporter
from mseg_semantic.training.loop import LoopSettings, NonFiniteLossError, ce_backward_step, recalibrate_batchnorm, train_loop
from mseg_semantic.training.optim import PolyLR, build_sgd
from mseg_semantic.training.precision import autocast_factory, make_grad_scaler
from mseg_semantic.training.step import StepContext


class CountingLoader:
    """Batch b is a function of b; the state is the next batch index (as the data contract promises)."""

    def __init__(self, batch: int = 4, size: int = 12, classes: int = 5):
        self.next_batch, self.batch, self.size, self.classes = 0, batch, size, classes

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.next_batch)
            images = torch.randint(0, 256, (self.batch, 3, self.size, self.size), dtype=torch.uint8, generator=g)
            labels = torch.randint(0, self.classes, (self.batch, self.size, self.size), generator=g)
            labels[:, :2] = 255
            self.next_batch += 1
            yield {"image": images, "label": labels, "dataset_index": torch.arange(self.batch) % 2}

    def state_dict(self):
        return {"batch": self.next_batch}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))


def _run(tmp_path, max_iters=3, grad_clip=None, precision="fp32", step=ce_backward_step, checkpoint_every=1, model=None):
    model = model if model is not None else _model()
    optimizer = build_sgd(model.parameters(), 0.01, 0.9, 1e-4)
    scheduler = PolyLR(optimizer, max_iters)
    scaler = make_grad_scaler(precision, "cpu")
    ctx = StepContext(num_datasets=2, autocast=autocast_factory(precision, "cpu"), scaler=scaler, dataset_names=["a", "b"])
    settings = LoopSettings(max_iters=max_iters, checkpoint_dir=tmp_path / "checkpoints", checkpoint_every=checkpoint_every,
                            keep_checkpoints=10, grad_clip=grad_clip)
    info = DistInfo()
    reporter = TrainingReporter(tmp_path, True, 0, max_iters, 4, info.device, print_freq=1, tensorboard=True, show_progress=False)
    try:
        stats = train_loop(model, optimizer, scheduler, scaler, CountingLoader(), step, ctx, lambda x: x.float() / 255, settings, info, reporter)
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


def test_a_non_finite_loss_is_not_applied_and_not_checkpointed(tmp_path):
    calls = []

    def poisoned_step(model, images, labels, dataset_index, ctx):
        calls.append(1)
        if len(calls) == 3:
            images = images * float("nan")
        return ce_backward_step(model, images, labels, dataset_index, ctx)

    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"at iteration 3 \(lr .*a=nan, b=nan.*iteration 2\) is the last good state"):
        _run(tmp_path, max_iters=10, step=poisoned_step, model=model)
    assert [it for it, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 1]
    # the weights the exception left behind are exactly the last checkpoint's: the bad step changed nothing
    saved = load_checkpoint(tmp_path / "checkpoints" / "iter_00000002.pth")["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_precise_bn_replaces_stale_running_statistics_by_the_mean_over_batches():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1, bias=False), torch.nn.BatchNorm2d(3, momentum=0.01))
    weight = model[0].weight.detach().clone()
    loader = CountingLoader(batch=4, size=6)
    normalize = lambda x: x.float() / 255  # noqa: E731
    expected_mean = torch.zeros(3)
    for _, batch in zip(range(5), iter(CountingLoader(batch=4, size=6))):
        with torch.no_grad():
            expected_mean += model[0](normalize(batch["image"])).mean(dim=(0, 2, 3)) / 5
    model.eval()
    assert recalibrate_batchnorm(model, loader, 5, normalize, DistInfo()) == 1
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    assert torch.equal(model[0].weight, weight) and model[1].momentum == 0.01 and not model.training
