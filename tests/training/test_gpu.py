"""CUDA paths of mseg-train: bf16/fp16 autocast (+channels_last) and, with 2 GPUs, NCCL + SyncBatchNorm.

The CPU tests cover the same code (bf16 and fp16 autocast, gloo, resume); these check the CUDA specifics.
"""

from __future__ import annotations

import pytest
import torch

from train_helpers import final_state, make_world, run_torchrun, run_train, write_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_channels_last_on_cuda(tmp_path, precision):
    world = make_world(tmp_path / "world")
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 4, "checkpoint_every": 2, "channels_last": True, "batch_size": 6})
    result = run_train(config, f"output_dir={tmp_path / 'run'}", f"precision={precision}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device cuda:0" in result.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)
    assert state["meta"]["precision"] == precision
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path / "run").values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_with_sync_batchnorm_match_one_gpu(tmp_path):
    world = make_world(tmp_path / "world")
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 3, "checkpoint_every": 3, "sync_bn": True})
    single = run_train(config, f"output_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_torchrun(config, 2, f"output_dir={tmp_path / 'two'}", timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    for key in one:  # SyncBN makes the batch statistics those of the global batch; GPU kernels are not bit-exact
        if one[key].is_floating_point():
            torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)
