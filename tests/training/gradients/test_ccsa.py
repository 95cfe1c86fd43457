import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gradient_helpers import TinySegNet, ccsa_options, make_batch
from mseg_semantic.training.gradients.ccsa import ccsa_backward_step, ccsa_loss, downsample_labels, sample_pairs
from mseg_semantic.training.gradients import StepContext

IGNORE = 255


# ---- labels at the embedding resolution ----

@pytest.mark.parametrize("shape,size", [((2, 16, 16), (4, 4)), ((1, 13, 11), (4, 3)), ((3, 9, 20), (9, 5))])
def test_nearest_downsampling_matches_torch_nearest(shape, size):
    labels = torch.randint(0, 256, shape)
    expected = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    assert torch.equal(downsample_labels(labels, size), expected)


def test_mode_downsampling_is_ignore_aware():
    labels = torch.tensor([[
        [1, 1, IGNORE, IGNORE],
        [1, 2, IGNORE, 3],
        [IGNORE, IGNORE, 2, 5],
        [IGNORE, IGNORE, 5, 2],
    ]])
    out = downsample_labels(labels, (2, 2), mode="mode")
    # majority; the only valid label wins over ignore; all-ignore stays ignore; a tie takes the smaller id
    assert out.tolist() == [[[1, 3], [IGNORE, 2]]]
    # nearest keeps whatever the sampled pixel is, ignore included
    assert downsample_labels(labels, (2, 2)).tolist() == [[[1, IGNORE], [IGNORE, 2]]]


def test_mode_downsampling_with_a_non_integer_ratio():
    # 5 -> 2 rows: blocks [0, 2) and [2, 5); 3 -> 1 column: the whole row
    labels = torch.tensor([[[4, 4, 7], [4, 7, 7], [9, 9, 7], [9, 8, 8], [9, 1, 1]]])
    assert downsample_labels(labels, (2, 1), mode="mode").tolist() == [[[4], [9]]]


def test_downsampling_rejects_bad_requests():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="at most the label size"):
        downsample_labels(labels, (8, 8))
    with pytest.raises(ValueError, match="integer"):
        downsample_labels(labels.float(), (2, 2))
    with pytest.raises(ValueError, match="unknown mode 'bilinear'"):
        downsample_labels(labels, (2, 2), mode="bilinear")


# ---- the contrastive loss ----

def test_loss_is_zero_for_ideal_placement():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.5, 0.0], [0.0, 3.0]])
    same = torch.tensor([True, True, False, False])  # positives coincide, negatives beyond the margin
    assert float(ccsa_loss(a, b, same, margin=1.0)) == 0.0


def test_loss_known_value():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8], [3.0, 4.0]])
    same = torch.tensor([True, False, False])
    # positive at distance 5 -> 25; negative at distance 1 with margin 2 -> 1; negative at 5 -> 0
    assert float(ccsa_loss(a, b, same, margin=2.0)) == pytest.approx(26.0 / 3.0)


def test_loss_gradients_flow_and_stay_finite():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, 0.5]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0], [1.2, 2.0], [0.5, 0.5]], requires_grad=True)
    same = torch.tensor([True, False, False])  # the last negative coincides: sqrt at 0
    ccsa_loss(a, b, same, margin=1.0).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # the positive pulls a[0] towards b[0]; the near negative pushes a[1] away from b[1]
    assert a.grad[0, 0] < 0 and a.grad[1, 0] > 0


def test_loss_without_pairs_is_zero_and_differentiable():
    a = torch.zeros(0, 4, requires_grad=True)
    loss = ccsa_loss(a, torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0


# ---- pair sampling ----

def random_labels(num_images, size=12, num_classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_images, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = IGNORE
    return labels


def check_pairs(pairs, labels, domains):
    flat = labels.reshape(-1)
    pixel_domain = domains.repeat_interleave(labels[0].numel())
    assert (flat[pairs.first] != IGNORE).all() and (flat[pairs.second] != IGNORE).all()
    assert (pixel_domain[pairs.first] != pixel_domain[pairs.second]).all()
    same = flat[pairs.first] == flat[pairs.second]
    assert torch.equal(same, pairs.same_class)


def test_pairs_have_the_requested_counts_domains_and_classes():
    labels, domains = random_labels(6), torch.tensor([0, 1, 2, 0, 1, 2])
    pairs = sample_pairs(labels, domains, num_pairs=200, positive_ratio=0.25, generator=torch.Generator().manual_seed(0))
    assert (pairs.num_positive, pairs.num_negative) == (50, 150)
    assert pairs.same_class[:50].all() and not pairs.same_class[50:].any()
    check_pairs(pairs, labels, domains)


@pytest.mark.parametrize("ratio,expected", [(0.0, (0, 40)), (1.0, (40, 0)), (0.5, (20, 20))])
def test_positive_ratio_extremes(ratio, expected):
    labels, domains = random_labels(4, seed=1), torch.tensor([3, 5, 3, 5])
    pairs = sample_pairs(labels, domains, num_pairs=40, positive_ratio=ratio)
    assert (pairs.num_positive, pairs.num_negative) == expected
    check_pairs(pairs, labels, domains)


def test_one_domain_gives_no_pairs():
    pairs = sample_pairs(random_labels(3), torch.tensor([1, 1, 1]), num_pairs=10, positive_ratio=0.5)
    assert pairs.first.numel() == 0 and pairs.same_class.numel() == 0


def test_no_shared_class_gives_negatives_only():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    labels[1] = 2
    labels[1, 0] = 3
    pairs = sample_pairs(labels, torch.tensor([0, 1]), num_pairs=12, positive_ratio=0.5)
    assert (pairs.num_positive, pairs.num_negative) == (0, 6)
    check_pairs(pairs, labels, torch.tensor([0, 1]))


def test_positive_partners_cover_exactly_the_same_class_pixels_of_other_domains():
    labels = torch.full((3, 3, 3), 7)
    labels[0, 0, 0] = 1  # the only class-1 pixel of domain 0
    labels[1, 1, 1] = 1  # domain 1 has two class-1 pixels
    labels[1, 2, 0] = 1
    labels[2, 0, 2] = 1  # domain 2 has one
    labels[0, 2, 2] = IGNORE
    domains = torch.tensor([0, 1, 2])
    pairs = sample_pairs(labels, domains, num_pairs=3000, positive_ratio=1.0, generator=torch.Generator().manual_seed(1))
    check_pairs(pairs, labels, domains)
    class1_from_domain0 = pairs.second[pairs.first == 0]
    assert set(class1_from_domain0.tolist()) == {9 + 4, 9 + 6, 18 + 2}


def test_negative_partners_cover_exactly_the_other_class_pixels_of_other_domains():
    labels = torch.tensor([[[1, 2], [1, IGNORE]], [[1, 3], [3, 2]], [[2, 2], [4, 1]]])
    domains = torch.tensor([0, 1, 2])
    pairs = sample_pairs(labels, domains, num_pairs=4000, positive_ratio=0.0, generator=torch.Generator().manual_seed(3))
    assert pairs.num_negative == 4000
    check_pairs(pairs, labels, domains)
    # anchors of class 1 in domain 0 (flat 0 and 2): partners are every non-1, non-ignore pixel of domains 1, 2
    from_class1 = pairs.second[(pairs.first == 0) | (pairs.first == 2)]
    assert set(from_class1.tolist()) == {5, 6, 7, 8, 9, 10}


def test_anchors_are_uniform_over_domains_not_pixels():
    labels = random_labels(8, seed=2)
    domains = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])  # domain 0 has six times the pixels
    pairs = sample_pairs(labels, domains, num_pairs=3000, positive_ratio=0.0, generator=torch.Generator().manual_seed(2))
    anchor_domain = domains.repeat_interleave(labels[0].numel())[pairs.first]
    shares = torch.bincount(anchor_domain, minlength=3).float() / anchor_domain.numel()
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.04)


def test_sampling_is_reproducible_with_a_generator():
    labels, domains = random_labels(4, seed=3), torch.tensor([0, 1, 0, 1])
    draw = lambda seed: sample_pairs(labels, domains, 50, 0.3, generator=torch.Generator().manual_seed(seed))
    first, again, other = draw(5), draw(5), draw(6)
    assert torch.equal(first.first, again.first) and torch.equal(first.second, again.second)
    assert not torch.equal(first.first, other.first)


def test_sampling_rejects_bad_arguments():
    labels = random_labels(2)
    with pytest.raises(ValueError, match="one entry per image"):
        sample_pairs(labels, torch.tensor([0, 1, 2]), 10, 0.5)
    with pytest.raises(ValueError, match="positive_ratio"):
        sample_pairs(labels, torch.tensor([0, 1]), 10, 1.5)


# ---- the backward step ----

def ccsa_options_64(**options):
    return ccsa_options(num_pairs=64, **options)


def test_step_puts_finite_gradients_in_every_parameter():
    torch.manual_seed(0)
    model = TinySegNet()
    images, labels, dataset_index = make_batch(4, [0, 1, 2, 0], size=32)
    out = ccsa_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3), ccsa_options_64())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert out.scalars["ccsa/pairs_positive"] == 16 and out.scalars["ccsa/pairs_negative"] == 48
    assert out.scalars["ccsa/contrastive"] > 0
    expected = 0.75 * out.scalars["ccsa/ce"] + 0.25 * out.scalars["ccsa/contrastive"]
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert out.per_dataset_loss.shape == (3,) and torch.isfinite(out.per_dataset_loss).all()


def test_step_with_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(1)
    model = TinySegNet()
    reference = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 1, 0, 1], size=32, seed=1)
    ccsa_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3), ccsa_options_64(alpha=0.0))
    F.cross_entropy(reference(images), labels, ignore_index=IGNORE).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("normalize", [True, False])
def test_step_equals_the_manual_mixture(normalize):
    torch.manual_seed(2)
    model = TinySegNet()
    reference = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(4, [0, 1, 2, 1], size=32, seed=2)
    options = dict(alpha=0.4, margin=0.5, label_downsample="mode", normalize_embeddings=normalize)
    torch.manual_seed(10)
    out = ccsa_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3), ccsa_options_64(**options))

    torch.manual_seed(10)  # the same pairs: sampling is the only consumer of the global RNG
    logits, emb = reference(images, return_features=True)
    pairs = sample_pairs(downsample_labels(labels, emb.shape[-2:], mode="mode"), dataset_index, 64, 0.25)
    vectors = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
    a, b = vectors[pairs.first], vectors[pairs.second]
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    loss = 0.6 * F.cross_entropy(logits, labels, ignore_index=IGNORE) + 0.4 * ccsa_loss(a, b, pairs.same_class, 0.5)
    loss.backward()
    assert float(out.loss) == pytest.approx(float(loss.detach()), rel=1e-5)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_step_scales_through_the_grad_scaler():
    torch.manual_seed(3)
    model = TinySegNet()
    plain = copy.deepcopy(model)
    images, labels, dataset_index = make_batch(2, [0, 1], size=32, seed=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    torch.manual_seed(4)
    ccsa_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=2, scaler=scaler), ccsa_options(num_pairs=32))
    torch.manual_seed(4)
    ccsa_backward_step(plain, images, labels, dataset_index, StepContext(num_datasets=2), ccsa_options(num_pairs=32))
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, 256.0 * q.grad, rtol=1e-4, atol=1e-5)


def test_bad_options_are_refused_where_they_are_built():
    with pytest.raises(ValueError, match=r"CCSA\.alpha=1\.5: must be <= 1"):
        ccsa_options(alpha=1.5)  # the config says so first
    with pytest.raises(ValueError, match="unknown key 'CCSA.pairs'"):
        ccsa_options(pairs=10)
    with pytest.raises(ValueError, match="alpha must lie in"):
        dataclasses.replace(ccsa_options(), alpha=1.5)  # and the options themselves, for Python callers
