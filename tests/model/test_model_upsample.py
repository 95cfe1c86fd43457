"""The exact x4 upsampling (mseg_semantic/model/upsample.py) against F.interpolate(align_corners=True), forward and
backward, and HRNet's BatchNorm without the num_batches_tracked counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mseg_semantic.model import build_model
from mseg_semantic.model.hrnet import BatchNorm2d, upsample_logits
from mseg_semantic.model.upsample import exact_x4, upsample_logits_nhwc, upsample_x4, upsample_x4_nhwc


def _reference(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True)


def _input(n, c, h, w, dtype, channels_last, seed=0):
    x = (torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 4).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def test_exact_x4_holds_for_4k_plus_1_outputs_only():
    assert exact_x4((179, 179), (713, 713))
    assert exact_x4((2, 9), (5, 33)) and exact_x4((1, 3), (1, 9))
    assert not exact_x4((179, 179), (712, 713))
    assert not exact_x4((10, 12), (40, 48))  # HRNet on a 40 x 48 crop: not an exact x4 map
    assert not exact_x4((3, 3), (3, 3))


@pytest.mark.parametrize("hw", [(5, 7), (2, 2), (9, 6), (1, 4), (12, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_x4_equals_interpolate_forward_and_backward(hw, dtype, channels_last):
    h, w = hw
    size = (4 * h - 3, 4 * w - 3)
    x = _input(2, 5, h, w, dtype, channels_last)
    expected = _reference(x, size)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (expected_grad,) = torch.autograd.grad((expected * grad_out).sum(), x)

    out = upsample_x4(x)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    # the memory format of the input is kept, as F.interpolate keeps it
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=2e-6)
    (grad,) = torch.autograd.grad((out * grad_out).sum(), x)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)

    for fusable in (False, True):  # eager, and the broadcast arithmetic torch.compile is given
        nhwc = upsample_x4_nhwc(x, fusable=fusable)
        assert nhwc.shape == (2, *size, 5) and nhwc.dtype == torch.float32
        assert nhwc.is_contiguous() or fusable  # fusable: a view the compiler computes in place
        torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), expected, rtol=1e-6, atol=2e-6)
        (grad_nhwc,) = torch.autograd.grad((nhwc * grad_out.permute(0, 2, 3, 1)).sum(), x)
        torch.testing.assert_close(grad_nhwc, expected_grad, rtol=1e-5, atol=1e-5)


def test_low_resolution_grid_points_are_copied_exactly():
    x = _input(1, 3, 6, 5, torch.float32, False).detach()
    out = upsample_x4(x)
    assert torch.equal(out[..., ::4, ::4], x)  # weight 1 and 0: no rounding at all


@pytest.mark.parametrize("fusable", [False, True])
def test_the_backward_has_no_scattered_adds(fusable):
    """The gradient is sums over the four phases: no index_add / scatter (atomics on a GPU), no upsample kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = _input(2, 4, 5, 6, torch.float32, True)
    with Recorder():
        upsample_x4_nhwc(x, fusable=fusable).square().sum().backward()
    backward = seen[seen.index("ones_like.default"):]  # the autograd engine's seed, then the backward's ops
    assert len(backward) > 5
    assert not [name for name in seen if "scatter" in name or "index_add" in name or "upsample" in name or "index_put" in name]


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_logits_takes_x4_when_exact_and_interpolate_otherwise(channels_last, monkeypatch):
    exact = _input(2, 6, 5, 7, torch.bfloat16, channels_last).detach()
    other = _input(2, 6, 10, 12, torch.float32, channels_last).detach()
    expected_exact, expected_other = _reference(exact, (17, 25)), _reference(other, (40, 48))
    calls = []
    original = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.testing.assert_close(upsample_logits(exact, (17, 25)), expected_exact, rtol=1e-6, atol=1e-6)
    assert calls == []
    assert torch.equal(upsample_logits(other, (40, 48)), expected_other)
    assert calls == [1]
    nhwc = upsample_logits_nhwc(other, (40, 48))
    assert nhwc.is_contiguous() and nhwc.shape == (2, 40, 48, 6)
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), expected_other, rtol=1e-6, atol=1e-6)
    same = upsample_logits_nhwc(other, (10, 12))  # already at the size: only laid out
    assert torch.equal(same, other.permute(0, 2, 3, 1))


def test_hrnet_output_on_a_4k_plus_1_crop_equals_interpolating_its_quarter_resolution_logits():
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", 5).eval()
    x = torch.randn(2, 3, 41, 45)
    with torch.no_grad():
        low = model(x, upsample=False)
        assert tuple(low.shape[-2:]) == (11, 12) and exact_x4(low.shape[-2:], x.shape[-2:])
        torch.testing.assert_close(model(x), _reference(low, (41, 45)), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- BatchNorm without the counter


def _pair(momentum, seed=0):
    torch.manual_seed(seed)
    ours = BatchNorm2d(6, momentum=momentum)
    torch.manual_seed(seed)
    stock = torch.nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        for bn in (ours, stock):
            bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
            bn.bias.copy_(torch.linspace(-0.2, 0.3, 6))
    return ours, stock


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_equals_stock_in_training_and_eval_without_counting(channels_last):
    ours, stock = _pair(0.01)
    for step in range(3):
        x = torch.randn(4, 6, 5, 7, generator=torch.Generator().manual_seed(step)) * 3 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ours, out_stock = ours(a), stock(b)
        assert torch.equal(out_ours, out_stock)
        out_ours.square().sum().backward()
        out_stock.square().sum().backward()
        assert torch.equal(a.grad, b.grad) and torch.equal(ours.weight.grad, stock.weight.grad)
    assert torch.equal(ours.running_mean, stock.running_mean) and torch.equal(ours.running_var, stock.running_var)
    assert int(stock.num_batches_tracked) == 3 and int(ours.num_batches_tracked) == 0  # the only difference
    ours.eval(), stock.eval()
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(ours(x), stock(x))


def test_batchnorm_without_momentum_still_counts_for_its_cumulative_average():
    ours, stock = _pair(None)
    for step in range(3):
        x = torch.randn(4, 6, 5, 7, generator=torch.Generator().manual_seed(step)) + step
        assert torch.equal(ours(x), stock(x))
    assert int(ours.num_batches_tracked) == 3
    assert torch.equal(ours.running_mean, stock.running_mean) and torch.equal(ours.running_var, stock.running_var)


def test_hrnet_state_dict_keys_and_values_load_and_save_as_before(monkeypatch):
    """The counter stays in the state dict: MSeg's checkpoints and this project's load and save the same keys."""
    from mseg_semantic.model import hrnet

    ours = build_model("hrnet_tiny", 4)
    assert all(type(m) is BatchNorm2d for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d))
    monkeypatch.setattr(hrnet, "_bn", lambda c: torch.nn.BatchNorm2d(c, momentum=hrnet.BN_MOMENTUM))
    stock = build_model("hrnet_tiny", 4)
    assert not any(type(m) is BatchNorm2d for m in stock.modules())
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert any(k.endswith("num_batches_tracked") for k in ours.state_dict())
    stock.train()(torch.randn(2, 3, 32, 32))  # the stock model counts: a state dict with counters of 1
    result = ours.load_state_dict(stock.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in stock.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)


def test_sync_batchnorm_conversion_gives_stock_sync_batchnorm_with_the_state():
    model = build_model("hrnet_tiny", 4)
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.25)
        model.bn1.num_batches_tracked.fill_(7)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.SyncBatchNorm for m in norms)
    assert converted.bn1.momentum == 0.01 and float(converted.bn1.running_mean[0]) == 0.25
    assert int(converted.bn1.num_batches_tracked) == 7
    assert list(converted.state_dict()) == list(build_model("hrnet_tiny", 4).state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_x4_equals_interpolate_at_mseg_s_crop(dtype, channels_last):
    """179 -> 713 (MSeg's crop) with 194 classes on the GPU, forward and backward, eager and the fusable form."""
    x = (torch.randn(2, 194, 179, 179, device="cuda") * 4).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    expected = _reference(x, (713, 713))
    grad_out = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad((expected * grad_out).sum(), x)
    out = upsample_x4(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=4e-6)
    (grad,) = torch.autograd.grad((out * grad_out).sum(), x)
    # F.interpolate's backward adds with atomics in an arbitrary order: a few float roundings apart
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=1e-4 if dtype == torch.float32 else 1e-2, atol=1e-4)
    for fusable in (False, True):
        nhwc = upsample_x4_nhwc(x, fusable=fusable)
        torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), expected, rtol=1e-6, atol=4e-6)
