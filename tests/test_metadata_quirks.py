"""train_metadata.csv as spreadsheets and other tools save it, and odd filenames: read, or refused with a hint."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from birdsed.config import from_hyperparameters
from birdsed.data import loaders, metadata
from birdsed.errors import DataError
from conftest import FAST_HYPERPARAMETERS

RATE = FAST_HYPERPARAMETERS["sample_rate"]
EXPECTED = {"filename": ["abc1/XC1.ogg", "abc1/XC2.ogg"], "primary_label": ["abc1", "abc1"], "rating": [4.0, 3.5]}


def read(tmp_path, data: bytes):
    (tmp_path / "train_metadata.csv").write_bytes(data)
    return metadata.read_metadata(tmp_path)


def assert_expected(frame):
    for column, values in EXPECTED.items():
        assert list(frame[column]) == values, column


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("primary_label;secondary_labels;rating;filename\nabc1;[];4;abc1/XC1.ogg\nabc1;[];3.5;abc1/XC2.ogg\n", "';'"),
        ("primary_label\tsecondary_labels\trating\tfilename\nabc1\t[]\t4\tabc1/XC1.ogg\nabc1\t[]\t3.5\tabc1/XC2.ogg\n",
         "'\\t'"),
        ("primary_label, secondary_labels, rating, filename\nabc1, \"['x', 'y']\", 4, abc1/XC1.ogg\n"
         "abc1, [], 3.5 , abc1/XC2.ogg \n", None),
        ("\ufeffprimary_label,secondary_labels,rating,filename\r\nabc1,[],4,abc1\\XC1.ogg\r\nabc1,[],3.5,abc1\\XC2.ogg\r\n",
         "2 filename(s) use Windows backslashes"),
    ],
    ids=["semicolon", "tab", "spaces_after_commas", "windows_bom_crlf_backslashes"],
)  # fmt: skip
def test_common_csv_dialects_are_read(tmp_path, caplog, text, warning):
    assert_expected(read(tmp_path, text.encode("utf-8")))
    if warning:
        assert warning in caplog.text


def test_a_latin1_file_is_read_as_windows_1252_with_a_warning(tmp_path, caplog):
    text = "primary_label,secondary_labels,rating,filename,author\nabc1,[],4,abc1/XC1.ogg,José Pérez\n"
    text += "abc1,[],3.5,abc1/XC2.ogg,Ana\n"
    frame = read(tmp_path, text.encode("latin-1"))
    assert_expected(frame)
    assert frame["author"][0] == "José Pérez"
    assert "is not UTF-8 (first undecodable byte at position" in caplog.text and "Save it as UTF-8" in caplog.text


def test_a_repeated_column_name_warns_and_the_first_is_used(tmp_path, caplog):
    text = "primary_label,secondary_labels,rating,filename,filename\n"
    text += "abc1,[],4,abc1/XC1.ogg,x\nabc1,[],3.5,abc1/XC2.ogg,y\n"
    assert_expected(read(tmp_path, text.encode()))
    assert "names column(s) ['filename'] more than once; the first column of each name is used" in caplog.text


def test_a_header_split_by_another_separator_without_the_columns_says_so(tmp_path):
    with pytest.raises(DataError, match="is the file separated by ';'"):
        read(tmp_path, b"primary_label;rating;filename\nabc1;4;abc1/XC1.ogg\n")


def test_a_binary_file_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match="is not a text CSV file"):
        read(tmp_path, b"\x00\x01\x02\xff\xfe")


def make_channel(root, names, long_names=()):
    rows = ["primary_label,secondary_labels,rating,filename"]
    for name in names:
        (root / "train_audio" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / "train_audio" / name, np.zeros(RATE), RATE, subtype="PCM_16")
    rows += [f"{name.split('/')[0]},[],4,{name}" for name in [*names, *long_names]]
    (root / "train_metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_filename_too_long_for_the_file_system_is_a_counted_skip(tmp_path, caplog):
    names = [f"{label}/XC{n}.wav" for label in ("aaa1", "bbb1") for n in range(5)]
    long_name = "aaa1/" + "é" * 130 + ".wav"  # 264 bytes in UTF-8
    channel = make_channel(tmp_path / "train", names, [long_name])
    caplog.set_level(logging.INFO)
    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "max_skipped_fraction": 0.1})
    data = loaders.load_training_data(cfg, channel, None)
    assert len(data.train) + len(data.validation) == 10
    assert "skipped_files=1 usable_files=10" in caplog.text
    assert (
        f"Skipping {channel / 'train_audio' / long_name}: file name too long (a path part of 264 bytes" in caplog.text
    )


def test_a_validation_channel_sharing_recordings_with_training_warns_with_the_count(tmp_path, caplog):
    names = [f"{label}/XC{n}.wav" for label in ("aaa1", "bbb1") for n in range(3)]
    train = make_channel(tmp_path / "train", names)
    validation = make_channel(tmp_path / "validation", [names[0], names[3], "aaa1/XC9.wav"])
    loaders.load_training_data(from_hyperparameters(FAST_HYPERPARAMETERS), train, validation)
    assert "2 of the 3 validation recordings are also in the train channel (same filename" in caplog.text
