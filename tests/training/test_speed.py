"""TRAIN.compile and TRAIN.cuda_graphs: the same numbers, fewer launches. The capture itself needs CUDA; everything
around it (static buffers, the in-graph non-finite flag, the tensor learning rate, the refusals) runs here."""

from __future__ import annotations

import pytest
import torch

from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.model import build_model
from mseg_semantic.training.run import resolve_run
from mseg_semantic.training.speed import GraphedStep, compile_regions
from test_loop import _model, _poisoned, _run

DEMO = ["dataset=[cityscapes-19,ade20k-150]", "batch_size=4", "max_iters=10"]


def test_the_graphed_step_trains_exactly_like_the_fused_eager_loop(tmp_path):
    graphed, _ = _run(tmp_path / "graphed", max_iters=5, fused=True, checkpoint_every=100, print_freq=5, model=_model(), grad_clip=0.5,
                      **{"cuda_graphs": True})
    eager, _ = _run(tmp_path / "eager", max_iters=5, fused=True, checkpoint_every=100, print_freq=5, model=_model(), grad_clip=0.5)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        assert torch.equal(a, b)


def test_a_non_finite_loss_inside_the_graphed_step_skips_that_update(tmp_path):
    from mseg_semantic.training.loop import NonFiniteLossError

    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="at iteration 1; that update was skipped"):
        _run(tmp_path, max_iters=4, fused=True, print_freq=2, checkpoint_every=100, step=_poisoned(1), model=model, cuda_graphs=True)
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), before)]
    assert any(changed)  # iteration 2 was applied, iteration 1 was not (momentum from 1 would differ)


def test_a_graphed_step_needs_the_fused_optimizer():
    model = _model()
    with pytest.raises(ValueError, match="fused optimizer"):
        GraphedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, None,
                    {"image": torch.zeros(1), "label": torch.zeros(1), "dataset_index": torch.zeros(1)}, capture=False)


@pytest.mark.parametrize("overrides,message", [
    (["cuda_graphs=True", "precision=fp16"], "precision fp32 or bf16"),
    (["cuda_graphs=True", "use_mgda=True"], "the cross-entropy step"),
    (["compile=True", "use_mgda=True"], "compile=False"),
])
def test_unsupported_combinations_are_refused_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run(load_config(None, DEMO + overrides))


def test_cuda_graphs_under_torchrun_are_refused():
    with pytest.raises(ConfigError, match="one process"):
        resolve_run(load_config(None, DEMO + ["cuda_graphs=True"]), world_size=2)


@pytest.mark.slow
def test_regional_compile_keeps_outputs_gradients_and_parameter_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    eager = build_model("hrnet_tiny", 5)
    compiled = build_model("hrnet_tiny", 5)
    compiled.load_state_dict(eager.state_dict())
    regions = compile_regions(compiled)
    assert regions == ["layer1", "stage2.0", "stage3.0", "stage4.0", "head"]
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable
    x = torch.randn(2, 3, 40, 48)
    outputs = [m(x) for m in (compiled, eager)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    for out in outputs:
        out.square().mean().backward()
    relative = {name: float((a.grad - b.grad).norm() / b.grad.norm()) for (name, a), b in zip(compiled.named_parameters(), eager.parameters())}
    relative.pop("head.conv.bias")  # analytically zero (a bias before BatchNorm): its value is rounding noise
    worst = max(relative, key=relative.get)
    assert relative[worst] < 1e-3, (worst, relative[worst])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graph_replays_the_eager_step_and_undoes_its_warm_up():
    from test_loop import CountingLoader
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
    from mseg_semantic.training.optim import build_sgd

    def make():
        model = _model().cuda()
        optimizer = build_sgd(model.parameters(), torch.tensor(0.01, device="cuda"), 0.9, 1e-4, fused=True)
        for p in model.parameters():
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return model, optimizer

    batches = [{k: v.cuda() for k, v in b.items()} for _, b in zip(range(4), iter(CountingLoader()))]
    for b in batches:
        b["image"] = b["image"].float() / 255
        b["label"] = b["label"].long()
    ctx = StepContext(num_datasets=2)
    model, optimizer = make()
    initial = [p.detach().clone() for p in model.parameters()]
    graphed = GraphedStep(model, optimizer, ce_backward_step, ctx, None, batches[0], capture=True)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial))  # the warm-up left no trace
    reference, ref_opt = make()
    reference.load_state_dict(model.state_dict())
    for batch in batches:
        graphed(batch["image"], batch["label"], batch["dataset_index"])
        ref_opt.zero_grad(set_to_none=True)
        ce_backward_step(reference, batch["image"], batch["label"], batch["dataset_index"], ctx)
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_channels_last_logits_are_read_as_rows_with_the_same_loss():
    from mseg_semantic.training.gradients.common import cross_entropy_pixels

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 9, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (2, 9, 11), generator=g)
    labels[0, :3] = 255
    nchw, valid = cross_entropy_pixels(logits, labels)
    nhwc_logits = logits.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    nhwc, valid_cl = cross_entropy_pixels(nhwc_logits, labels)
    torch.testing.assert_close(nhwc, nchw, rtol=1e-6, atol=1e-6)
    assert torch.equal(valid, valid_cl) and float(nhwc[0, :3].abs().sum()) == 0.0
    nchw.sum().backward()
    nhwc.sum().backward()
    torch.testing.assert_close(nhwc_logits.grad, logits.grad, rtol=1e-6, atol=1e-7)


def test_the_loss_head_on_quarter_resolution_logits_equals_the_model_s_own_upsampling():
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.common import UpsampledPixelLoss, cross_entropy_pixels
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step

    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 48)
    labels = torch.randint(0, 5, (2, 40, 48))
    outs, grads = [], []
    for head in (None, UpsampledPixelLoss(cross_entropy_pixels)):
        torch.manual_seed(1)
        model = build_model("hrnet_tiny", 5)
        outs.append(ce_backward_step(model, images, labels, torch.tensor([0, 1]), StepContext(num_datasets=2), loss_head=head))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0].loss, outs[1].loss) and torch.equal(grads[0], grads[1])


@pytest.mark.slow
def test_the_compiled_loss_head_matches_eager(tmp_path, monkeypatch):
    from mseg_semantic.training.gradients.common import UpsampledPixelLoss, cross_entropy_pixels
    from mseg_semantic.training.speed import compile_loss_head

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 6, 10, 12, generator=g)
    labels = torch.randint(0, 6, (2, 40, 48), generator=g)
    labels[:, :5] = 255
    results = []
    for head in (UpsampledPixelLoss(cross_entropy_pixels), compile_loss_head(cross_entropy_pixels)):
        x = low.clone().requires_grad_()
        pixel_loss, valid = head(x, labels)
        pixel_loss.sum().backward()
        results.append((pixel_loss.detach(), valid, x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[1][1], results[0][1])
    torch.testing.assert_close(results[1][2], results[0][2], rtol=1e-4, atol=1e-6)


# ---- the graphed step's correctness on a CPU (the capture itself needs CUDA) -------------------------------------------

def _bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8, momentum=0.01), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 5, 1))


def _graphed(model, grad_clip=None):
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
    from mseg_semantic.training.optim import build_sgd

    optimizer = build_sgd(model.parameters(), 0.1, 0.9, 1e-4, fused=True)
    return GraphedStep(model, optimizer, ce_backward_step, StepContext(num_datasets=2), grad_clip, capture=False)


def _batch(seed, n=2, size=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g), torch.randint(0, 5, (n, size, size), generator=g),
            torch.arange(n) % 2)


def test_the_warm_up_leaves_weights_batchnorm_statistics_and_momentum_as_they_were():
    model = _bn_model()
    step = _graphed(model)
    step(*_batch(0))  # one real step: non-trivial momentum and BN statistics to restore
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [step.optimizer.state[p]["momentum_buffer"].clone() for p in step.params]
    step.undone(lambda: [step._step() for _ in range(GraphedStep.WARMUP_STEPS)])
    after = model.state_dict()
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(after)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # parameters AND buffers
    for p, m in zip(step.params, momentum):
        assert torch.equal(step.optimizer.state[p]["momentum_buffer"], m)
    # without the undo, the same warm-up would have moved every one of them
    step.undone(lambda: None)
    step._step()
    assert not torch.equal(model.state_dict()["1.running_mean"], before["1.running_mean"])


def test_a_batch_of_another_shape_is_refused_not_broadcast_into_the_static_buffers():
    step = _graphed(_bn_model())
    step(*_batch(0, n=2))
    with pytest.raises(ValueError, match=r"image of shape \(1, 3, 12, 12\), captured \(2, 3, 12, 12\)"):
        step(*_batch(1, n=1))


def test_a_graphed_run_resumes_bit_exactly_from_its_checkpoint(tmp_path):
    """4 graphed iterations straight, or 2, a checkpoint, a new process state restored from it, and 2 more."""
    from mseg_semantic.training.checkpoint import load_checkpoint

    straight, _ = _run(tmp_path / "straight", max_iters=4, fused=True, checkpoint_every=1, model=_bn_model(), cuda_graphs=True)
    state = load_checkpoint(tmp_path / "straight" / "checkpoints" / "iter_00000002.pth")
    from mseg_semantic.distributed import DistInfo
    from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts
    from mseg_semantic.training.optim import PolyLR, build_sgd
    from test_loop import CountingLoader

    model = _bn_model()
    optimizer = build_sgd(model.parameters(), 0.01, 0.9, 1e-4, fused=True)
    loader = CountingLoader()
    parts = TrainingParts(model, optimizer, PolyLR(optimizer, 4), None, loader)
    loader.load_state_dict = lambda s: setattr(loader, "next_batch", s["batch"])
    start = Checkpointer(tmp_path / "resumed", DistInfo()).restore(parts, state, 4, {"base_lr": 0.01, "power": 0.9, "momentum": 0.9, "weight_decay": 1e-4})
    assert start == 2
    resumed, _ = _run(tmp_path / "resumed", max_iters=4, fused=True, checkpoint_every=1, model=model, cuda_graphs=True,
                      parts=parts, start=start)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_the_non_finite_error_says_batchnorm_statistics_had_seen_the_batch(tmp_path):
    from mseg_semantic.training.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="BatchNorm running statistics had already seen that batch"):
        _run(tmp_path, max_iters=4, fused=True, print_freq=2, checkpoint_every=100, step=_poisoned(1), model=_bn_model(), cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compile + CUDA graphs)")
def test_compiled_regions_under_a_captured_graph_match_eager_numerics(tmp_path, monkeypatch):
    """TRAIN.compile + TRAIN.cuda_graphs: the same loss and weights as the eager fused step, to float rounding."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
    from mseg_semantic.training.optim import build_sgd

    def make(compiled):
        torch.manual_seed(0)
        model = build_model("hrnet_tiny", 5).cuda()
        if compiled:
            compile_regions(model)
        return model, build_sgd(model.parameters(), torch.tensor(0.01, device="cuda"), 0.9, 1e-4, fused=True)

    batches = [tuple(t.cuda() for t in _batch(seed, n=2, size=33)) for seed in range(3)]
    graphed_model, optimizer = make(True)
    graphed = GraphedStep(graphed_model, optimizer, ce_backward_step, StepContext(num_datasets=2), None,
                          {"image": batches[0][0], "label": batches[0][1], "dataset_index": batches[0][2]}, capture=True)
    eager_model, eager_optimizer = make(False)
    for images, labels, index in batches:
        out = graphed(images, labels, index)
        eager_optimizer.zero_grad(set_to_none=True)
        reference = ce_backward_step(eager_model, images, labels, index, StepContext(num_datasets=2))
        eager_optimizer.step()
        torch.testing.assert_close(out.loss, reference.loss, rtol=1e-4, atol=1e-5)
    for p, q in zip(graphed_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
