"""benchmarks/gpu_check.py's machinery: a GPU lease is short, so a stuck job must cost only its own time limit and
a spent budget must leave a complete, readable result file."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_a_timed_out_job_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('{{\"partial\": 1}}', flush=True); time.sleep(60)")
    started = time.perf_counter()
    returncode, stdout, _ = gpu_check.run_job([sys.executable, "-c", child], dict(os.environ), limit=3)
    assert returncode is None and time.perf_counter() - started < 20
    assert gpu_check.parse_results(stdout) == [{"partial": 1}]  # what it printed before the limit is kept
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with the group; give the kernel a moment to reap it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {grandchild} outlived its job's time limit")


def test_results_are_read_from_json_lines_and_from_one_indented_object():
    assert gpu_check.parse_results('noise\n{"a": 1}\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
    assert gpu_check.parse_results('warming up\n{\n "c": [1,\n 2]\n}\n') == [{"c": [1, 2]}]
    assert gpu_check.parse_results("Traceback (most recent call last):\n  ...") == []


def test_a_spent_budget_skips_the_remaining_jobs_and_still_writes_the_file(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--quick", "--budget", "0", "--only", "numerics", "loader_fed", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["job"] for r in results] == ["numerics", "loader_fed"]
    assert all("budget" in r["skipped"] for r in results)
    assert not list(tmp_path.glob("*.part"))


def test_an_unknown_job_name_is_refused_with_the_known_ones(capsys):
    try:
        gpu_check.main(["--quick", "--only", "numerix", "--out", os.devnull])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("an unknown job name was accepted")
    err = capsys.readouterr().err
    assert "numerix" in err and "numerics" in err


# --- the efficiency plan and the step profile's kernel categories ---------------------------------------------------

summary_spec = importlib.util.spec_from_file_location("profile_summary", REPO / "benchmarks" / "profile_summary.py")
profile_summary = importlib.util.module_from_spec(summary_spec)
summary_spec.loader.exec_module(profile_summary)


def test_kernel_names_fall_into_their_categories():
    names = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "conv",
        "cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>": "bn",  # cuDNN's BatchNorm is not a conv
        "batch_norm_collect_statistics_channels_last_kernel": "bn",
        "triton_per_fused__native_batch_norm_legit_functional_add_relu_12": "bn",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>": "softmax_nll",
        "nll_loss_forward_reduce_cuda_kernel_2d": "softmax_nll",
        "triton_red_fused_add_cat_logsumexp_mul_sub_where_3": "softmax_nll",
        "upsample_bilinear2d_backward_nhwc_out_frame": "upsample",
        "vectorized_elementwise_kernel<4, at::native::lerp_kernel_scalar_weight>": "upsample",  # the eager x4 blends
        "multi_tensor_apply_kernel<TensorListMetadata<1>, ZeroFunctor<float, 1, 1, 0>>": "zero",  # foreach zeroing
        "vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "zero",
        "Memset (Device)": "zero",
        "multi_tensor_apply_kernel<FusedSgdMathFunctor<float, 3>>": "optimizer",
        "CatArrayBatchedCopy_contig<float, unsigned int, 4, 64, 64>": "copy",
        "unrolled_elementwise_kernel<direct_copy_kernel_cuda>": "copy",
        "vectorized_elementwise_kernel<4, at::native::threshold_kernel_impl>": "elementwise",
        "triton_poi_fused_add_relu_7": "elementwise",
        "reduce_kernel<512, 1, ReduceOp<float, func_wrapper_t<float, sum_functor>>>": "reduce",
        "aten::mkldnn_convolution": "conv",  # a CPU (--quick) profile's operators
        "aten::_fused_sgd_": "optimizer",
        "something_else": "other",
    }
    assert {name: profile_summary.kernel_category(name) for name in names} == names


def test_profile_summary_counts_per_step_and_busy_time_without_double_counting_overlaps():
    kernels = [("conv_a", 0, 1000), ("conv_a", 500, 1500), ("relu_b", 3000, 3500), ("conv_a", 10000, 11000), ("relu_b", 12000, 12500)]
    summary = profile_summary.summarise(kernels, steps=2, wall_ms=20.0)
    assert summary["kernels_per_step"] == 2.5
    assert summary["device_ms_per_step"] == 2.0  # 3 ms of conv + 1 ms of relu over 2 steps
    assert summary["busy_ms_per_step"] == 1.75  # the overlapping pair counts 1.5 ms, not 2
    assert summary["busy_fraction"] == round(3.5 / 20.0, 3)
    assert summary["by_category"]["conv"] == {"kernels": 1.5, "ms": 1.5, "share": 0.75}
    assert summary["top"][0]["kernel"] == "conv_a" and summary["top"][0]["calls_per_step"] == 1.5


def test_the_efficiency_plan_runs_the_cuda_tests_first_and_every_script_it_names_exists():
    jobs = gpu_check._efficiency_jobs(quick=False)
    names = [name for name, _, _ in jobs]
    assert len(set(names)) == len(names) and names[0] == "eff_cuda_tests"
    assert names[-1] == "eff_step_profile_compile_cuda_graphs"  # the cold compile last
    for name, command, limit in jobs:
        assert limit > 0
        for part in command:
            if part.endswith(".py"):
                assert (REPO / part).exists(), (name, part)
    tests = jobs[0][1]
    assert "gpu" in tests and all((REPO / t).exists() for t in tests if t.startswith("tests/"))
    assert sum(limit for name, _, limit in jobs if not name.endswith("compile_cuda_graphs")) <= 600


@pytest.mark.slow
def test_the_efficiency_plan_s_measuring_jobs_run_at_tiny_sizes_on_a_cpu(tmp_path):
    out = tmp_path / "eff.json"
    assert gpu_check.main(["--quick", "--plan", "efficiency", "--budget", "300", "--out", str(out), "--only", "eff_loss_head",
                           "eff_postprocess_1080p", "eff_step_profile_eager"]) == 0
    results = {r["job"]: r for r in json.loads(out.read_text())}
    assert all(r["returncode"] == 0 for r in results.values()), results
    head = results["eff_loss_head"]["results"][-1]
    assert [v["variant"] for v in head["variants"]] == ["interpolate", "x4"]
    assert head["variants"][1]["loss_max_abs_diff"] < 1e-5 and head["variants"][1]["grad_max_abs_diff"] < 1e-5
    post = results["eff_postprocess_1080p"]["results"][-1]["variants"]
    assert post["reordered"]["label_agreement"] == 1.0 and post["reordered"]["max_abs_diff"] < 1e-5
    profile = results["eff_step_profile_eager"]["results"][-1]["profile"]
    assert profile["kernels_per_step"] > 100 and "conv" in profile["by_category"]
