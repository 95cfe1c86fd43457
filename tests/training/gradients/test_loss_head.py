"""The plain step's loss head on 1/4-resolution logits (training/gradients/common.py: UpsampledPixelLoss): the same
loss and gradients as upsampling the logits with F.interpolate first (the step before it), eager and compiled; and
the foreach gradient zeroing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import IGNORE_INDEX, LabelSets
from mseg_semantic.training.gradients import StepContext
from mseg_semantic.training.gradients.common import (
    UpsampledPixelLoss,
    cross_entropy_nhwc,
    cross_entropy_pixels,
    global_pixel_mean,
)
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.gradients.partial_label import PartialLabelLoss

NUM_CLASSES = 7
SETS = LabelSets.for_sets(NUM_CLASSES, [(1, 2), (0, 3, 5), (4, 6)])


def _labels(shape, seed, sets: LabelSets | None = None):
    g = torch.Generator().manual_seed(seed)
    usable = torch.tensor([c for c, m in enumerate(sets.members) if m]) if sets else torch.arange(NUM_CLASSES)
    labels = usable[torch.randint(0, len(usable), shape, generator=g)]
    labels[torch.rand(shape, generator=g) < 0.15] = IGNORE_INDEX
    return labels


def _reference_step(model, images, labels, pixel_loss_fn, ctx):
    """The step as it was: the model's logits upsampled by F.interpolate(align_corners=True) in fp32, then the loss."""
    with ctx.autocast():
        low = model(images, upsample=False)
    logits = F.interpolate(low.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    pixel_loss, valid = pixel_loss_fn(logits, labels)
    loss = global_pixel_mean(pixel_loss.sum(), valid.sum(), ctx)
    loss.backward()
    return loss.detach()


def _model(channels_last: bool):
    torch.manual_seed(3)
    model = build_model("hrnet_tiny", NUM_CLASSES).train()
    with torch.no_grad():  # larger weights than the init's N(0, 0.001): gradients well above rounding
        for p in model.parameters():
            if p.dim() == 4:
                p.normal_(0, 0.2)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@pytest.mark.parametrize("crop", [(41, 45), (40, 48)], ids=["4k+1", "not_4k+1"])
@pytest.mark.parametrize("loss", ["ce", "partial_label"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_plain_step_on_an_hrnet_equals_upsampling_with_interpolate(crop, loss, channels_last):
    pixel_loss_fn = cross_entropy_pixels if loss == "ce" else PartialLabelLoss(SETS)
    images = torch.randn(2, 3, *crop, generator=torch.Generator().manual_seed(0))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = _labels((2, *crop), seed=1, sets=SETS if loss == "partial_label" else None)
    ctx = StepContext(num_datasets=2)

    reference_model = _model(channels_last)
    expected_loss = _reference_step(reference_model, images, labels, pixel_loss_fn, ctx)
    model = _model(channels_last)
    out = ce_backward_step(model, images, labels, torch.tensor([0, 1]), ctx, pixel_loss_fn=pixel_loss_fn)

    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        if name == "head.conv.bias":  # feeds a BatchNorm: analytically zero, what is computed is rounding noise
            assert float(p.grad.abs().max()) < 1e-6
            continue
        scale = float(q.grad.abs().max())
        assert scale > 0, name
        assert float((p.grad - q.grad).abs().max()) <= 1e-5 * scale + 1e-9, name
    # the BatchNorm statistics saw the same batch
    for (name, a), b in zip(model.state_dict().items(), reference_model.state_dict().values()):
        if name.endswith("running_mean"):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_plain_step_calls_an_hrnet_at_quarter_resolution_and_interpolates_nothing_on_4k_plus_1(monkeypatch):
    """On a 4k + 1 crop the logits are upsampled by the x4 arithmetic: no align_corners=True interpolation is run."""
    corner_calls = []
    original = F.interpolate

    def recording(*args, **kwargs):
        corner_calls.append(kwargs.get("align_corners"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "interpolate", recording)
    model = _model(False)
    images, labels = torch.randn(2, 3, 41, 41), _labels((2, 41, 41), seed=2)
    ce_backward_step(model, images, labels, torch.tensor([0, 0]), StepContext(num_datasets=1))
    assert corner_calls and True not in corner_calls  # the model's own fusion upsampling (align_corners False) only


def test_another_model_trains_on_its_own_output():
    seen = []
    model = torch.nn.Conv2d(3, NUM_CLASSES, 1)
    model.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    ce_backward_step(model, torch.randn(2, 3, 9, 9), _labels((2, 9, 9), seed=3), torch.tensor([0, 0]), StepContext(num_datasets=1))
    assert seen == [(2, NUM_CLASSES, 9, 9)]


@pytest.mark.parametrize("size", [(37, 45), (21, 9)])
def test_the_fusable_formulation_equals_cross_entropy_after_interpolate(size):
    """What the compiled head computes (x4 as a view, cross-entropy as log-sum-exp minus the picked logit), run eagerly."""
    from mseg_semantic.model.upsample import upsample_logits_nhwc

    g = torch.Generator().manual_seed(4)
    low = (torch.randn(2, NUM_CLASSES, (size[0] + 3) // 4, (size[1] + 3) // 4, generator=g) * 3).requires_grad_()
    labels = _labels((2, *size), seed=5)
    fused = cross_entropy_nhwc(upsample_logits_nhwc(low, size, fusable=True), labels)
    (fused_grad,) = torch.autograd.grad(fused.sum(), low)
    expected, _ = cross_entropy_pixels(F.interpolate(low, size=size, mode="bilinear", align_corners=True), labels)
    (expected_grad,) = torch.autograd.grad(expected.sum(), low)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=1e-5)
    assert bool((fused[labels == IGNORE_INDEX] == 0).all())
    bad = labels.clone()
    bad[0, 0, 0] = NUM_CLASSES  # an unknown id is never silently a loss of some class
    assert torch.isnan(cross_entropy_nhwc(upsample_logits_nhwc(low, size, fusable=True), bad)[0, 0, 0])


def _inductor_available() -> str | None:
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "the CPU inductor backend needs a C++ compiler"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_inductor_available() is not None, reason=str(_inductor_available()))
def test_the_compiled_head_equals_eager_and_keeps_no_full_resolution_logits(tmp_path, monkeypatch):
    import re

    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(6)
    low = torch.randn(2, NUM_CLASSES, 10, 12, generator=g) * 3
    labels = _labels((2, 37, 45), seed=7)
    eager_head = UpsampledPixelLoss(cross_entropy_pixels)
    compiled_head = torch.compile(UpsampledPixelLoss(cross_entropy_pixels), dynamic=False)

    def run(head):
        x = low.clone().requires_grad_()
        pixel_loss, valid = head(x, labels)
        pixel_loss.sum().backward()
        return pixel_loss.detach(), valid, x.grad

    (compiled, codes) = run_and_get_code(run, compiled_head)
    eager = run(eager_head)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled[1], eager[1])
    torch.testing.assert_close(compiled[2], eager[2], rtol=1e-5, atol=1e-5)
    forward = codes[0]
    allocations = re.findall(r"empty_strided_\w+\(\(([^)]*)\)", forward)
    full_res_classes = [a for a in allocations if a.replace(" ", "").startswith("2,37,45,") and a.replace(" ", "") != "2,37,45,1"]
    assert allocations and not full_res_classes, allocations  # per-pixel scalars only: the logits stay in registers


@pytest.mark.slow
@pytest.mark.skipif(_inductor_available() is not None, reason=str(_inductor_available()))
def test_the_compiled_head_with_the_label_set_loss_equals_eager(tmp_path, monkeypatch):
    """TRAIN.compile with loss=partial_label: its autograd function and running marginal survive torch.compile
    (with the prior correction, the loss's most stateful form)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(8)
    heads = [UpsampledPixelLoss(PartialLabelLoss(SETS, set_prior_correction=True, eager_code_check=False)) for _ in range(2)]
    eager_head, compiled_head = heads[0], torch.compile(heads[1], dynamic=False)
    for step in range(2):  # the second step's target reads the marginal the first one moved
        low = torch.randn(2, NUM_CLASSES, 10, 12, generator=g) * 3
        labels = _labels((2, 37, 45), seed=9 + step, sets=SETS)
        outputs = []
        for head in (eager_head, compiled_head):
            x = low.clone().requires_grad_()
            pixel_loss, valid = head(x, labels)
            pixel_loss.sum().backward()
            outputs.append((pixel_loss.detach(), valid, x.grad))
        (eager_loss, eager_valid, eager_grad), (loss, valid, grad) = outputs
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
        assert torch.equal(valid, eager_valid)
        torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-6)
    eager_state, compiled_state = (h.pixel_loss_fn.state_dict() for h in heads)
    torch.testing.assert_close(compiled_state, eager_state, rtol=1e-6, atol=1e-9)
    assert not torch.equal(eager_state["class_marginal"], torch.full_like(eager_state["class_marginal"], 1 / NUM_CLASSES))


def test_the_graphed_step_writes_gradients_instead_of_zeroing_static_buffers():
    """No zero_ and no add_ into a zeroed buffer: backward writes each gradient (the graph's pool when captured)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
    from mseg_semantic.training.optim import build_sgd
    from mseg_semantic.training.speed import GraphedStep

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 1))
    step = GraphedStep(model, build_sgd(model.parameters(), 0.1, 0.9, 0.0, fused=True), ce_backward_step, StepContext(num_datasets=1),
                       None, capture=False)
    batch = (torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2, 8, 8)), torch.zeros(2, dtype=torch.long))
    step(*batch)
    ops = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Recorder():
        step(*batch)
    assert not [op for op in ops if op.startswith(("zero_", "_foreach_zero_"))]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_plain_step_and_loss_head_equal_interpolate(precision):
    """On the GPU, in bf16 autocast + channels_last as the trainer runs: the step's loss and gradients equal the
    F.interpolate head's (up to cuDNN's and the atomics' rounding), and the head alone at MSeg's 713 crop."""
    from mseg_semantic.model import autocast_context

    device = torch.device("cuda")
    ctx = StepContext(num_datasets=2, autocast=lambda: autocast_context(precision, "cuda"))
    images = torch.randn(2, 3, 65, 65, device=device).contiguous(memory_format=torch.channels_last)
    labels = _labels((2, 65, 65), seed=8).to(device)
    # the same convolution algorithms in both runs, and no TF32 (whose rounding would magnify the heads' differences)
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False, False
    try:
        reference_model = _model(True).to(device)
        expected = _reference_step(reference_model, images, labels, cross_entropy_pixels, ctx)
        model = _model(True).to(device)
        out = ce_backward_step(model, images, labels, torch.tensor([0, 1], device=device), ctx)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    a = torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if n != "head.conv.bias"])
    b = torch.cat([p.grad.flatten().float() for n, p in reference_model.named_parameters() if n != "head.conv.bias"])
    assert float((a - b).norm() / b.norm()) < (1e-5 if precision == "fp32" else 1e-2)

    low = (torch.randn(4, 194, 179, 179, device=device) * 3).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    low = low.contiguous(memory_format=torch.channels_last)
    big_labels = torch.randint(0, 194, (4, 713, 713), device=device)
    big_labels[:, :50] = IGNORE_INDEX
    results = []
    for head in (UpsampledPixelLoss(cross_entropy_pixels),
                 lambda x, y: cross_entropy_pixels(F.interpolate(x.float(), size=y.shape[-2:], mode="bilinear", align_corners=True), y)):
        x = low.detach().requires_grad_()
        pixel_loss, _ = head(x, big_labels)
        pixel_loss.sum().backward()
        results.append((pixel_loss.detach(), x.grad.float()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-2 if precision == "bf16" else 1e-4, atol=1e-4)
