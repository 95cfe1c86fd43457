import math

import numpy as np
import pytest
import torch

from mseg_semantic.evaluation.metrics import ConfusionMatrix, class_status, harmonic_mean


def cityscapes_iou(pred, gt, num_classes, ignore=255):
    """The Cityscapes scripts' definition, written per class with masks: IoU = TP / (TP + FP + FN) over
    pixels whose ground truth is not ignored; NaN when TP + FP + FN = 0; the mean skips NaN."""
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    ious = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        ious.append(float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn))
    ious = np.array(ious)
    return ious, float(np.nanmean(ious))


def mseg_histogram_metrics(pred, gt, num_classes, ignore=255):
    """MSeg's intersectionAndUnion: numpy histograms, I / (U + 1e-10), plain mean over every class."""
    pred = pred.reshape(-1).copy()
    gt = gt.reshape(-1)
    pred[gt == ignore] = ignore
    inter = pred[pred == gt]
    bins = np.arange(num_classes + 1)
    a_i = np.histogram(inter, bins=bins)[0]
    a_p = np.histogram(pred, bins=bins)[0]
    a_t = np.histogram(gt, bins=bins)[0]
    iou = a_i / (a_p + a_t - a_i + 1e-10)
    acc = a_i / (a_t + 1e-10)
    return float(iou.mean()), float(a_i.sum() / (a_t.sum() + 1e-10)), float(acc.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_cityscapes_and_mseg_definitions_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    k = 7
    batches = []
    cm = ConfusionMatrix(k)
    for _ in range(3):
        gt = rng.integers(0, k, size=(23, 31)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.2] = 255
        gt[gt == 6] = 5  # class 6 never in the ground truth ...
        pred = rng.integers(0, k - 1, size=gt.shape)  # ... nor predicted: absent
        agree = (rng.random(gt.shape) < 0.5) & (gt != 255)
        pred[agree] = gt[agree]  # about half right, so IoUs are far from 0 and 1
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        batches.append((pred, gt))
    pred = np.concatenate([p.ravel() for p, _ in batches])
    gt = np.concatenate([g.ravel() for _, g in batches])
    m = cm.compute()
    ref_iou, ref_miou = cityscapes_iou(pred, gt, k)
    np.testing.assert_allclose(m.iou, ref_iou, equal_nan=True)
    assert math.isnan(m.iou[6]) and class_status(m)[6] == "absent"
    assert m.miou == pytest.approx(ref_miou)
    mseg_miou, mseg_acc, mseg_macc = mseg_histogram_metrics(pred.astype(np.int64), gt.astype(np.int64), k)
    assert m.miou_mseg == pytest.approx(mseg_miou)
    assert m.pixel_acc == pytest.approx(mseg_acc)
    assert m.mean_acc_mseg == pytest.approx(mseg_macc)
    # class 6 has no ground truth: MSeg's mean counts it 0, the other mean leaves it out, so they differ here
    assert m.miou_mseg < m.miou and m.mean_acc_mseg == pytest.approx(m.mean_acc * 6 / 7)
    # plain numpy confusion matrix
    keep = gt != 255
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (gt[keep].astype(np.int64), pred[keep]), 1)
    np.testing.assert_array_equal(cm.counts.numpy(), conf)
    gt_count = conf.sum(1)
    np.testing.assert_allclose(m.fw_iou, np.nansum(gt_count / gt_count.sum() * ref_iou))
    with np.errstate(invalid="ignore"):
        assert m.mean_acc == pytest.approx(np.nanmean(np.diag(conf) / gt_count))


def test_hand_computed_example():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    cm = ConfusionMatrix(5)
    cm.update(pred, gt)
    m = cm.compute()
    # class 0: TP 1, FP 1 (the '2' pixel predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: 1/2
    # class 3 predicted only on an ignored pixel -> absent; class 4 absent
    np.testing.assert_allclose(m.iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert class_status(m) == ["ok", "ok", "ok", "absent", "absent"]
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.miou_mseg == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 5)
    assert m.pixel_acc == pytest.approx(4 / 6)
    assert m.num_pixels == 6


def test_unlabeled_predictions_are_misses_of_their_ground_truth_class():
    cm = ConfusionMatrix(3)
    # ground truth 0 0 1 1 (and an ignored pixel); predicted 0 255 1 255 255: two labelled pixels predicted 'unlabeled'
    cm.update(torch.tensor([0, 255, 1, 255, 255]), torch.tensor([0, 0, 1, 1, 255]))
    m = cm.compute()
    assert m.pixel_acc == pytest.approx(2 / 4)  # the 'unlabeled' pixels count as wrong, the ignored one not at all
    np.testing.assert_allclose(m.iou[:2], [1 / 2, 1 / 2])  # TP 1 over GT 2, nothing else predicted as 0 or 1
    assert m.unlabeled_pixels.tolist() == [1, 1, 0] and m.to_dict()["unlabeled_predictions"] == 2
    assert m.pred_pixels.tolist() == [1, 1, 0] and m.gt_pixels.tolist() == [2, 2, 0]
    np.testing.assert_array_equal(cm.counts.numpy(), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_predicted_class_without_ground_truth_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m.iou[2] == 0.0 and math.isnan(m.acc[2])
    assert m.miou == pytest.approx((0.5 + 0.0) / 2)


def test_valid_classes_exclude_from_means_and_report_excluded():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 3, 3]), torch.tensor([0, 1, 1, 2]))
    full = cm.compute()
    sub = cm.compute(valid_classes=[0, 1, 2])
    assert class_status(sub)[3] == "excluded"
    assert sub.miou == pytest.approx((1 + 0.5 + 0) / 3)
    assert full.miou == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    d = sub.to_dict(["a", "b", "c", "d"])
    assert d["per_class"][3]["status"] == "excluded" and d["num_valid_classes"] == 3
    with pytest.raises(ValueError, match="outside"):
        cm.compute(valid_classes=[0, 9])


def test_out_of_range_ids_are_errors_not_dropped():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"ground-truth ids \[7\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([7, 1]))
    with pytest.raises(ValueError, match=r"predicted ids \[5\]"):
        cm.update(np.array([5, 1]), np.array([0, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError):
        cm.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_to_dict_is_json_ready_with_null_for_absent():
    import json

    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    d = cm.compute().to_dict(["x", "y"])
    text = json.dumps(d, allow_nan=False)
    assert '"iou": null' in text and d["per_class"][1]["status"] == "absent"


def test_harmonic_mean():
    assert harmonic_mean([50.0, 50.0]) == pytest.approx(50.0)
    assert harmonic_mean([70.7, 42.7, 83.3, 62.0, 67.0, 48.2]) == pytest.approx(59.2, abs=0.05)  # MSeg-1M row
    assert harmonic_mean([10.0, 0.0]) == 0.0
    assert math.isnan(harmonic_mean([]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_counts_equal_cpu():
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.integers(0, 10, size=(64, 64)))
    pred = torch.from_numpy(rng.integers(0, 10, size=(64, 64)))
    a, b = ConfusionMatrix(10), ConfusionMatrix(10, device="cuda")
    a.update(pred, gt)
    b.update(pred.cuda(), gt.cuda())
    assert torch.equal(a.counts, b.counts.cpu())

