"""The partial-label loss: its value and gradient, equality with cross-entropy on singletons, precision and memory
layouts, the steps that take it (plain, MGDA, DDP's global-batch mean) and the run's refusals."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from gradient_helpers import TinySegNet, make_batch, mgda_options
from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.distributed import DistInfo
from mseg_semantic.taxonomy import IGNORE_INDEX, LabelSets
from mseg_semantic.training.gradients import StepContext, backward_step_for, pixel_loss_for
from mseg_semantic.training.gradients.common import cross_entropy_pixels
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.gradients.mgda import mgda_backward_step
from mseg_semantic.training.gradients.partial_label import PartialLabelLoss, partial_label_nll

NUM_CLASSES = 7
SETS = LabelSets.for_sets(NUM_CLASSES, [(1, 2), (0, 3, 5), (4, 6), (1, 2, 3, 4, 5, 6)])


def random_codes(shape, sets: LabelSets, seed: int, ignore_fraction: float = 0.15) -> torch.Tensor:
    """Codes of every kind (classes, sets, 255) spread over a label map."""
    generator = torch.Generator().manual_seed(seed)
    usable = torch.tensor([c for c, m in enumerate(sets.members) if m])
    codes = usable[torch.randint(0, len(usable), shape, generator=generator)]
    codes[torch.rand(shape, generator=generator) < ignore_fraction] = IGNORE_INDEX
    return codes


def dense_reference(logits: torch.Tensor, codes: torch.Tensor, sets: LabelSets) -> torch.Tensor:
    """-log of the summed softmax over each pixel's set, through a dense mask (fine for a test)."""
    mask = torch.zeros(len(sets.members) + 256, logits.shape[1], dtype=torch.bool)
    for code, members in enumerate(sets.members):
        mask[code, list(members)] = True
    probs = torch.softmax(logits.double(), 1)
    in_set = mask[codes].permute(0, 3, 1, 2)
    loss = -torch.log((probs * in_set).sum(1))
    return torch.where(codes == IGNORE_INDEX, torch.zeros_like(loss), loss)


def test_value_is_minus_log_of_the_summed_set_probability():
    logits = torch.randn(2, NUM_CLASSES, 5, 6, generator=torch.Generator().manual_seed(1)) * 3
    codes = random_codes((2, 5, 6), SETS, seed=2)
    assert any(int(c) in SETS.set_codes for c in codes.unique())
    loss, valid = PartialLabelLoss(SETS)(logits, codes)
    assert loss.dtype == torch.float32 and loss.shape == codes.shape
    torch.testing.assert_close(loss.double(), dense_reference(logits, codes, SETS), rtol=1e-5, atol=1e-6)
    assert valid.tolist() == (codes != IGNORE_INDEX).flatten(1).sum(1).tolist()
    assert (loss[codes == IGNORE_INDEX] == 0).all()


def test_equals_cross_entropy_where_every_set_has_one_class():
    logits = torch.randn(3, NUM_CLASSES, 4, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    labels = random_codes((3, 4, 5), LabelSets.singletons(NUM_CLASSES), seed=4)
    ce, ce_valid = cross_entropy_pixels(logits, labels)
    (ce_grad,) = torch.autograd.grad(ce.sum(), logits)
    for sets in (LabelSets.singletons(NUM_CLASSES), SETS):  # class ids mean the same with or without set codes
        partial, valid = PartialLabelLoss(sets)(logits, labels)
        (grad,) = torch.autograd.grad(partial.sum(), logits)
        torch.testing.assert_close(partial, ce, rtol=0, atol=0)  # the same log-softmax entry, bit for bit
        torch.testing.assert_close(grad, ce_grad, rtol=1e-6, atol=1e-7)
        assert torch.equal(valid, ce_valid)
    torch.testing.assert_close(ce, F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none"))


def test_gradient_matches_finite_differences():
    logits = torch.randn(2, NUM_CLASSES, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    codes = random_codes((2, 3, 3), SETS, seed=6)
    ids, valid = (torch.from_numpy(t) for t in SETS.member_table())
    assert torch.autograd.gradcheck(lambda z: partial_label_nll(z, codes, ids, valid), (logits,))


def test_sets_far_in_the_tail_stay_finite():
    logits = torch.zeros(1, NUM_CLASSES, 1, 2)
    logits[0, 0] = 1000.0  # every member of the pixels' sets has probability exp(-1000)
    codes = torch.tensor([[[SETS.code_of((1, 2)), 4]]])
    logits.requires_grad_(True)
    loss, _ = PartialLabelLoss(SETS)(logits, codes)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss, torch.tensor([[[1000.0 - torch.log(torch.tensor(2.0)).item(), 1000.0]]]))


def test_channels_last_and_bf16_logits():
    model = TinySegNet(NUM_CLASSES, batch_norm=False)
    images, _, _ = make_batch(2, [0, 1], NUM_CLASSES, size=16)
    codes = random_codes((2, 16, 16), SETS, seed=7)
    loss_fn = PartialLabelLoss(SETS)
    reference, _ = loss_fn(model(images), codes)
    grads = torch.autograd.grad(reference.sum(), list(model.parameters()))
    channels_last = model.to(memory_format=torch.channels_last)
    logits = channels_last(images.contiguous(memory_format=torch.channels_last))
    assert logits.is_contiguous(memory_format=torch.channels_last)
    loss, _ = loss_fn(logits, codes)
    for got, expected in zip(torch.autograd.grad(loss.sum(), list(channels_last.parameters())), grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(images)
    assert low.dtype == torch.bfloat16
    loss, _ = loss_fn(low, codes)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(low.float(), codes)[0])
    torch.testing.assert_close(loss.mean(), reference.mean(), rtol=0.05, atol=0.02)


def test_steps_average_over_the_global_batch_like_cross_entropy():
    model = TinySegNet(NUM_CLASSES, batch_norm=False)
    images, labels, dataset_index = make_batch(4, [0, 1, 2, 0], NUM_CLASSES, size=16)
    ctx = StepContext(num_datasets=3)
    reference = ce_backward_step(model, images, labels, dataset_index, ctx)
    ce_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    partial = ce_backward_step(model, images, labels, dataset_index, ctx, pixel_loss_fn=PartialLabelLoss(SETS))
    for p, g in zip(model.parameters(), ce_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(partial.loss, reference.loss)
    torch.testing.assert_close(partial.per_dataset_loss, reference.per_dataset_loss)
    # with sets, the loss can only be lower: a set's probability is at least its first member's
    codes = labels.clone()
    codes[labels == 1] = SETS.code_of((1, 2))
    model.zero_grad()
    with_sets = ce_backward_step(model, images, codes, dataset_index, ctx, pixel_loss_fn=PartialLabelLoss(SETS))
    assert with_sets.loss < reference.loss
    # nothing valid: a zero loss, no nan
    model.zero_grad()
    empty = ce_backward_step(model, images, torch.full_like(labels, IGNORE_INDEX), dataset_index, ctx, pixel_loss_fn=PartialLabelLoss(SETS))
    assert empty.loss == 0 and all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_mgda_takes_the_partial_label_loss():
    images, labels, dataset_index = make_batch(4, [0, 1, 0, 1], NUM_CLASSES, size=16)
    options = mgda_options()
    results = []
    for loss_fn in (cross_entropy_pixels, PartialLabelLoss(SETS)):
        torch.manual_seed(0)
        model = TinySegNet(NUM_CLASSES, batch_norm=False)
        out = mgda_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2), options, pixel_loss_fn=loss_fn)
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    (ce_out, ce_grads), (partial_out, partial_grads) = results
    torch.testing.assert_close(partial_out.per_dataset_loss, ce_out.per_dataset_loss)
    for got, expected in zip(partial_grads, ce_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)  # no port to race for
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TinySegNet(NUM_CLASSES, batch_norm=False))
        images, _, dataset_index = make_batch(4, [0, 1, 0, 1], NUM_CLASSES, size=16)
        codes = random_codes((4, 16, 16), SETS, seed=8, ignore_fraction=0.4)
        rows = slice(rank * 2, rank * 2 + 2)
        step = backward_step_for("ce", None, PartialLabelLoss(SETS))
        step(model, images[rows], codes[rows], dataset_index[rows], StepContext(num_datasets=2, info=DistInfo(rank, world_size, backend="gloo")))
        if rank == 0:
            torch.save([p.grad for p in model.module.parameters()], os.path.join(out_dir, "ddp.pt"))
        dist.barrier()  # as shutdown_distributed does: no rank leaves while a peer is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_take_the_step_of_one_rank_with_the_whole_batch(tmp_path):
    """Ranks hold different numbers of valid pixels: the mean is over the global batch's, as for cross-entropy."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = TinySegNet(NUM_CLASSES, batch_norm=False)
    images, _, dataset_index = make_batch(4, [0, 1, 0, 1], NUM_CLASSES, size=16)
    codes = random_codes((4, 16, 16), SETS, seed=8, ignore_fraction=0.4)
    ce_backward_step(model, images, codes, dataset_index, StepContext(num_datasets=2), pixel_loss_fn=PartialLabelLoss(SETS))
    for got, expected in zip(torch.load(tmp_path / "ddp.pt"), [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_pixel_loss_choice_and_refused_combinations():
    assert pixel_loss_for("ce") is cross_entropy_pixels
    assert isinstance(pixel_loss_for("partial_label", SETS), PartialLabelLoss)
    with pytest.raises(ValueError, match="needs the label sets"):
        pixel_loss_for("partial_label")
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        pixel_loss_for("focal")
    with pytest.raises(ValueError, match="cross-entropy only"):
        backward_step_for("ccsa", load_config(None, []), PartialLabelLoss(SETS))
    with pytest.raises(ValueError, match="logits have 5"):
        PartialLabelLoss(SETS)(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("overrides, message", [
    (["dataset=[cityscapes-19,bdd]", "use_naive_taxonomy=True"], "TRAIN.loss=partial_label with TRAIN.use_naive_taxonomy=True"),
    (["dataset=cityscapes-19", "universal=False"], "TRAIN.loss=partial_label with DATA.universal=False"),
    (["dataset=[cityscapes-19,bdd]", "CCSA.use_ccsa=True"], "TRAIN.loss=partial_label with CCSA.use_ccsa=True"),
])
def test_run_refuses_partial_label_where_it_means_nothing(overrides, message):
    from mseg_semantic.training.run import resolve_run

    cfg = load_config(None, ["loss=partial_label", *overrides])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        resolve_run(cfg)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("overrides, message", [
    (["loss=ce", "set_prior_correction=True"], "TRAIN.set_prior_correction=True with TRAIN.loss=ce: it is an option of the label-set loss"),
    (["loss=ce", "label_set_weights=records"], "TRAIN.label_set_weights=records with TRAIN.loss=ce"),
    (["loss=partial_label", "set_prior_correction=True", "cuda_graphs=True"], "TRAIN.cuda_graphs=True with TRAIN.set_prior_correction=True"),
])
def test_label_set_options_where_they_would_do_nothing_or_break_a_resume_are_refused(overrides, message):
    from mseg_semantic.training.run import resolve_run

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        resolve_run(load_config(None, ["dataset=[cityscapes-19,bdd]", *overrides]))
    assert info.value.exit_code == 2
    resolve_run(load_config(None, ["dataset=[cityscapes-19,bdd]", "loss=partial_label", "cuda_graphs=True"]))  # no state: graphed


def test_run_builds_a_set_valued_converter_for_partial_label():
    from mseg_semantic.training.run import resolve_run

    setup = resolve_run(load_config(None, ["dataset=[cityscapes-19,bdd]", "loss=partial_label", "use_mgda=True"]))
    assert setup.loss == "partial_label" and setup.method == "mgda" and setup.converter.set_valued
    # cityscapes' and bdd's rider hold the same set {bicyclist, rider_other, motorcyclist}: one code; bdd person is
    # a class of one (its 6 bicyclist/motorcyclist records are corrections, docs/taxonomy.md)
    assert len(setup.converter.label_sets.set_codes) == 1
    assert not resolve_run(load_config(None, ["dataset=[cityscapes-19,bdd]"])).converter.set_valued


# ---- whole runs ------------------------------------------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from mseg_semantic.data.demo_world import generate

    root = tmp_path_factory.mktemp("partial_demo_world")
    generate(root, seed=0, counts={"train": 3, "val": 1}, heldout_counts={"val": 1})
    return root


def tiny_train(config: str, demo_root, output_dir, *extra, max_iters: int = 2) -> int:
    from mseg_semantic.tool.train import main as train_main

    overrides = [f"data_root={demo_root}", "generate_demo_world=False", f"output_dir={output_dir}", "model=hrnet_tiny",
                 "train_h=48", "train_w=48", "short_size=64", "batch_size=3", f"max_iters={max_iters}", "workers=0",
                 "checkpoint_every=1", "print_freq=1", "precise_bn_iters=0", "tensorboard=False", *extra]
    return train_main(["--config", str(REPO / "config" / "train" / config), *overrides])


def test_partial_label_demo_trains_and_resumes(demo_root, tmp_path):
    output_dir = tmp_path / "partial"
    assert tiny_train("demo_partial.yaml", demo_root, output_dir) == 0
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["loss"] == "partial_label" and final["meta"]["num_classes"] == 194
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    assert "loss partial_label" in (output_dir / "train.log").read_text()
    assert tiny_train("demo_partial.yaml", demo_root, output_dir, f"resume={output_dir / 'checkpoints' / 'last.pth'}", max_iters=3) == 0
    assert "resuming from" in (output_dir / "train.log").read_text()
    assert torch.load(output_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)["iteration"] == 3


def test_the_crosswalk_example_trains_a_class_only_mapillary_labels(demo_root, tmp_path, monkeypatch):
    """docs/training.md's worked example: a user taxonomy file adds `crosswalk`; the run's model has 195 classes."""
    from mseg_semantic.taxonomy import Catalog

    monkeypatch.chdir(REPO)  # the config names the taxonomy file relative to the repository
    output_dir = tmp_path / "crosswalk"
    # validation scores in the model's 195 classes (a 194-class space would fail on the first crosswalk prediction)
    validation = ["val_every=2", "val_datasets=[cityscapes-19-crosswalk]", "val_images=1", "test_h=64", "test_w=64", "base_size=64"]
    assert tiny_train("demo_crosswalk.yaml", demo_root, output_dir, *validation) == 0
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["num_classes"] == 195 and final["meta"]["train_datasets"][2] == "mapillary-public65-crosswalk"
    assert final["meta"]["universal_taxonomy"] == "universal-crosswalk"
    assert "validation at iteration 2" in (output_dir / "train.log").read_text()
    assert tiny_train("demo_crosswalk.yaml", demo_root, tmp_path / "bad", "taxonomy_files=[missing.tsv]") == 2

    # the tools read the model in its own universal taxonomy: scored, projected and refused by name
    from mseg_semantic.errors import UnknownNameError, UserError
    from mseg_semantic.evaluation.model_space import evaluation_space, load_model_for_inference, output_projection

    loaded = load_model_for_inference(output_dir / "model_final.pth", torch.device("cpu"), catalog=Catalog(["config/taxonomy/crosswalk.tsv"]))
    assert loaded.universal_taxonomy == "universal-crosswalk"
    space = evaluation_space(loaded, "cityscapes-19-crosswalk")
    assert space.name == "universal-crosswalk" and space.class_names[194] == "crosswalk" and len(space.colors) == 195
    camvid = output_projection(loaded, "camvid-11-crosswalk")[0]
    assert camvid.num_inputs == 195 and 194 in camvid.members[5]  # Road receives crosswalk
    with pytest.raises(UserError, match="maps to 'universal', not to 'universal-crosswalk'"):
        output_projection(loaded, "camvid-11")
    with pytest.raises(UnknownNameError, match="taxonomy_files"):
        load_model_for_inference(output_dir / "model_final.pth", torch.device("cpu"))


def test_release_config_is_msegs_unrelabeled_recipe_with_the_partial_label_loss():
    from mseg_semantic.training.run import resolve_run

    partial = load_config(REPO / "config/train/1080_release/mseg-unrelabeled-partial.yaml")
    plain = load_config(REPO / "config/train/1080_release/mseg-unrelabeled.yaml")
    differences = {(section, key) for section, keys in partial.to_dict().items() if section != "STAGES"
                   for key, value in keys.items() if plain.to_dict()[section][key] != value}
    assert differences == {("TRAIN", "loss")}
    setup = resolve_run(partial, world_size=7)
    assert setup.loss == "partial_label" and setup.max_iters == 200_000 and len(setup.converter.label_sets.set_codes) == 27


# ---- the loss options through the trainer ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("options", [
    ["label_set_weights=records", "set_prior_correction=True", "precision=bf16"],
    ["set_prior_correction=True", "method=mgda"],
    ["rare_class_sampling=True", "rare_class_min_pixels=1", "method=mgda", "precision=bf16"],
], ids=["records+prior+bf16", "prior+mgda", "rcs+mgda+bf16"])
def test_loss_options_train_and_resume_bit_exactly(demo_root, tmp_path, options):
    """The running class marginal of the prior correction is checkpointed: an interrupted run resumed ends where an
    uninterrupted one does, bit for bit."""
    import shutil

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert tiny_train("demo_partial.yaml", demo_root, straight, *options, max_iters=3) == 0
    shutil.copytree(straight, split)  # the same run, stopped after iteration 2
    for done in ("model_final.pth", "checkpoints/iter_00000003.pth", "checkpoints/last.pth"):
        (split / done).unlink()
    assert tiny_train("demo_partial.yaml", demo_root, split, *options, max_iters=3) == 0
    assert "resuming from" in (split / "train.log").read_text()
    a, b = (torch.load(d / "checkpoints" / "last.pth", map_location="cpu", weights_only=True) for d in (straight, split))
    assert a["iteration"] == b["iteration"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    if "set_prior_correction=True" in options:
        marginal = a["pixel_loss"]
        assert marginal and all(torch.equal(v, b["pixel_loss"][k]) for k, v in marginal.items())
        uniform = PartialLabelLoss(LabelSets.singletons(194), set_prior_correction=True).state_dict()
        assert any(not torch.equal(v, uniform[k]) for k, v in marginal.items())  # the estimate moved from its start: it is state


def test_records_weights_need_record_counts(tmp_path):
    from mseg_semantic.training.run import resolve_run

    path = tmp_path / "riders.tsv"
    path.write_text("taxonomy\tmy-riders\nrole\ttrain\nid\tname\tuniversal\n0\tcyclist\tbicyclist, rider_other\n1\twalker\tperson\n")
    cfg = load_config(None, ["loss=partial_label", "label_set_weights=records", f"taxonomy_files=[{path}]", "dataset=[my-riders]"])
    with pytest.raises(ConfigError, match=r"label_set_weights=records: my-riders's label set\(s\) of 'cyclist' have no relabeling-record"):
        resolve_run(cfg)
    assert resolve_run(cfg.updated({"label_set_weights": "uniform"})).loss == "partial_label"


def _prior_ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from mseg_semantic.distributed import all_reduce_sum

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)  # no port to race for
    try:
        info = DistInfo(rank, world_size, backend="gloo")
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TinySegNet(NUM_CLASSES, batch_norm=False))
        loss = PartialLabelLoss(SETS, set_prior_correction=True, reduce_fn=lambda t: all_reduce_sum(t, info), marginal_stride=1)
        grads = []
        for step in range(2):  # the second step's target reads the marginal the first one estimated
            images, _, dataset_index = make_batch(4, [0, 1, 0, 1], NUM_CLASSES, size=16, seed=step)
            codes = random_codes((4, 16, 16), SETS, seed=8 + step, ignore_fraction=0.4)
            rows = slice(rank * 2, rank * 2 + 2)
            model.zero_grad()
            ce_backward_step(model, images[rows], codes[rows], dataset_index[rows], StepContext(num_datasets=2, info=info), pixel_loss_fn=loss)
            grads.append([p.grad.clone() for p in model.module.parameters()])
        if rank == 0:
            torch.save({"grads": grads, "marginal": loss.state_dict()}, os.path.join(out_dir, "ddp_prior.pt"))
        dist.barrier()  # as shutdown_distributed does: no rank leaves while a peer is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_prior_correction_under_two_ranks_is_the_step_of_one_rank(tmp_path):
    """The marginal's statistics are summed over ranks: two ranks with half the batch estimate the same marginal and
    take the same steps as one rank with all of it."""
    import torch.multiprocessing as mp

    mp.spawn(_prior_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp_prior.pt")
    torch.manual_seed(0)
    model = TinySegNet(NUM_CLASSES, batch_norm=False)
    loss = PartialLabelLoss(SETS, set_prior_correction=True, marginal_stride=1)
    for step in range(2):
        images, _, dataset_index = make_batch(4, [0, 1, 0, 1], NUM_CLASSES, size=16, seed=step)
        codes = random_codes((4, 16, 16), SETS, seed=8 + step, ignore_fraction=0.4)
        model.zero_grad()
        ce_backward_step(model, images, codes, dataset_index, StepContext(num_datasets=2), pixel_loss_fn=loss)
        for got, expected in zip(ddp["grads"][step], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    for key, value in loss.state_dict().items():
        torch.testing.assert_close(ddp["marginal"][key], value, rtol=1e-6, atol=1e-9)  # the same sums, in another order
