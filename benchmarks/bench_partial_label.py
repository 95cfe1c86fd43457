"""Cost of the partial-label loss against cross-entropy: time and peak memory, per loss alone and per training step.
Prints one JSON line per (part, loss), then a summary line with the ratios.

The labels are MSeg's own label-set codes: the label sets of the 7 unrelabeled training datasets (27 sets of up to
11 universal classes, 194 classes), a share ``--set-fraction`` of the pixels carrying a set code (the others class
ids, 5% ignore). The loss's cost does not depend on that share (every pixel goes through every member slot, which
keeps the step free of host syncs); it grows with the largest set.

  part=loss   forward + backward of the loss alone on N x 194 x H x W logits (what the loss adds to a step)
  part=step   a whole training step: model forward (autocast), loss, backward (the plain step, as mseg-train runs it)
  time_ms     median over --iters after --warmup
  peak_mem_mb CUDA: torch.cuda.max_memory_allocated; CPU: growth of the process's peak RSS over its size before the
              first tensor (each (part, loss) runs in a fresh subprocess, so that the peak is its own)

  python benchmarks/bench_partial_label.py --model hrnet_w18_small --crop 256 --batch 4 --threads 1
  python benchmarks/bench_partial_label.py --parts loss --losses partial_label partial_label+records partial_label+prior
  python benchmarks/bench_partial_label.py --model hrnet_w48 --crop 713 --batch 2 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from timing import peak_rss_mb, rss_mb, step_times_ms

# partial_label: the `uniform` loss; +records / +prior: the label_set_weights="records" / set_prior_correction options
LOSSES = ("ce", "partial_label", "partial_label+records", "partial_label+prior")
PARTS = ("loss", "step")


def mseg_codes(batch: int, height: int, width: int, set_fraction: float, seed: int = 0):
    """Label-set codes of MSeg's unrelabeled datasets: blobs of set codes in a map of class ids, 5% ignore."""
    import torch

    from mseg_semantic.taxonomy import IGNORE_INDEX, UNRELABELED_TRAIN_DATASETS, TaxonomyConverter

    sets = TaxonomyConverter(UNRELABELED_TRAIN_DATASETS, [], set_valued=True).label_sets
    generator = torch.Generator().manual_seed(seed)
    # blocks of 16 x 16 pixels share a code, as segments do
    blocks = (batch, -(-height // 16), -(-width // 16))
    classes = torch.randint(0, sets.num_classes, blocks, generator=generator)
    set_codes = torch.tensor(sets.set_codes)[torch.randint(0, len(sets.set_codes), blocks, generator=generator)]
    codes = torch.where(torch.rand(blocks, generator=generator) < set_fraction, set_codes, classes)
    codes[torch.rand(blocks, generator=generator) < 0.05] = IGNORE_INDEX
    codes = codes.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :height, :width].contiguous()
    return sets, codes


def run_one(part: str, loss_name: str, args: argparse.Namespace) -> dict:
    import torch

    from mseg_semantic.model import autocast_context, build_model
    from mseg_semantic.taxonomy import IGNORE_INDEX
    from mseg_semantic.training.gradients import StepContext, backward_step_for, pixel_loss_for

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rss_before = rss_mb()
    sets, codes = mseg_codes(args.batch, args.crop, args.crop, args.set_fraction)
    if loss_name == "ce":  # one-hot training sees one class where partial-label training sees the set
        one_class = torch.tensor([m[0] if m else IGNORE_INDEX for m in sets.members] + [IGNORE_INDEX] * (256 - len(sets.members)))
        codes = one_class[codes]
    labels = codes.to(device)
    if "+" in loss_name:
        from mseg_semantic.training.gradients.partial_label import PartialLabelLoss

        loss_fn = PartialLabelLoss(sets, label_set_weights="records" if loss_name.endswith("records") else "uniform",
                                   set_prior_correction=loss_name.endswith("prior"))
    else:
        loss_fn = pixel_loss_for(loss_name, sets)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if part == "loss":
        logits = torch.randn(args.batch, sets.num_classes, args.crop, args.crop, device=device,
                             dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32, requires_grad=True)

        def step():
            pixel_loss, valid = loss_fn(logits, labels)
            (pixel_loss.sum() / valid.sum().clamp(min=1)).backward()
            logits.grad = None
    else:
        model = build_model(args.model, num_classes=sets.num_classes).to(device).train()
        images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
        dataset_index = torch.zeros(args.batch, dtype=torch.long, device=device)
        backward_step = backward_step_for("ce", None, loss_fn)
        ctx = StepContext(num_datasets=1, autocast=lambda: autocast_context(args.precision, device.type))

        def step():
            model.zero_grad(set_to_none=True)
            backward_step(model, images, labels, dataset_index, ctx)

    times = step_times_ms(step, device, args.warmup, args.iters)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb() - rss_before)
    return dict(part=part, loss=loss_name, model=args.model if part == "step" else None, device=args.device,
                threads=torch.get_num_threads(), precision=args.precision, batch=args.batch, crop=args.crop,
                classes=sets.num_classes, label_sets=len(sets.set_codes), max_set_size=sets.max_set_size,
                set_fraction=args.set_fraction, time_ms=round(statistics.median(times), 2),
                time_ms_all=[round(t, 1) for t in times], peak_mem_mb=round(peak, 1), torch=torch.__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hrnet_w18_small")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set-fraction", type=float, default=0.1, help="share of pixels labelled with a label-set code")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES[:2]), help="ce is always run (the ratios' base)")
    parser.add_argument("--one", nargs=2, metavar=("PART", "LOSS"), help=argparse.SUPPRESS)  # the subprocess's own run
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args)))
        return 0
    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    losses = ["ce"] + [name for name in args.losses if name != "ce"]
    for part in args.parts:
        for loss_name in losses:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--one", part, loss_name],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    summary = {"summary": True}
    for part in args.parts:
        ce = next(r for r in rows if r["part"] == part and r["loss"] == "ce")
        for name in losses[1:]:
            partial = next(r for r in rows if r["part"] == part and r["loss"] == name)
            key = part if name == "partial_label" else f"{part}_{name.split('+')[1]}"
            summary[f"{key}_time_ratio"] = round(partial["time_ms"] / ce["time_ms"], 3)
            summary[f"{key}_peak_mem_ratio"] = round(partial["peak_mem_mb"] / ce["peak_mem_mb"], 3) if ce["peak_mem_mb"] > 0 else None
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
