"""MSeg's zero-shot table: MSeg's formula in the table, the other formula as a labelled second table, partial runs."""

import json

import numpy as np
import pytest

from mseg_semantic.evaluation.metrics import ConfusionMatrix, harmonic_mean
from mseg_semantic.evaluation.zero_shot import FORMULAS, ZeroShotEntry, format_zero_shot_table, run_zero_shot, zero_shot_figure, zero_shot_summary


def scores_with_an_absent_class():
    """Both formulas from a real confusion matrix where a class is absent from prediction and ground truth."""
    import torch

    cm = ConfusionMatrix(4)  # class 3 never occurs: MSeg's formula counts it 0, the other leaves it out
    cm.update(torch.tensor([0, 1, 1, 2, 2, 0]), torch.tensor([0, 1, 1, 2, 0, 0]))
    m = cm.compute()
    return {"miou_mseg": m.miou_mseg, "miou": m.miou}


def test_table_uses_mseg_formula_and_labels_the_other_as_a_second_table():
    scores = scores_with_an_absent_class()
    assert scores["miou_mseg"] < scores["miou"]  # a case where the formulas differ
    by_size = {("camvid-11", 360): scores, ("camvid-11", 720): {"miou_mseg": 0.1, "miou": 0.9},
               ("kitti-19", 360): {"miou_mseg": 0.5, "miou": 0.5}, ("kitti-19", 720): {"miou_mseg": 0.6, "miou": 0.6}}
    entries = run_zero_shot(lambda d, b: by_size[(d, b)], ["kitti-19", "camvid-11"], [360, 720], lambda d: None)
    camvid = entries[0]
    assert camvid.dataset == "camvid-11" and camvid.miou == scores["miou_mseg"]
    assert camvid.best_base_size() == 360 and camvid.best_base_size("miou") == 720  # each formula picks its own best
    text = format_zero_shot_table("m", entries)
    first, second = text.split("For reference")
    assert "MSeg's formula" in first.splitlines()[0]
    assert f"| m | {100 * scores['miou_mseg']:.1f} | 60.0 | {harmonic_mean([100 * scores['miou_mseg'], 60.0]):.1f} |" in first
    assert "Cityscapes" in second.splitlines()[0]
    assert f"| m | 90.0 | 60.0 | {harmonic_mean([90.0, 60.0]):.1f} |" in second
    summary = zero_shot_summary("m", entries, "val")
    assert summary["table_formula"] == "miou_mseg" and set(summary["formulas"]) == set(FORMULAS)
    row = summary["datasets"][0]
    assert row["miou_mseg"] == pytest.approx(100 * scores["miou_mseg"], abs=1e-3) and row["miou"] == 90.0
    assert row["best_base_size"] == 360 and row["miou_best_base_size"] == 720
    assert summary["harmonic_mean"] == pytest.approx(harmonic_mean([100 * scores["miou_mseg"], 60.0]), abs=1e-3)
    assert summary["harmonic_mean_miou"] == pytest.approx(harmonic_mean([90.0, 60.0]), abs=1e-3)
    json.dumps(summary, allow_nan=False)


def test_partial_table_says_so_first_and_in_json():
    entries = [ZeroShotEntry("camvid-11", {360: {"miou_mseg": 0.5, "miou": 0.5}})]
    note = "each list evaluated from image 0, 5 images"
    text = format_zero_shot_table("m", entries, partial=note)
    assert text.splitlines()[0].startswith("**PARTIAL**") and note in text.splitlines()[0]
    assert zero_shot_summary("m", entries, "val", partial=note)["partial"] == note
    assert zero_shot_summary("m", entries, "val")["partial"] is None


def test_missing_dataset_leaves_the_harmonic_mean_incomplete_in_both_tables():
    entries = run_zero_shot(lambda d, b: {"miou_mseg": 0.4, "miou": 0.5}, ["voc2012", "camvid-11"], [360],
                            lambda d: "not found at /x" if d == "voc2012" else None)
    text = format_zero_shot_table("m", entries)
    assert text.count("incomplete |") == 2 and "voc2012: missing (not found at /x)" in text


def test_zero_shot_figure_draws_both_formulas():
    entries = [ZeroShotEntry("camvid-11", {360: {"miou_mseg": 0.8, "miou": 0.4}}), ZeroShotEntry("kitti-19", missing="not found")]
    image = zero_shot_figure("m", entries)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    dark = np.all(image == (8, 48, 107), axis=2).sum()  # MSeg's formula's bars
    light = np.all(image == (158, 202, 225), axis=2).sum()
    swatch = 15 * 15  # each series' legend square
    assert (dark - swatch) / (light - swatch) == pytest.approx(2.0, rel=0.05)  # 80 % against 40 %: twice the bar area
