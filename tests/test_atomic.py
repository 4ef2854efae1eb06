"""The one atomic writer and the shared parsers of booleans and key=value pairs."""

import os
import stat

import pytest

from birdsed import atomic
from birdsed.parsing import parse_bool, split_key_value


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]


def test_temporary_names_are_unique_hidden_marked_and_keep_the_suffix(tmp_path):
    target = tmp_path / "sub" / "model.pt2"
    with atomic.atomic_path(target) as first, atomic.atomic_path(target) as second:
        assert first != second and first.exists() and second.exists()
        assert first.name.startswith(".model.pt2" + atomic.TEMPORARY_MARK) and first.suffix == ".pt2"
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the last rename wins; no collision, no leftover
    assert [path.name for path in target.parent.iterdir()] == ["model.pt2"]


def test_the_result_has_the_umask_permissions_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "labels.json", "[]")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "labels.json").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[(True, True), (" Yes ", True), ("1", True), ("ON", True)],
        *[("false", False), ("0", False), ("off", False)],
        *[("maybe", None), ("", None), ("2", None)],
    ],
)
def test_booleans(raw, expected):
    assert parse_bool(raw) is expected


def test_key_value_pairs():
    assert split_key_value(" lr = 0.001 ") == ("lr", "0.001")
    assert split_key_value("tags=a=b") == ("tags", "a=b")
    assert split_key_value("lr") is None and split_key_value("=3") is None
