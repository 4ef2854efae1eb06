import logging

import numpy as np
import pandas as pd
import pytest

from birdsed.data import metadata
from birdsed.errors import DataError


def frame(rows):
    data = pd.DataFrame(rows, columns=["primary_label", "secondary_labels", "rating"])
    data["secondary_labels"] = data["secondary_labels"].map(metadata.parse_secondary_labels)
    data["rating"] = pd.to_numeric(data["rating"], errors="coerce")
    data["filename"] = [f"{label}/XC{row}.ogg" for row, label in enumerate(data["primary_label"])]
    return data


def write_csv(directory, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train_metadata.csv").write_text(text)
    return directory


@pytest.mark.parametrize(
    ("value", "expected"),
    [("['a', 'b']", ["a", "b"]), ("[]", []), ("", []), ("nan", []), ("'a'", ["a"]), ("[' a ', '']", ["a"])],
)
def test_secondary_labels_parse_python_lists(value, expected):
    assert metadata.parse_secondary_labels(value) == expected


@pytest.mark.parametrize("value", ["[a, b", "{'a': 1}", "42", "['a'"])
def test_malformed_secondary_labels_are_recognised(value):
    assert metadata.parse_secondary_labels(value) is None


def test_read_metadata_keeps_other_columns_and_makes_paths(tmp_path):
    root = write_csv(
        tmp_path, "primary_label,secondary_labels,type,rating,filename\nabc1,\"['x']\",song,4.5,abc1/XC1.ogg\n"
    )
    data = metadata.read_metadata(root)
    assert data.loc[0, "secondary_labels"] == ["x"]
    assert data.loc[0, "rating"] == 4.5
    assert data.loc[0, "path"] == root / "train_audio" / "abc1" / "XC1.ogg"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "train_metadata.csv is missing"),
        ("primary_label,rating,filename\na,1,a/1.ogg\n", "lacks the required column(s) secondary_labels"),
        ("primary_label,secondary_labels,rating,filename\n", "has no rows"),
    ],
)
def test_unusable_metadata_is_a_data_error(tmp_path, text, reason):
    if text is not None:
        write_csv(tmp_path, text)
    with pytest.raises(DataError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        metadata.read_metadata(tmp_path)


def test_ratings_fill_per_label_then_global_and_zero_counts_as_unrated():
    data = frame([("a", "[]", 4), ("a", "[]", None), ("a", "[]", 2), ("b", "[]", 0), ("c", "[]", None), ("c", "[]", 5)])
    filled = metadata.fill_ratings(data)["rating"].tolist()
    global_mean = (4 + 2 + 5) / 3
    assert filled == pytest.approx([4, 3, 2, global_mean, 5, 5])


def test_ratings_without_any_value_fill_with_five():
    data = frame([("a", "[]", None), ("b", "[]", 0)])
    assert metadata.fill_ratings(data)["rating"].tolist() == [5, 5]


def test_vocabulary_targets_and_ignored_secondary_labels(caplog):
    data = frame([("b", "['a', 'zzz']", 5), ("a", "[]", 5), ("c", "['b']", 5)])
    labels = metadata.build_vocabulary(data)
    assert labels == ["a", "b", "c"]
    with caplog.at_level(logging.INFO):
        targets = metadata.build_targets(data, labels, secondary_weight=0.5)
    np.testing.assert_array_equal(targets, [[0.5, 1, 0], [1, 0, 0], [0, 0.5, 1]])
    assert "Ignored 1 secondary label(s)" in caplog.text


def test_split_validates_every_class_with_two_recordings_and_keeps_one_for_training():
    rows = [("a", "[]", 5)] * 10 + [("b", "[]", 5)] * 2 + [("c", "[]", 5)]
    train, validation = metadata.split_train_validation(frame(rows), val_fraction=0.3, seed=0)
    assert len(train) + len(validation) == 13
    assert set(validation["primary_label"]) == {"a", "b"}  # c has a single recording: train only
    assert set(train["primary_label"]) == {"a", "b", "c"}
    assert len(validation) == round(0.3 * 13)
    assert not set(train["filename"]) & set(validation["filename"])


def test_split_is_deterministic_under_a_seed_and_varies_with_it():
    data = frame([(label, "[]", 5) for label in "abcdef" for _ in range(6)])
    first = metadata.split_train_validation(data, 0.2, seed=1)[1]["filename"].tolist()
    again = metadata.split_train_validation(data, 0.2, seed=1)[1]["filename"].tolist()
    other = metadata.split_train_validation(data, 0.2, seed=2)[1]["filename"].tolist()
    assert first == again and first != other


def test_class_weights_are_inverse_square_root_of_counts_normalised():
    data = frame([("a", "[]", 5)] * 16 + [("b", "[]", 5)] * 4 + [("c", "[]", 5)])
    weights = metadata.class_weights(data, ["a", "b", "c"])
    raw = np.array([16, 4, 1]) ** -0.5
    np.testing.assert_allclose(weights, raw / raw.mean(), rtol=1e-6)
    sampler = metadata.sampling_weights(data, ["a", "b", "c"])
    # Each class's total sampling mass grows as sqrt(count): rare classes are drawn more often per file.
    assert sampler[:16].sum() / sampler[20] == pytest.approx(4.0 / (1 / 1), rel=1e-6)


def test_rating_weights_follow_rating_with_mean_one():
    data = frame([("a", "[]", 5), ("a", "[]", 2.5), ("a", "[]", 0.5)])
    weights = metadata.rating_weights(data)
    np.testing.assert_allclose(weights, np.array([1.0, 0.5, 0.2]) / np.mean([1.0, 0.5, 0.2]), rtol=1e-6)


CATALOGUE = """primary_label,secondary_labels,rating,filename
abc1,"['xyz2']",4,abc1/XC1.ogg
abc1,[a b,5,abc1/XC2.ogg
abc1,[],7,abc1/XC3.ogg
abc1,[],very good,abc1/XC4.ogg
abc1,[],3,abc1/XC1.ogg
,[],3,abc1/XC5.ogg
abc1,[],3,
abc1,[],3,../../etc/passwd
abc1,[],3,/etc/passwd
 Xyz2 ,[],-1,xyz2/XC6.ogg
xyz2,[],2.5,xyz2/XC7.ogg
"""


def test_odd_metadata_rows_are_dropped_or_normalised_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        data = metadata.read_metadata(write_csv(tmp_path, CATALOGUE))
    assert list(data["filename"]) == [f"abc1/XC{n}.ogg" for n in (1, 2, 3, 4)] + ["xyz2/XC6.ogg", "xyz2/XC7.ogg"]
    assert list(data["primary_label"]) == ["abc1"] * 4 + ["Xyz2", "xyz2"]
    assert data.loc[1, "secondary_labels"] == []
    assert data["rating"].isna().tolist() == [False, False, True, True, True, False]
    text = caplog.text
    assert "Dropped 1 metadata row(s): no primary_label" in text
    assert "Dropped 1 metadata row(s): no filename" in text
    assert "Dropped 2 metadata row(s): filename outside train_audio/" in text
    assert "Dropped 1 metadata row(s): repeated filename (first row kept)" in text
    assert "1 malformed secondary_labels value(s) read as []" in text
    assert "3 rating(s) not a number from 0 to 5: treated as unrated" in text
    assert "differ only in case" in text
    assert "2 class(es) have a single recording" in text


def test_metadata_without_any_usable_row_is_a_data_error(tmp_path):
    root = write_csv(tmp_path, "primary_label,secondary_labels,rating,filename\n,[],3,a/1.ogg\nb,[],3,../x.ogg\n")
    with pytest.raises(DataError, match="has no usable rows"):
        metadata.read_metadata(root)
