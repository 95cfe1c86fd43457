"""End-to-end: both baselines train a few iterations through ``mseg-train`` on the synthetic demo world."""

from pathlib import Path

import pytest
import torch

from mseg_semantic.data.demo_world import generate
from mseg_semantic.tool.train import main as train_main

REPO = Path(__file__).resolve().parents[3]
DATASETS = ["cityscapes-19", "ade20k-150", "mapillary-public65"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines_demo_world")
    generate(root, seed=0, counts={"train": 3, "val": 1}, heldout_counts={"val": 1, "test": 1})
    return root


def tiny_run(config, demo_root, output_dir, *extra):
    # The demo config, shrunk: the tiny test-only HRNet, 64 x 64 crops, one crop per dataset, 2 iterations.
    overrides = [
        f"data_root={demo_root}", "generate_demo_world=False", f"output_dir={output_dir}",
        "model=hrnet_tiny", "train_h=64", "train_w=64", "short_size=80", "batch_size=3",
        "max_iters=2", "workers=0", "checkpoint_every=2", "print_freq=1", *extra,
    ]
    assert train_main(["--config", str(REPO / "config" / "train" / config), *overrides]) == 0
    return output_dir


def tensorboard_scalars(output_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_mgda_trains_from_the_demo_config(demo_root, tmp_path):
    output_dir = tiny_run("demo_mgda.yaml", demo_root, tmp_path / "mgda")
    final = torch.load(output_dir / "model_final.pth", map_location="cpu")
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    scalars = tensorboard_scalars(output_dir)
    weights = [scalars[f"mgda/weight/{name}"] for name in DATASETS]  # tagged by dataset name
    assert all(len(w) == 2 for w in weights)  # logged every iteration
    for iteration in range(2):
        per_task = [w[iteration] for w in weights]
        assert min(per_task) >= 0 and sum(per_task) == pytest.approx(1.0, abs=1e-5)
    assert scalars["mgda/num_tasks"] == [3.0, 3.0]


def test_ccsa_trains_from_the_demo_config(demo_root, tmp_path):
    output_dir = tiny_run("demo_ccsa.yaml", demo_root, tmp_path / "ccsa", "CCSA.num_pairs=200")
    final = torch.load(output_dir / "model_final.pth", map_location="cpu")
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    scalars = tensorboard_scalars(output_dir)
    assert scalars["ccsa/pairs_negative"] == [150.0, 150.0]
    assert all(value > 0 for value in scalars["ccsa/contrastive"])
    total = [0.75 * ce + 0.25 * c for ce, c in zip(scalars["ccsa/ce"], scalars["ccsa/contrastive"])]
    assert scalars["loss/total"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(
    "config,method,mapping",
    [
        ("demo_mgda.yaml", "mgda", None),
        ("demo_ccsa.yaml", "ccsa", None),
        ("baselines/mseg-ccsa-1080-1m.yaml", "ccsa", None),
        ("1080_release/mseg-mgda.yaml", "mgda", "one dataset per GPU"),
    ],
)
def test_baseline_configs_select_their_method(config, method, mapping):
    from mseg_semantic.config import load_config
    from mseg_semantic.training.gradients import backward_step_for
    from mseg_semantic.training.run import resolve_run

    cfg = load_config(REPO / "config" / "train" / config)
    world_size = 7 if mapping else 1
    setup = resolve_run(cfg, world_size)
    assert setup.method == method
    assert (setup.dataset_gpu_mapping is not None) == bool(mapping)
    options = backward_step_for(method, cfg).keywords["options"]  # typed, bound once
    if method == "ccsa":
        assert options.alpha == 0.25
    else:
        assert options.normalization == "none"


def test_ccsa_with_one_dataset_per_gpu_is_refused():
    """With MSeg's one-dataset-per-GPU mapping no process holds two domains: the contrastive term would be 0."""
    from mseg_semantic.config import ConfigError, load_config
    from mseg_semantic.training.run import resolve_run

    mapping = "{" + ", ".join(f"{name}: [{rank}]" for rank, name in enumerate(DATASETS)) + "}"
    cfg = load_config(REPO / "config" / "train" / "demo_ccsa.yaml", [f"dataset_gpu_mapping={mapping}"])
    with pytest.raises(ConfigError, match="dataset_gpu_mapping=null"):
        resolve_run(cfg, world_size=len(DATASETS))
    assert resolve_run(cfg.updated({"dataset_gpu_mapping": None}), world_size=len(DATASETS)).method == "ccsa"
