"""The pictures beside the tables: per-class IoU bars, the row-normalised confusion matrix."""

import math

import numpy as np
import pytest

from mseg_semantic.evaluation.figures import DARK_BLUE, NO_DATA, confusion_image, iou_bar_chart, row_normalised


def test_row_normalised_rows_sum_to_one_and_empty_rows_are_nan():
    shares = row_normalised(np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]]))
    np.testing.assert_allclose(shares[[0, 2]].sum(1), 1.0)
    assert np.isnan(shares[1]).all()
    np.testing.assert_allclose(shares[0], [0.75, 0.25, 0.0])


def test_bar_lengths_follow_iou_and_absent_classes_get_no_bar():
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 200, 0]], np.uint8)
    iou = np.array([1.0, 0.5, math.nan, 0.25])
    image = iou_bar_chart("t", ["a", "b", "c", "d"], iou, colors)
    widths = [np.all(image == c, axis=2).sum(axis=1).max() for c in colors]  # widest row of each class colour
    assert widths[2] == 0  # absent: listed in text, no bar
    assert widths[0] == pytest.approx(2 * widths[1], abs=3) and widths[1] == pytest.approx(2 * widths[3], abs=3)
    excluded = iou_bar_chart("t", ["a", "b", "c", "d"], iou, colors, include=np.array([True, False, True, True]))
    assert not np.all(excluded == colors[1], axis=2).any()


def test_confusion_cells_are_row_shares_with_extra_columns_for_other_and_unlabeled():
    # 3 classes, class 2 excluded; GT 0: 4 right; GT 1: 2 right, 1 predicted as the excluded class 2, 1 'unlabeled'
    table = np.array([[4, 0, 0, 0], [0, 2, 1, 1], [0, 0, 0, 0]])
    image = confusion_image("t", ["a", "b", "c"], table, include=np.array([True, True, False]))
    dark = tuple(int(v) for v in DARK_BLUE)
    assert np.all(image == dark, axis=2).any()  # the 100 % cell of class 0
    half = tuple(int(v) for v in (255 * 0.5 + DARK_BLUE * 0.5))
    quarter = tuple(int(v) for v in (255 * 0.75 + DARK_BLUE * 0.25))
    assert np.all(image == half, axis=2).sum() > 0 and np.all(image == quarter, axis=2).sum() > 0
    # cells: 2 rows x 4 columns (a, b, other classes, unlabeled): one 100 %, one 50 %, two 25 %
    assert np.all(image == quarter, axis=2).sum() == pytest.approx(2 * np.all(image == half, axis=2).sum(), rel=0.05)
    empty = confusion_image("t", ["a", "b"], np.array([[1, 0], [0, 0]]))
    assert np.all(empty == NO_DATA, axis=2).any()  # a class without ground truth: a grey row
