"""The baseline steps on CUDA with fp16 autocast and a GradScaler (the CPU tests cover the same code in fp32)."""

import pytest
import torch

import functools

from gradient_helpers import TinySegNet, ccsa_options, make_batch, mgda_options
from mseg_semantic.training.gradients.ccsa import ccsa_backward_step, sample_pairs
from mseg_semantic.training.gradients.mgda import mgda_backward_step
from mseg_semantic.training.gradients import StepContext

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["mgda", "ccsa"])
def test_step_under_fp16_autocast_and_grad_scaler(name):
    step = functools.partial(mgda_backward_step, options=mgda_options()) if name == "mgda" else \
        functools.partial(ccsa_backward_step, options=ccsa_options(num_pairs=64))
    torch.manual_seed(0)
    model = TinySegNet().cuda()
    images, labels, dataset_index = make_batch(6, [0, 1, 2, 0, 1, 2], size=64)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    ctx = StepContext(num_datasets=3, scaler=scaler, autocast=lambda: torch.autocast("cuda", dtype=torch.float16))
    out = step(model, images.cuda(), labels.cuda(), dataset_index.cuda(), ctx)
    assert torch.isfinite(out.loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler.step(optimizer)  # unscales: finite gradients, so the step is applied
    scaler.update()
    assert scaler.get_scale() == 2.0**10


def test_pair_sampling_on_the_gpu_with_a_cuda_generator():
    labels = torch.randint(0, 5, (4, 16, 16), device="cuda")
    domains = torch.tensor([0, 1, 2, 1], device="cuda")
    pairs = sample_pairs(labels, domains, 100, 0.25, generator=torch.Generator("cuda").manual_seed(0))
    assert (pairs.num_positive, pairs.num_negative) == (25, 75)
    flat, pixel_domain = labels.reshape(-1), domains.repeat_interleave(256)
    assert (pixel_domain[pairs.first] != pixel_domain[pairs.second]).all()
    assert torch.equal(flat[pairs.first] == flat[pairs.second], pairs.same_class)
