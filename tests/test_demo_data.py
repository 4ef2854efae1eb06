"""launch/birdsed_launch/demo.py's data: each set is made once, and made again when the demo's sizes change."""

from __future__ import annotations

from birdsed_launch import demo


def fake_makers(monkeypatch, made):
    """Generators that write one file per unit of size and record what they made."""

    def write(path, size, name):
        made.append((name, size))
        path.mkdir(parents=True)
        for number in range(size):
            (path / f"{number}.ogg").write_bytes(b"audio")
        return path

    monkeypatch.setattr(
        demo, "make_dataset", lambda path, recordings_per_species, **_: write(path, recordings_per_species, "train")
    )
    monkeypatch.setattr(demo, "make_soundscapes", lambda path, species, files, **_: write(path, files, "soundscapes"))


def test_sets_are_made_once_and_again_when_their_size_changes(tmp_path, monkeypatch):
    made = []
    fake_makers(monkeypatch, made)
    monkeypatch.setattr(demo, "SET_SIZES", {"train": 2, "dev": 3, "unlabelled": 1, "test": 1})
    paths = demo.make_data(tmp_path, seed=0, sets=("train", "dev"))
    assert made == [("train", 2), ("soundscapes", 3)]
    assert len(list(paths["dev"].iterdir())) == 3

    demo.make_data(tmp_path, seed=0, sets=("train", "dev"))
    assert len(made) == 2  # both reused

    monkeypatch.setattr(demo, "SET_SIZES", {"train": 2, "dev": 5, "unlabelled": 1, "test": 1})
    demo.make_data(tmp_path, seed=0, sets=("train", "dev"))
    assert made[2:] == [("soundscapes", 5)]  # only the set whose size changed
    assert sorted(path.name for path in paths["dev"].iterdir()) == [f"{number}.ogg" for number in range(5)]


def test_an_older_demos_set_or_a_half_written_one_is_made_again(tmp_path, monkeypatch):
    made = []
    fake_makers(monkeypatch, made)
    data = tmp_path / "data-seed0"
    (data / "dev").mkdir(parents=True)
    (data / "dev" / "stale.ogg").write_bytes(b"an older demo's 8 minutes")
    (data / ".dev.done").touch()  # older demos left an empty marker
    (data / "unlabelled").mkdir()
    (data / "unlabelled" / "half.ogg").write_bytes(b"interrupted")  # no marker: interrupted mid-set

    paths = demo.make_data(tmp_path, seed=0, sets=("dev", "unlabelled"))
    assert [name for name, _ in made] == ["soundscapes", "soundscapes"]
    assert not (paths["dev"] / "stale.ogg").exists() and not (paths["unlabelled"] / "half.ogg").exists()
    assert (data / ".dev.done").read_text().strip() == str(demo.SET_SIZES["dev"])
