import math

import numpy as np
import pytest

from birdsed.metrics import macro_roc_auc, padded_cmap, per_class_average_precision

TRUTH = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
SCORES = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.4], [0.1, 0.5]])


def test_padded_cmap_matches_the_hand_computed_value():
    # Class 0 ranks both positives first: AP 1. Class 1 with 5 padding rows of ones:
    # thresholds 1.0 (R 5/7, P 1), 0.8 (R 6/7, P 1), 0.5 (P 6/7), 0.4 (R 1, P 7/8) -> 6/7 + 1/8.
    assert padded_cmap(TRUTH, SCORES) == pytest.approx((1 + 6 / 7 + 1 / 8) / 2)


def test_unpadded_cmap_and_per_class_ap():
    np.testing.assert_allclose(per_class_average_precision(TRUTH, SCORES), [1.0, (1 + 2 / 3) / 2])
    assert padded_cmap(TRUTH, SCORES, padding=0) == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)


def test_padding_gives_classes_without_positives_a_defined_score():
    truth = np.array([[1, 0], [0, 0]])
    assert padded_cmap(truth, np.array([[0.9, 0.1], [0.1, 0.2]])) == pytest.approx(1.0)


def test_macro_auc_over_classes_with_positives_only():
    # Class 0: both positives above both negatives (1.0); class 1: 3 of 4 pairs ordered (0.75).
    truth = np.column_stack([TRUTH, np.zeros(4)])
    scores = np.column_stack([SCORES, np.random.default_rng(0).random(4)])
    assert macro_roc_auc(truth, scores) == pytest.approx(0.875)


def test_macro_auc_is_nan_when_no_class_can_be_scored():
    assert math.isnan(macro_roc_auc(np.ones((3, 2)), np.random.default_rng(0).random((3, 2))))
