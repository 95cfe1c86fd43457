"""CPU training step of a DINOv2 ViT-S/14 segmenter in each backbone mode, beside HRNet-W18-small. Prints JSON lines.

A step: forward at the crop size (logits upsampled to it), cross-entropy, backward, the update of each demo's
optimizer as the trainer builds it (parameter groups and optimizer from mseg_semantic/training/optim.py): SGD with
momentum for HRNet (config/train/demo.yaml), AdamW for the ViT (config/train/dinov2/demo.yaml; ``--vit-optimizer
sgd`` for MSeg's). Random weights (speed does not depend on them). The crop defaults to 98 x 98, the multiple of
14 nearest the CPU demo's 96 x 96 crops. The configurations take turns round by round (``--rounds``), so that a slow
spell of a shared machine lands on all of them; each line reports the median over all of its timed steps.

One line per configuration: model, mode, ms_per_step (median), crops_per_s, trainable_params, and ``vs_hrnet`` =
its ms_per_step / hrnet_w18_small's (above 1: slower). A last line holds the setting (threads, torch, machine).

  python benchmarks/bench_vit_step.py --threads 1
  python benchmarks/bench_vit_step.py --threads 1 --crop 98 --hrnet-crop 96 --batch 6   # the two CPU demos' steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

from timing import step_times_ms

CONFIGS = (("hrnet_w18_small", None), ("dinov2_vits14", "finetune"), ("dinov2_vits14", "frozen"), ("dinov2_vits14", "adapters"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=98, help="the ViT's crop (a multiple of 14)")
    parser.add_argument("--hrnet-crop", type=int, default=None, help="HRNet's crop (default: --crop; the HRNet demo's is 96)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=194)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vit-optimizer", default="adamw", choices=["sgd", "adamw"])
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from mseg_semantic.model import build_model, set_backbone_mode
    from mseg_semantic.training.optim import build_optimizer, parameter_groups

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    crops = {"hrnet_w18_small": args.hrnet_crop or args.crop}
    inputs = {crop: (torch.randn(args.batch, 3, crop, crop), torch.randint(0, args.num_classes, (args.batch, crop, crop)))
              for crop in {args.crop, crops["hrnet_w18_small"]}}

    steps, trainable = {}, {}
    for name, mode in CONFIGS:
        model = build_model(name, args.num_classes).train()
        params = set_backbone_mode(model, mode) if mode else list(model.parameters())
        trainable[(name, mode)] = sum(p.numel() for p in params)
        kind = args.vit_optimizer if mode else "sgd"
        lr, decay = (0.01, 1e-4) if kind == "sgd" else (3e-4, 0.05)
        optimizer = build_optimizer(kind, parameter_groups(model, lr, decay), momentum=0.9)

        def step(model=model, optimizer=optimizer, batch=inputs[crops.get(name, args.crop)]):
            x, labels = batch
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels, ignore_index=255).backward()
            optimizer.step()

        steps[(name, mode)] = step

    times: dict = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key] += step_times_ms(step, device, args.warmup, args.iters)

    baseline = statistics.median(times[CONFIGS[0]])
    for (name, mode), values in times.items():
        ms = statistics.median(values)
        print(json.dumps({
            "model": name, "mode": mode or "full", "optimizer": args.vit_optimizer if mode else "sgd", "crop": crops.get(name, args.crop),
            "batch": args.batch,
            "ms_per_step": round(ms, 1), "crops_per_s": round(args.batch / (ms / 1000), 2),
            "trainable_params": trainable[(name, mode)], "vs_hrnet": round(ms / baseline, 2),
            "steps_timed": len(values),
        }))
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count(), "note": "shared machine: other processes may run beside this one"}))


if __name__ == "__main__":
    main()
