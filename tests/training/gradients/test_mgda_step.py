import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from gradient_helpers import TinySegNet, make_batch, mgda_options
from mseg_semantic.distributed import DistInfo
from mseg_semantic.training.gradients import mgda
from mseg_semantic.training.gradients.mgda import gradient_normalizers, min_norm_weights, mgda_backward_step
from mseg_semantic.training.gradients import StepContext


def manual_task_gradients(model, images, labels, dataset_index, tasks):
    """Per-task mean CE and its gradient on every parameter, computed independently of the step."""
    params = list(model.parameters())
    logits = model(images)
    losses, grads = [], []
    for t in tasks:
        rows = dataset_index == t
        loss = F.cross_entropy(logits[rows], labels[rows], ignore_index=255)
        grad = torch.autograd.grad(loss, params, retain_graph=True)
        losses.append(float(loss.detach()))
        grads.append(torch.cat([g.reshape(-1) for g in grad]).double())
    return losses, grads


def step_gradient(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def test_two_tasks_equal_the_manual_computation():
    torch.manual_seed(0)
    model = TinySegNet()
    reference = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 1, 0, 1])

    out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())

    (loss0, loss1), (g0, g1) = manual_task_gradients(reference, images, labels, dataset_index, [0, 1])
    gamma = float(torch.clamp(torch.dot(g1 - g0, g1) / torch.dot(g0 - g1, g0 - g1), 0, 1))
    assert 0.0 < gamma < 1.0  # the test is only meaningful in the interior case
    torch.testing.assert_close(step_gradient(model), gamma * g0 + (1 - gamma) * g1, rtol=1e-4, atol=1e-7)
    assert out.scalars["mgda/weight/0"] == pytest.approx(gamma, rel=1e-4)
    assert out.scalars["mgda/weight/1"] == pytest.approx(1 - gamma, rel=1e-4)
    assert out.scalars["mgda/grad_norm/0"] == pytest.approx(float(g0.norm()), rel=1e-4)
    assert float(out.loss) == pytest.approx(gamma * loss0 + (1 - gamma) * loss1, rel=1e-5)
    torch.testing.assert_close(out.per_dataset_loss, torch.tensor([loss0, loss1]), rtol=1e-5, atol=1e-6)


def test_every_shared_parameter_gets_a_finite_gradient_and_weights_on_the_simplex():
    torch.manual_seed(1)
    model = TinySegNet()
    images, labels, dataset_index = make_batch(6, [0, 1, 2, 0, 1, 2], seed=1)
    out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3), mgda_options())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    weights = [out.scalars[f"mgda/weight/{t}"] for t in range(3)]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    assert out.scalars["mgda/num_tasks"] == 3


def test_tasks_absent_from_the_batch_are_dropped():
    torch.manual_seed(2)
    model = TinySegNet()
    reference = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 2, 3, 2], seed=2)
    labels[2] = 255  # dataset 3 is present but has no valid pixel: dropped as well
    out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=5), mgda_options())
    assert sorted(k for k in out.scalars if k.startswith("mgda/weight/")) == ["mgda/weight/0", "mgda/weight/2"]
    assert out.scalars["mgda/num_tasks"] == 2
    assert [math.isnan(v) for v in out.per_dataset_loss.tolist()] == [False, True, False, True, True]
    _, (g0, g2) = manual_task_gradients(reference, images, labels, dataset_index, [0, 2])
    w0 = out.scalars["mgda/weight/0"]
    torch.testing.assert_close(step_gradient(model), w0 * g0 + (1 - w0) * g2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("normalization", ["loss", "l2", "loss+"])
def test_normalised_weights_scale_the_raw_task_gradients(normalization):
    torch.manual_seed(3)
    model = TinySegNet()
    reference = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(6, [0, 1, 2, 0, 1, 2], seed=3)
    out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3), mgda_options(normalization=normalization))

    losses, grads = manual_task_gradients(reference, images, labels, dataset_index, [0, 1, 2])
    gram = torch.stack(grads) @ torch.stack(grads).T
    divisors = gradient_normalizers(np.sqrt(np.diag(gram.numpy())), losses, normalization)
    weights = min_norm_weights(gram.numpy() / np.outer(divisors, divisors))
    np.testing.assert_allclose([out.scalars[f"mgda/weight/{t}"] for t in range(3)], weights, atol=1e-4)
    expected = sum(float(w) * g for w, g in zip(weights, grads))
    torch.testing.assert_close(step_gradient(model), expected, rtol=1e-3, atol=1e-6)


def test_grad_scaler_leaves_scaled_gradients_and_the_same_weights():
    torch.manual_seed(4)
    model = TinySegNet()
    plain = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 1, 1, 0], seed=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled_out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2, scaler=scaler), mgda_options())
    plain_out = mgda_backward_step(plain, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())
    torch.testing.assert_close(step_gradient(model), 1024.0 * step_gradient(plain), rtol=1e-4, atol=1e-6)
    assert scaled_out.scalars["mgda/weight/0"] == pytest.approx(plain_out.scalars["mgda/weight/0"], rel=1e-5)
    assert scaled_out.scalars["mgda/grad_norm/0"] == pytest.approx(plain_out.scalars["mgda/grad_norm/0"], rel=1e-4)
    assert float(scaled_out.loss) == pytest.approx(float(plain_out.loss), rel=1e-6)


def test_gradients_accumulate_like_backward():
    torch.manual_seed(5)
    model = TinySegNet()
    fresh = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 1, 0, 1], seed=5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())
    mgda_backward_step(fresh, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())
    torch.testing.assert_close(step_gradient(model), step_gradient(fresh) + 1.0)


def test_a_batch_without_valid_pixels_leaves_the_gradients_untouched():
    model = TinySegNet()
    images, labels, dataset_index = make_batch(2, [0, 1])
    labels[:] = 255
    out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())
    assert all(p.grad is None for p in model.parameters())
    assert out.scalars["mgda/num_tasks"] == 0 and torch.isnan(out.per_dataset_loss).all()


def test_bad_inputs_are_named():
    model = TinySegNet()
    images, labels, dataset_index = make_batch(2, [0, 3])
    with pytest.raises(ValueError, match=r"dataset_index.*\[0, 2\)"):
        mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2), mgda_options())
    with pytest.raises(ValueError, match="normalization 'l1'"):
        mgda_backward_step(model, images, labels, torch.tensor([0, 1]), StepContext(num_datasets=2), dataclasses.replace(mgda_options(), normalization="l1"))


# ---- two processes (gloo): the same problem and weights on every rank, equal to one process ----

DDP_DATASETS = [0, 1, 1, 2]  # rank 0 holds tasks 0 and 1, rank 1 tasks 1 and 2; task 3 is absent


def _ddp_model(sync_bn: bool, wrap: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model, what the step receives). Without BatchNorm a rank's forward equals the full batch's rows. With
    ``sync_bn`` the BatchNorm layers become SyncBatchNorm in eval mode (no batch statistics: SyncBN syncs on
    CUDA only), converted after DDP's construction, which refuses SyncBN on CPU; the step must treat the ranks
    as coupled all the same."""
    torch.manual_seed(0)
    model = TinySegNet(batch_norm=sync_bn)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
    if sync_bn:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()  # in place below the root, same parameters
    return model, wrapped


def _ddp_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    differentiated = []
    flat_gradient = mgda._flat_gradient
    mgda._flat_gradient = lambda loss, params: differentiated.append(1) or flat_gradient(loss, params)
    try:
        for sync_bn in (False, True):
            differentiated.clear()
            model, ddp = _ddp_model(sync_bn, wrap=True)
            images, labels, dataset_index = make_batch(4, DDP_DATASETS, seed=7)
            rows = slice(rank * 2, rank * 2 + 2)
            ctx = StepContext(num_datasets=4, info=DistInfo(rank, world_size, backend="gloo"))
            out = mgda_backward_step(ddp, images[rows], labels[rows], dataset_index[rows], ctx, mgda_options())
            grads = [p.grad.clone() for p in model.parameters()]
            torch.save({"grads": grads, "scalars": out.scalars, "loss": out.loss, "per_dataset": out.per_dataset_loss,
                        "backward_passes": len(differentiated)}, f"{out_dir}/rank{rank}_{sync_bn}.pt")
        dist.barrier()  # as shutdown_distributed does: no rank leaves while a peer is still in a collective
    finally:
        dist.destroy_process_group()


def test_distributed_step_matches_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for sync_bn in (False, True):
        ranks = [torch.load(tmp_path / f"rank{r}_{sync_bn}.pt") for r in range(2)]
        # each rank differentiates the tasks it holds; with SyncBatchNorm every task present in the global batch
        assert [r["backward_passes"] for r in ranks] == ([3, 3] if sync_bn else [2, 2])

        model, _ = _ddp_model(sync_bn, wrap=False)
        images, labels, dataset_index = make_batch(4, DDP_DATASETS, seed=7)
        single = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=4), mgda_options())

        assert ranks[0]["scalars"] == ranks[1]["scalars"]  # bit-identical weights on every rank
        for g0, g1 in zip(ranks[0]["grads"], ranks[1]["grads"]):
            assert torch.equal(g0, g1)
        for g, p in zip(ranks[0]["grads"], model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
        for key, value in single.scalars.items():
            assert ranks[0]["scalars"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
        assert sorted(k for k in single.scalars if k.startswith("mgda/weight/")) == ["mgda/weight/0", "mgda/weight/1", "mgda/weight/2"]
        torch.testing.assert_close(ranks[0]["per_dataset"], single.per_dataset_loss, equal_nan=True)
        assert float(ranks[1]["loss"]) == pytest.approx(float(single.loss), rel=1e-5)
