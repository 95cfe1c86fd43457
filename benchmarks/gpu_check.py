"""Every GPU figure of the performance table, and the CUDA tests, in one call: for a GPU machine's short lease.

    python benchmarks/gpu_check.py --budget 480 --out gpu_check.json   # on the GPU machine
    python benchmarks/gpu_check.py --quick --out /tmp/check.json       # CPU dry run at tiny sizes: checks the script
    python benchmarks/gpu_check.py --plan efficiency --out eff.json    # the x4 loss head / reordered inference check

Jobs run in the order below, most wanted first, each in its own process group with a time limit, so a slow or
failing job costs only itself; once ``--budget`` seconds are spent the rest are recorded as skipped. Every result
(or error) is one JSON object, printed as it finishes and rewritten to ``--out`` after each job, so a run stopped
from outside still leaves what it measured. Jobs:

  step_*       benchmarks/bench_step.py, one variant per job: the trainer's step on in-memory batches (HRNet-W48
               713 x 713 bf16 + channels_last at batch 16 and 8, fp32 at batch 2; the demo's hrnet_w18_small),
               eager and TRAIN.cuda_graphs first, TRAIN.compile (regions + loss head) after the loader-fed jobs (its
               cold compile is the slowest job)
  step_vit*    the same for the DINOv2 models at 714 x 714 in bf16 with AdamW (layer decay 0.9): ViT-S/14 and ViT-B/14 at
               batch 8, ViT-L/14 at batch 5 (the release config's per-GPU batch), eager and cuda_graphs; the one-GPU
               config's ViT-B/14 adapters step at batch 16 (its peak memory says whether that batch fits 80 GB);
               TRAIN.compile (the transformer blocks and the head) near the end
  inference    benchmarks/bench_inference.py at 1080 x 1920, base 1080, 713 windows, flip (fp32 .. bf16 + graphs);
               then bf16 at a window batch of 16 (one pass, no padding) with the costliest operators listed
  cuda_tests   pytest -m gpu: every test that needs CUDA
  numerics     bf16 + channels_last training step vs fp32 on the same weights and batch
  loader_fed   benchmarks/bench_train.py on a world of 1080p JPEGs written first (15 workers, batch 15, bf16 + CL)
  demo_loader  benchmarks/bench_train.py with config/train/demo.yaml (the loader-fed demo), eager vs cuda_graphs

``--plan efficiency`` (budget 330 s; run it with a 420 s device limit) checks the exact x4 loss head, the reordered
inference post-processing and where a W48 step's time goes, most decisive first:

  eff_cuda_tests        the CUDA tests of those changes (x4 head, reordered inference against MSeg's order, bf16/fp32)
  eff_loss_head         bench_loss_head.py at 713 x 713, batch 16, bf16 logits: F.interpolate head vs x4, eager and
                        compiled (ms and peak memory per step; loss and gradient differences)
  eff_postprocess_1080p bench_postprocess.py with stored logits: MSeg's order vs reordered vs fused, 1080p, 713 windows
  eff_e2e_1080p         bench_postprocess.py with HRNet-W48, single scale + flip, bf16, CUDA graphs: s/image
  eff_step_profile_*    bench_step.py W48 713 bf16 b16 channels_last, eager then cuda_graphs: kernels and ms per step
                        by category (conv, bn, elementwise, copy, upsample, softmax/nll, optimizer, zero)
  eff_postprocess_1080p_projected  as eff_postprocess_1080p, projected onto 19 classes
  eff_step_profile_compile_cuda_graphs  (last: its cold compile is the slowest job)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _step_job(name: str, variant: str, model: list[str], batch: int, precision: str, channels_last: bool, short: list[str],
              limit: float) -> tuple[str, list[str], float]:
    command = [sys.executable, str(BENCH / "bench_step.py"), *model, "--batch", str(batch), "--precision", precision,
               *(["--channels-last"] if channels_last else []), *short, "--one", variant]
    return f"{name}_{variant.replace('+', '_')}", command, limit


def _jobs(quick: bool, world: Path, demo_root: Path) -> list[tuple[str, list[str], float]]:
    py = sys.executable
    w48 = ["--model", "hrnet_tiny", "--crop", "64"] if quick else ["--model", "hrnet_w48", "--crop", "713"]
    demo_model = ["--model", "hrnet_w18_small", "--crop", "96"]
    short = ["--warmup", "1", "--iters", "2"] if quick else ["--warmup", "4", "--iters", "15"]
    b16, b8 = (2, 2) if quick else (16, 8)
    vit_recipe = ["--optimizer", "adamw", "--layer-decay", "0.9"]

    def vit(name: str) -> list[str]:  # the tiny test ViT at 28 x 28 in the CPU dry run
        return ["--model", "dinov2_tiny_test", "--crop", "28", *vit_recipe] if quick else ["--model", name, "--crop", "714", *vit_recipe]

    vit_b5 = 2 if quick else 5
    adapters = [*vit("dinov2_vitb14"), "--backbone-mode", "adapters"]
    loader_overrides = [f"data_root={world}", "dataset=[cityscapes-19,ade20k-150,mapillary-public65]", "dataset_gpu_mapping=null",
                        "precision=bf16", "channels_last=True"]
    demo_overrides = [f"data_root={demo_root}", "generate_demo_world=True", "cpu_threads=null", "workers=4"]
    demo_iters = ["--warmup", "5", "--iters", "5" if quick else "60"]
    return [
        _step_job("step_w48_bf16_cl_b16", "eager", w48, b16, "bf16", True, short, 120),
        _step_job("step_w48_bf16_cl_b16", "cuda_graphs", w48, b16, "bf16", True, short, 120),
        _step_job("step_w48_bf16_cl_b8", "eager", w48, b8, "bf16", True, short, 90),
        _step_job("step_w48_bf16_cl_b8", "cuda_graphs", w48, b8, "bf16", True, short, 90),
        _step_job("step_w48_fp32_b2", "eager", w48, 2, "fp32", False, short, 90),
        _step_job("step_w48_fp32_b2", "cuda_graphs", w48, 2, "fp32", False, short, 90),
        _step_job("step_demo_model", "eager", demo_model, 6, "fp32", False, short, 60),
        _step_job("step_demo_model", "cuda_graphs", demo_model, 6, "fp32", False, short, 60),
        _step_job("step_vits_bf16_b8", "eager", vit("dinov2_vits14"), b8, "bf16", False, short, 90),
        _step_job("step_vits_bf16_b8", "cuda_graphs", vit("dinov2_vits14"), b8, "bf16", False, short, 90),
        _step_job("step_vitb_bf16_b8", "eager", vit("dinov2_vitb14"), b8, "bf16", False, short, 90),
        _step_job("step_vitb_bf16_b8", "cuda_graphs", vit("dinov2_vitb14"), b8, "bf16", False, short, 90),
        _step_job("step_vitl_bf16_b5", "eager", vit("dinov2_vitl14"), vit_b5, "bf16", False, short, 120),
        _step_job("step_vitl_bf16_b5", "cuda_graphs", vit("dinov2_vitl14"), vit_b5, "bf16", False, short, 120),
        _step_job("step_vitb_adapters_bf16_b16", "eager", adapters, b16, "bf16", False, short, 120),
        ("inference_1080p_vitb", [py, str(BENCH / "bench_inference.py"), *(["--model", "dinov2_tiny_test", "--height", "96", "--width",
                                  "128", "--base-size", "96", "--crop", "56"] if quick else ["--model", "dinov2_vitb14", "--height", "1080",
                                  "--width", "1920", "--base-size", "1080", "--crop", "714"]), "--window-batch", "12",
                                  "--only", *(["batched", "batched_folded_nhwc"] if quick else ["batched", "batched_folded_nhwc_bf16",
                                  "batched_folded_nhwc_bf16_graphs"]), "--device", "cpu" if quick else "cuda"], 150),
        ("inference_1080p", [py, str(BENCH / "bench_inference.py"), *(["--model", "hrnet_tiny", "--height", "96", "--width", "128",
                             "--base-size", "96", "--crop", "64"] if quick else ["--model", "hrnet_w48", "--height", "1080",
                             "--width", "1920", "--base-size", "1080", "--crop", "713"]),
                             "--window-batch", "12", "--device", "cpu" if quick else "cuda"], 150),
        ("inference_1080p_profile", [py, str(BENCH / "bench_inference.py"), *(["--model", "hrnet_tiny", "--height", "96", "--width",
                                     "128", "--base-size", "96", "--crop", "64"] if quick else ["--model", "hrnet_w48", "--height",
                                     "1080", "--width", "1920", "--base-size", "1080", "--crop", "713"]), "--window-batch", "16",
                                     "--only", *(["batched_folded_nhwc"] if quick else ["batched_folded_nhwc_bf16",
                                     "batched_folded_nhwc_bf16_graphs"]), "--profile", "--device", "cpu" if quick else "cuda"], 90),
        ("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"], 240),
        ("numerics", [py, __file__, "--numerics", *(["--quick"] if quick else [])], 90),
        ("loader_fed", [py, str(BENCH / "bench_train.py"), "--config", "config/train/1080_release/mseg-relabeled-1m.yaml",
                        "--warmup", "2" if quick else "5", "--iters", "2" if quick else "30", *loader_overrides,
                        "batch_size=3" if quick else "batch_size=15", "workers=2" if quick else "workers=15",
                        *(["model=hrnet_tiny", "train_h=64", "train_w=64", "short_size=96"] if quick else [])], 180),
        _step_job("step_w48_bf16_cl_b16", "compile", w48, b16, "bf16", True, short, 300),
        ("demo_loader_eager", [py, str(BENCH / "bench_train.py"), "--config", "config/train/demo.yaml", *demo_iters, *demo_overrides], 150),
        ("demo_loader_cuda_graphs", [py, str(BENCH / "bench_train.py"), "--config", "config/train/demo.yaml", *demo_iters,
                                     *demo_overrides, *([] if quick else ["cuda_graphs=True"])], 120),
        _step_job("step_w48_bf16_cl_b16", "compile+cuda_graphs", w48, b16, "bf16", True, short, 200),
        _step_job("step_w48_bf16_cl_b8", "compile+cuda_graphs", w48, b8, "bf16", True, short, 200),
        _step_job("step_demo_model", "compile+cuda_graphs", demo_model, 6, "fp32", False, short, 200),
        _step_job("step_vitb_bf16_b8", "compile", vit("dinov2_vitb14"), b8, "bf16", False, short, 240),
        _step_job("step_vitl_bf16_b5", "compile", vit("dinov2_vitl14"), vit_b5, "bf16", False, short, 300),
        _step_job("step_vitl_bf16_b5", "compile+cuda_graphs", vit("dinov2_vitl14"), vit_b5, "bf16", False, short, 300),
    ]


def _efficiency_jobs(quick: bool) -> list[tuple[str, list[str], float]]:
    py = sys.executable
    device = ["--device", "cpu" if quick else "cuda"]
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/model/test_model_upsample.py",
             "tests/training/gradients/test_loss_head.py", "tests/evaluation/test_inference_order.py"]
    loss_head = [py, str(BENCH / "bench_loss_head.py"), *device, *(
        ["--crop", "33", "--batch", "2", "--classes", "7", "--warmup", "1", "--iters", "1", "--repeats", "1", "--variants", "interpolate", "x4"]
        if quick else ["--crop", "713", "--batch", "16", "--dtype", "bf16", "--warmup", "2", "--iters", "5", "--repeats", "3",
                       "--variants", "interpolate", "x4", "x4_compiled", "interpolate_compiled"])]
    geometry = (["--height", "96", "--width", "128", "--base-size", "96", "--crop", "65", "--repeats", "1"] if quick else
                ["--height", "1080", "--width", "1920", "--base-size", "1080", "--crop", "713", "--repeats", "5", "--precision", "bf16"])
    post = [py, str(BENCH / "bench_postprocess.py"), "--model", "replay", *geometry, *device, "--variants", "mseg_order", "reordered",
            *([] if quick else ["reordered_fused"])]
    e2e = [py, str(BENCH / "bench_postprocess.py"), "--model", "hrnet_tiny" if quick else "hrnet_w48", *geometry, *device,
           *([] if quick else ["--cuda-graphs"]), "--sequential", "--variants", "mseg_order", "reordered"]
    w48 = ["--model", "hrnet_tiny", "--crop", "33", "--batch", "2", "--cpu"] if quick else ["--model", "hrnet_w48", "--crop", "713", "--batch", "16"]
    steps = ["--warmup", "1", "--iters", "1", "--profile-iters", "1"] if quick else ["--warmup", "4", "--iters", "10", "--profile-iters", "2"]

    def profile(variant: str, limit: float) -> tuple[str, list[str], float]:
        return (f"eff_step_profile_{variant.replace('+', '_')}", [py, str(BENCH / "bench_step.py"), *w48, "--precision", "bf16",
                "--channels-last", *steps, "--one", variant], limit)

    return [
        ("eff_cuda_tests", tests, 60),
        ("eff_loss_head", loss_head, 150),
        ("eff_postprocess_1080p", post, 90),
        ("eff_e2e_1080p", e2e, 90),
        profile("eager", 75),
        profile("cuda_graphs", 75),
        ("eff_postprocess_1080p_projected", [*post, "--projection", "19"], 60),
        profile("compile+cuda_graphs", 240),
    ]


PLANS = {"release": 480.0, "efficiency": 330.0}  # plan -> default budget, seconds


def numerics(quick: bool) -> dict:
    """The bf16 + channels_last training step against fp32 on the same weights and batch, beside stock autocast's
    bf16 (fp32 upsampling outputs): this project's bf16 upsampling must stay as close to fp32 as stock bf16 is.
    TF32 is off for the fp32 reference. Gradient agreement is reported for all parameters and per part."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from mseg_semantic.model import autocast_context, build_model, hrnet
    from mseg_semantic.training.gradients import StepContext
    from mseg_semantic.training.gradients.cross_entropy import ce_backward_step

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    name, batch, crop = ("hrnet_tiny", 2, 64) if quick else ("hrnet_w48", 2, 513)
    g = torch.Generator().manual_seed(0)
    # labels with structure (regions of 10 classes, each with its own colour): with uniformly random labels the
    # per-pixel gradients cancel and what is left is rounding noise, which says nothing about the precision
    cells = torch.randint(0, 10, (batch, 1, crop // 32 + 1, crop // 32 + 1), generator=g).float()
    labels = F.interpolate(cells, size=(crop, crop), mode="nearest")[:, 0].long()
    colours = torch.randn(10, 3, generator=g)
    images = colours[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(batch, 3, crop, crop, generator=g)
    images, labels = images.to(device), labels.to(device)
    ours_upsample = hrnet._upsample

    def stock_upsample(x, size, align_corners):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)

    grads, losses = {}, {}
    for variant in ("fp32", "bf16_stock_autocast", "bf16"):
        precision = variant[:4]
        hrnet._upsample = stock_upsample if variant == "bf16_stock_autocast" else ours_upsample
        torch.manual_seed(0)
        model = build_model(name, 194).to(device)
        fmt = torch.contiguous_format if variant == "fp32" else torch.channels_last
        model = model.to(memory_format=fmt).train()
        ctx = StepContext(num_datasets=1, autocast=lambda: autocast_context(precision, device.type))
        out = ce_backward_step(model, images.contiguous(memory_format=fmt), labels, torch.zeros(batch, dtype=torch.long, device=device), ctx)
        losses[variant] = float(out.loss)
        # head.conv.bias feeds a BatchNorm: its gradient is analytically zero, and what is computed is rounding noise
        grads[variant] = {n: p.grad.flatten().float() for n, p in model.named_parameters() if n != "head.conv.bias"}
    hrnet._upsample = ours_upsample
    parts = {"all": lambda n: True, "stem": lambda n: n.startswith(("conv", "bn")), "head": lambda n: n.startswith("head")}
    result = {"job": "numerics", "model": name, "crop": crop, "batch": batch, "device": str(device), "losses": losses}
    for variant in ("bf16_stock_autocast", "bf16"):
        for part, member in parts.items():
            a = torch.cat([v for n, v in grads["fp32"].items() if member(n)])
            b = torch.cat([v for n, v in grads[variant].items() if member(n)])
            result[f"{variant}_{part}_grad_cosine"] = round(float(F.cosine_similarity(a, b, dim=0)), 5)
            result[f"{variant}_{part}_grad_rel_l2"] = round(float((a - b).norm() / a.norm()), 5)
    return result


def write_1080p_world(root: Path, per_dataset: int) -> None:
    """The synthetic world's scenes, upscaled to 1080 x 1920 JPEGs (what the loader decodes in a real run)."""
    import cv2

    sys.path.insert(0, str(REPO))
    from mseg_semantic.atomic import atomic_write_text
    from mseg_semantic.data.demo_world import render_sample
    from mseg_semantic.taxonomy import Catalog

    catalog = Catalog(data_root=root)

    for name in ("cityscapes-19", "ade20k-150", "mapillary-public65"):
        lines = []
        for i in range(per_dataset):
            image, label = render_sample(name, 0, "train", i)
            image = cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (1920, 1080), interpolation=cv2.INTER_NEAREST)
            rel_image, rel_label = f"hd/images/{i:04d}.jpg", f"hd/labels/{i:04d}.png"
            out = catalog.locate(name, "train").root
            (out / rel_image).parent.mkdir(parents=True, exist_ok=True)
            (out / rel_label).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel_image), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(out / rel_label), label)
            lines.append(f"{rel_image} {rel_label}\n")
        atomic_write_text(catalog.locate(name, "train").list_file, "".join(lines))


def run_job(command: list[str], env: dict, limit: float) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stdout, stderr); a timed-out job is killed with all its children."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr


def parse_results(stdout: str) -> list:
    parsed = []
    for line in stdout.splitlines():
        if line.startswith(("{", "[")):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    start = stdout.find("\n{")
    if not parsed and (stdout.startswith("{") or start >= 0):  # one indented object (bench_train, bench_inference)
        try:
            parsed = [json.loads(stdout if stdout.startswith("{") else stdout[start + 1:])]
        except json.JSONDecodeError:
            pass
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--plan", default="release", choices=list(PLANS), help="which jobs (module docstring)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all jobs together; the rest are skipped "
                        "(default: 480 for release, 330 for efficiency)")
    parser.add_argument("--only", nargs="*", help="job names to run (default: all)")
    parser.add_argument("--numerics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.numerics:
        print(json.dumps(numerics(args.quick)), flush=True)
        return 0
    if args.budget is None:
        args.budget = PLANS[args.plan]
    deadline = time.perf_counter() + args.budget
    results: list[dict] = []
    out = Path(args.out)

    def record(entry: dict) -> None:
        results.append(entry)
        print(json.dumps(entry), flush=True)
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(partial, out)

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        world, demo_root = Path(tmp) / "world_1080p", Path(tmp) / "demo_data"
        plan = _jobs(args.quick, world, demo_root) if args.plan == "release" else _efficiency_jobs(args.quick)
        jobs = [job for job in plan if not args.only or job[0] in args.only]
        if args.only and len(jobs) < len(args.only):
            known = [name for name, _, _ in plan]
            parser.error(f"--only: unknown job(s) {sorted(set(args.only) - set(known))}; known: {known}")
        for name, command, limit in jobs:
            remaining = deadline - time.perf_counter()
            if remaining < 15:
                record({"job": name, "skipped": f"budget of {args.budget:.0f} s spent"})
                continue
            if name == "loader_fed":
                started = time.perf_counter()
                write_1080p_world(world, 4 if args.quick else 40)
                record({"job": "write_1080p_world", "seconds": round(time.perf_counter() - started, 1)})
                remaining = deadline - time.perf_counter()
            started = time.perf_counter()
            returncode, stdout, stderr = run_job(command, env, min(limit, remaining))
            entry: dict = {"job": name, "returncode": returncode, "results": parse_results(stdout)}
            if returncode is None:
                entry["error"] = f"timed out after {min(limit, remaining):.0f} s"
            if returncode != 0 or not entry["results"] or name.endswith("cuda_tests"):
                entry["tail"] = (stdout[-1500:] + "\n--- stderr ---\n" + stderr[-2500:]) if returncode != 0 else stdout[-1500:]
            entry["seconds"] = round(time.perf_counter() - started, 1)
            record(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
