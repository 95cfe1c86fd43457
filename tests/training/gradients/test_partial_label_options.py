"""The partial-label loss's options (label_set_weights uniform | records, set_prior_correction) against an independent
float64 dense reference, their reductions, the label-code check, the prior's state and DDP reduction, bf16 logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mseg_semantic.taxonomy import IGNORE_INDEX, LabelSets, TaxonomyConverter
from mseg_semantic.training.gradients.partial_label import PartialLabelLoss

NUM_CLASSES = 7
GROUPS = [(1, 2), (0, 3, 5), (4, 6), (1, 2, 3, 4, 5, 6), (2, 1)]
WEIGHTS = [(1.0, 0.3), (1.0, 0.5, 0.2), (0.7, 1.0), (1.0, 0.1, 0.2, 0.3, 0.4, 0.5), (1.0, 0.25)]
SETS = LabelSets.for_sets(NUM_CLASSES, GROUPS, WEIGHTS)
OPTIONS = [("uniform", False), ("records", False), ("uniform", True), ("records", True)]


def random_codes(shape, sets: LabelSets, seed: int, ignore_fraction: float = 0.15) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    usable = torch.tensor([c for c, m in enumerate(sets.members) if m])
    codes = usable[torch.randint(0, len(usable), shape, generator=generator)]
    codes[torch.rand(shape, generator=generator) < ignore_fraction] = IGNORE_INDEX
    return codes


def random_prior(seed: int) -> torch.Tensor:
    prior = torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 3 + 1e-3
    return prior / prior.sum()


def reference(logits: torch.Tensor, codes: torch.Tensor, sets: LabelSets, weighted: bool, prior: torch.Tensor | None):
    """The loss written densely in float64 from its definition: -log sum_c w_c p_c, or with a prior the
    cross-entropy to q = normalise(w p / prior) (q held constant)."""
    dense = torch.zeros(len(sets.members) + 256, logits.shape[1], dtype=torch.float64)
    for code, members in enumerate(sets.members):
        for slot, member in enumerate(members):
            dense[code, member] = sets.weights[code][slot] if weighted else 1.0
    ignore = codes == IGNORE_INDEX
    w = dense[torch.where(ignore, 0, codes)].permute(0, 3, 1, 2)  # class 0 at ignore pixels, masked below
    log_p = torch.log_softmax(logits.double(), 1)
    if prior is None:
        loss = -torch.log((w * log_p.exp()).sum(1))
    else:
        q = (w * log_p.exp() / prior.view(1, -1, 1, 1)).detach()
        q = q / q.sum(1, keepdim=True)
        loss = -(q * log_p).sum(1)
    return torch.where(ignore, torch.zeros_like(loss), loss)


def loss_for(option, sets=SETS, prior=None, **kwargs) -> PartialLabelLoss:
    weights, correction = option
    loss = PartialLabelLoss(sets, label_set_weights=weights, set_prior_correction=correction, **kwargs)
    if prior is not None:
        loss.load_state_dict({"class_marginal": prior})
    return loss


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o[0]}{'+prior' if o[1] else ''}")
def test_value_and_gradient_match_the_float64_reference(option):
    logits = (torch.randn(2, NUM_CLASSES, 5, 6, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_(True)
    codes = random_codes((2, 5, 6), SETS, seed=2)
    prior = random_prior(3) if option[1] else None
    loss, valid = loss_for(option, prior=prior)(logits, codes)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    exact_logits = logits.detach().double().requires_grad_(True)
    expected = reference(exact_logits, codes, SETS, option[0] == "records", prior)
    (expected_grad,) = torch.autograd.grad(expected.sum(), exact_logits)
    assert loss.dtype == torch.float32 and valid.tolist() == (codes != IGNORE_INDEX).flatten(1).sum(1).tolist()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)
    # the options do differ on these sets (the reference of another option is not this one)
    other = reference(exact_logits, codes, SETS, option[0] != "records", prior)
    assert not torch.allclose(expected, other)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o[0]}{'+prior' if o[1] else ''}")
def test_sets_of_one_are_cross_entropy(option):
    logits = torch.randn(3, NUM_CLASSES, 4, 5, generator=torch.Generator().manual_seed(4), requires_grad=True)
    labels = random_codes((3, 4, 5), LabelSets.singletons(NUM_CLASSES), seed=5)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    (ce_grad,) = torch.autograd.grad(ce.sum(), logits)
    loss, _ = loss_for(option, prior=random_prior(6) if option[1] else None)(logits, labels)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(loss, ce, rtol=0, atol=0)  # the same log-softmax entry
    torch.testing.assert_close(grad, ce_grad, rtol=1e-6, atol=1e-7)


def test_records_is_uniform_exactly_where_a_dataset_s_sets_are_disjoint():
    """Cityscapes, IDD and BDD: no universal class is in two sets of one dataset, so every record weight is 1 and
    the two options give the same bits; ADE20K's `chest of drawers` shares cabinet with `cabinet`: they differ."""
    datasets = ["cityscapes-19", "idd-39", "bdd", "ade20k-150"]
    conv = TaxonomyConverter(datasets, [], set_valued=True)
    for dataset in datasets[:3]:
        assert all(w == (1.0,) * len(w) for w in conv.class_set_weights[dataset])
    sets = conv.label_sets
    codes = torch.tensor([[[conv.label_sets.code_of(conv.class_sets[d][i], conv.class_set_weights[d][i])
                            for d in datasets[:3] for i in range(19)]]])
    logits = torch.randn(1, 194, 1, codes.shape[-1], generator=torch.Generator().manual_seed(7), requires_grad=True)
    values = {}
    for weights in ("uniform", "records"):
        loss, _ = PartialLabelLoss(sets, label_set_weights=weights)(logits, codes)
        values[weights] = (loss, torch.autograd.grad(loss.sum(), logits)[0])
    assert torch.equal(values["uniform"][0], values["records"][0]) and torch.equal(values["uniform"][1], values["records"][1])
    chest = get_index("ade20k-150", "chest of drawers", conv)
    code = torch.tensor([[[conv.label_sets.code_of(conv.class_sets["ade20k-150"][chest], conv.class_set_weights["ade20k-150"][chest])]]])
    cabinet_weight = conv.class_set_weights["ade20k-150"][chest][1]
    assert 0 < cabinet_weight < 0.5  # P(cabinet | chest of drawers) = 223 / 593, shared with two ADE classes
    single = logits[..., :1].detach()
    assert not torch.equal(PartialLabelLoss(sets)(single, code)[0], PartialLabelLoss(sets, "records")(single, code)[0])


def get_index(dataset, cls, conv):
    return conv.dataset_class_names[dataset].index(cls)


def test_a_code_that_names_no_set_raises_naming_it():
    loss = PartialLabelLoss(SETS)
    logits = torch.zeros(1, NUM_CLASSES, 1, 3)
    for bad in (100, 300, -2):  # inside the table but empty; past the table; negative
        with pytest.raises(ValueError, match=rf"label code\(s\) {bad} name no label set"):
            loss(logits, torch.tensor([[[1, bad, IGNORE_INDEX]]]))
    # without the eager check (the default on a device: no host sync) the pixel costs +inf and the loss names it later
    deferred = PartialLabelLoss(SETS, eager_code_check=False)
    value, valid = deferred(logits, torch.tensor([[[1, 100, IGNORE_INDEX]]]))
    assert value[0, 0, 1] == float("inf") and torch.isfinite(value[0, 0, ::2]).all() and valid.tolist() == [2]
    buffer = deferred._invalid_code
    deferred(logits, torch.tensor([[[40, 1, 2]]]))
    assert deferred._invalid_code is buffer  # updated in place: a captured CUDA graph replays into the same tensor
    with pytest.raises(ValueError, match=r"label code\(s\) 100 name no label set"):
        deferred.raise_for_invalid_codes()
    deferred.raise_for_invalid_codes()  # reported once
    deferred(logits, torch.tensor([[[1, 2, IGNORE_INDEX]]]))
    deferred.raise_for_invalid_codes()


def test_prior_update_rule_and_exact_resume():
    generator = torch.Generator().manual_seed(8)
    batches = [(torch.randn(2, NUM_CLASSES, 4, 4, generator=generator), random_codes((2, 4, 4), SETS, seed=s)) for s in range(5)]
    logits, codes = batches[0]
    uniform = torch.full((NUM_CLASSES,), 1 / NUM_CLASSES, dtype=torch.float64)
    for stride in (1, 2):  # the mean is over the labelled pixels of every stride-th row and column
        grid = (codes != IGNORE_INDEX)[:, ::stride, ::stride].unsqueeze(1)
        mean = (torch.softmax(logits.double(), 1)[:, :, ::stride, ::stride] * grid).sum((0, 2, 3)) / grid.sum()
        loss = PartialLabelLoss(SETS, "records", set_prior_correction=True, prior_momentum=0.9, marginal_stride=stride)
        loss(logits, codes)
        torch.testing.assert_close(loss.state_dict()["class_marginal"], 0.9 * uniform + 0.1 * mean, rtol=1e-6, atol=1e-9)
    first = PartialLabelLoss(SETS, "records", set_prior_correction=True, prior_momentum=0.9)
    first(*batches[0])
    for batch in batches[1:3]:
        first(*batch)
    state = first.state_dict()
    resumed = PartialLabelLoss(SETS, "records", set_prior_correction=True, prior_momentum=0.9)
    resumed.load_state_dict(state)
    for batch in batches[3:]:
        assert torch.equal(first(*batch)[0], resumed(*batch)[0])
    assert torch.equal(first.state_dict()["class_marginal"], resumed.state_dict()["class_marginal"])
    assert not torch.equal(state["class_marginal"], first.state_dict()["class_marginal"])  # it did move
    with pytest.raises(ValueError, match="class_marginal"):
        resumed.load_state_dict({"class_marginal": torch.ones(3)})


def test_reduce_fn_sums_over_ranks_before_the_update():
    """A rank whose reduce_fn adds another rank's sums updates as one process seeing both batches."""
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(4, NUM_CLASSES, 3, 3, generator=generator)
    codes = random_codes((4, 3, 3), SETS, seed=10, ignore_fraction=0.4)
    other = codes[2:] != IGNORE_INDEX
    other_sums = torch.cat([(torch.softmax(logits[2:], 1) * other.unsqueeze(1)).sum((0, 2, 3)).double(),
                            other.sum().double().reshape(1)])
    rank0 = PartialLabelLoss(SETS, set_prior_correction=True, marginal_stride=1, reduce_fn=lambda stats: stats + other_sums)
    whole = PartialLabelLoss(SETS, set_prior_correction=True, marginal_stride=1)
    rank0(logits[:2], codes[:2])
    whole(logits, codes)
    torch.testing.assert_close(rank0.state_dict()["class_marginal"], whole.state_dict()["class_marginal"], rtol=1e-6, atol=1e-9)
    # no labelled pixel anywhere: no update
    empty = PartialLabelLoss(SETS, set_prior_correction=True)
    empty(logits[:1], torch.full_like(codes[:1], IGNORE_INDEX))
    assert torch.equal(empty.state_dict()["class_marginal"], torch.full((NUM_CLASSES,), 1 / NUM_CLASSES, dtype=torch.float64))


def test_the_prior_lifts_a_minority_member_of_a_set():
    """A set {0, 1} where the model says 0 (p 0.9 vs 0.05) and 0 is common (pi 0.5 vs 0.01): with the correction the
    target favours 1, so the step raises z_1; without it, z_1 barely moves."""
    logits = torch.log(torch.tensor([0.9, 0.05] + [0.01] * 5)).view(1, 7, 1, 1).requires_grad_(True)
    sets = LabelSets.for_sets(NUM_CLASSES, [(0, 1)], [(1.0, 1.0)])
    codes = torch.tensor([[[sets.code_of((0, 1))]]])
    plain = torch.autograd.grad(PartialLabelLoss(sets)(logits, codes)[0].sum(), logits)[0].flatten()
    corrected = loss_for(("uniform", True), sets, prior=torch.tensor([0.5, 0.01] + [0.49 / 5] * 5, dtype=torch.float64))
    lifted = torch.autograd.grad(corrected(logits, codes)[0].sum(), logits)[0].flatten()
    assert -0.01 < plain[1] < 0 and lifted[1] < -0.5 and lifted[0] > 0.5


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o[0]}{'+prior' if o[1] else ''}")
def test_bf16_logits(option):
    logits = (torch.randn(2, NUM_CLASSES, 6, 6, generator=torch.Generator().manual_seed(11)) * 2).bfloat16().requires_grad_(True)
    codes = random_codes((2, 6, 6), SETS, seed=12)
    prior = random_prior(13) if option[1] else None
    loss, _ = loss_for(option, prior=prior)(logits, codes)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    exact_logits = logits.detach().double().requires_grad_(True)  # the same (bf16-rounded) values
    expected = reference(exact_logits, codes, SETS, option[0] == "records", prior)
    (expected_grad,) = torch.autograd.grad(expected.sum(), exact_logits)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-2, atol=1e-2)  # bf16 gradient resolution


def test_option_errors():
    with pytest.raises(ValueError, match="label_set_weights='weighted': expected one of uniform, records"):
        PartialLabelLoss(SETS, "weighted")
    with pytest.raises(ValueError, match="carry no member weights"):
        PartialLabelLoss(LabelSets.for_sets(NUM_CLASSES, [(1, 2)]), "records")
    with pytest.raises(ValueError, match="has no member weights"):
        PartialLabelLoss(LabelSets.for_sets(NUM_CLASSES, [(1, 2)], [None]), "records")
    PartialLabelLoss(LabelSets.for_sets(NUM_CLASSES, [(1, 2)], [None]), "uniform")  # uniform needs no weights
    with pytest.raises(ValueError, match="prior_momentum=1.0"):
        PartialLabelLoss(SETS, set_prior_correction=True, prior_momentum=1.0)
    with pytest.raises(ValueError, match="marginal_stride=0"):
        PartialLabelLoss(SETS, set_prior_correction=True, marginal_stride=0)
