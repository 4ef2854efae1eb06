"""Soundscapes: the label file and its errors, streamed windows, window scoring, pseudo-labels, mixing, smoothing."""

from __future__ import annotations

import csv
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from birdsed import predict, soundscape_bench
from birdsed.commands import predict as predict_cli
from birdsed.config import from_hyperparameters
from birdsed.data import soundscapes
from birdsed.data.audio import AudioReadError, decode, stream_audio
from birdsed.data.sampler import WeightedEpochSampler
from birdsed.data.synthetic import make_soundscapes, window_labels
from birdsed.errors import ConfigError, DataError
from birdsed.metrics import padded_cmap
from birdsed.models import create_model
from birdsed.optim import create_optimizer
from birdsed.sm_env import SageMakerEnv
from birdsed.smoothing import smooth_windows
from birdsed.training import job, outputs, pseudo, rounds, selection
from birdsed.training.distributed import Distributed
from birdsed.training.soundscape_validation import evaluate_soundscapes, load, shard_by_load, window_scores
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT

LABELS = ["aaa1", "bbb2", "ccc3"]
RATE = 8000
ONE_PROCESS = Distributed(0, 0, 1, torch.device("cpu"))
# One-second windows at 8 kHz: the scoring test's pieces are whole seconds.
SMALL = {
    **FAST_HYPERPARAMETERS,
    "sample_rate": RATE,
    "duration": 1,
    "n_fft": 256,
    "hop_length": 64,
    "n_mels": 16,
    "fmax": 4000,
    "batch_size": 2,
    "pretrained": "false",
}


def write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("filename", "start", "end", "labels")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_steps(path: Path, levels: list[float], sample_rate: int = RATE) -> Path:
    """A recording holding `levels[i]` (a constant) during second i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "FLOAT" if path.suffix == ".wav" else None  # exact levels where the format allows
    sf.write(path, np.repeat(np.asarray(levels, dtype=np.float32), sample_rate), sample_rate, subtype=subtype)
    return path


# ---- the label file ----


@pytest.fixture
def channel(tmp_path) -> Path:
    write_steps(tmp_path / "site_a" / "one.wav", [0.1] * 6)
    write_steps(tmp_path / "two.wav", [0.2] * 4)
    return tmp_path


def test_labels_are_read_with_windows_of_any_length_and_unusable_ones_dropped(channel, caplog):
    write_csv(
        channel / soundscapes.LABELS_FILE,
        [
            ["two.wav", "0", "2.5", "bbb2"],
            ["site_a/one.wav", "5", "6", ""],  # no bird
            ["./site_a/one.wav", " 0", "5", "aaa1  ccc3"],  # spaces, several labels, a "./" path
            ["two.wav", "9", "12", "aaa1"],  # starts after the end of its 4 s recording: dropped
            ["gone.wav", "0", "5", "aaa1"],  # not in the channel: skipped with its windows
        ],
    )
    windows = soundscapes.labelled_windows(channel, LABELS, RATE, max_skipped_fraction=0.5)
    assert [file.name for file in windows.files] == ["site_a/one.wav", "two.wav"]
    assert windows.file_index.tolist() == [0, 0, 1]
    assert windows.starts.tolist() == [0, 5, 0] and windows.ends.tolist() == [5, 6, 2.5]
    assert windows.truth.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert "1 recording(s) named in soundscape_labels.csv are not in the channel (e.g. gone.wav)" in caplog.text
    assert "1 window(s) of soundscape_labels.csv start after the end" in caplog.text
    # As a spreadsheet saves it: a byte-order mark, Windows line ends, capitalised names.
    (channel / soundscapes.LABELS_FILE).write_bytes(b"\xef\xbb\xbfFilename,Start,End,Labels\r\ntwo.wav,0,1,aaa1\r\n")
    assert soundscapes.labelled_windows(channel, LABELS, RATE, 0.0).truth.tolist() == [[1, 0, 0]]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (None, None, "has no soundscape_labels.csv: it needs one with the columns filename,start,end,labels"),
        ([["two.wav", "0", "5"]], ("filename", "start", "end"), r"lacks the column\(s\) labels"),
        ([], None, "lists no windows"),
        ([["two.wav", "five", "10", "aaa1"]], None, r"line 2: two\.wav,five,10,aaa1"),
        ([["two.wav", "0", "5", ""], ["two.wav", "3", "3", ""]], None, r"1 row\(s\) are malformed.*line 3"),
        ([["two.wav", "-1", "5", ""]], None, "0 <= start < end"),
        ([["two.wav", "0", "inf", ""]], None, "0 <= start < end"),
        ([["../two.wav", "0", "5", ""]], None, "a path below the channel"),
        ([["/etc/passwd", "0", "5", ""]], None, "a path below the channel"),
        ([["", "0", "5", ""]], None, "a path below the channel"),
        ([["two.wav", "0", "5", "aaa1 zzz9"]], None, r"1 label\(s\) in 1 window\(s\) are not classes.*zzz9"),
        ([["two.wav", "0", "5", "nocall"]], None, "Leave 'labels' empty for a window without birds"),
        ([["gone.wav", "0", "5", ""], ["two.wav", "0", "5", ""]], None, "1 of the 2 recordings"),
        ([["gone.wav", "0", "5", ""]], None, "0 usable|1 of the 1 recordings"),
        ([["two.wav", "20", "25", ""]], None, "No window of .* lies within a usable recording"),
    ],
)
def test_label_file_errors_name_the_problem(channel, rows, header, message):
    if rows is not None:
        write_csv(channel / soundscapes.LABELS_FILE, rows, header or ("filename", "start", "end", "labels"))
    with pytest.raises(DataError, match=message):
        soundscapes.labelled_windows(channel, LABELS, RATE, max_skipped_fraction=0.1)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary \x00", b'filename,start,end,labels\n"unclosed,0,5,\n'])
def test_a_label_file_that_is_not_csv_is_an_error(channel, content):
    (channel / soundscapes.LABELS_FILE).write_bytes(content)
    with pytest.raises(DataError, match=r"soundscape_labels\.csv"):
        soundscapes.labelled_windows(channel, LABELS, RATE, max_skipped_fraction=0.1)


def test_unreadable_recordings_are_skipped_and_counted(channel, caplog):
    (channel / "broken.ogg").write_bytes(b"OggS but not really")
    write_csv(channel / soundscapes.LABELS_FILE, [["broken.ogg", "0", "5", ""], ["two.wav", "0", "2", "aaa1"]])
    windows = soundscapes.labelled_windows(channel, LABELS, RATE, max_skipped_fraction=0.5)
    assert len(windows) == 1 and "Skipping" in caplog.text and "broken.ogg" in caplog.text
    with pytest.raises(DataError, match="1 of the 2 recordings"):
        soundscapes.labelled_windows(channel, LABELS, RATE, max_skipped_fraction=0.1)


def test_the_synthetic_soundscapes_labels_are_the_calls_in_each_window(tmp_path):
    root = make_soundscapes(tmp_path, species=3, files=2, seconds=12, sample_rate=8000, seed=4)
    windows = soundscapes.labelled_windows(root, ["dwnwhi1", "trillr1", "chirpy1"], 8000, 0.0)
    assert len(windows) == 2 * 3 and windows.truth.sum() > 0
    assert [file.name for file in windows.files] == ["site0/SC0004_000.ogg", "site1/SC0004_001.flac"]
    assert window_labels({"a": [(4.9, 5.3)], "b": [(1.0, 4.97)]}, 5.0, 10.0) == ["a"]


def test_the_birdclef_conversion_in_the_docs_makes_a_valid_label_file(tmp_path):
    """The one-liner of docs/soundscapes.md, run on a BirdCLEF 2021-style folder."""
    text = (REPO_ROOT / "docs" / "soundscapes.md").read_text()
    command = re.search(r"<!-- birdclef-conversion -->\n```bash\n(.+?)\n```", text, re.DOTALL).group(1)
    assert command.startswith("python -c ") and "\n" not in command
    (tmp_path / "train_soundscapes").mkdir()
    write_steps(tmp_path / "train_soundscapes" / "7019_COR_20190904.ogg", [0.1] * 10)
    write_steps(tmp_path / "train_soundscapes" / "10534_SSW_20170429.ogg", [0.1] * 5)
    write_csv(
        tmp_path / "train_soundscape_labels.csv",
        [
            ["7019_COR_5", "COR", "7019", "5", "nocall"],
            ["7019_COR_10", "COR", "7019", "10", "aaa1 bbb2"],
            ["10534_SSW_5", "SSW", "10534", "5", "ccc3"],
        ],
        header=("row_id", "site", "audio_id", "seconds", "birds"),
    )
    completed = subprocess.run(
        [sys.executable, "-c", command.removeprefix("python -c ").strip("'\"")],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    windows = soundscapes.labelled_windows(tmp_path / "train_soundscapes", LABELS, RATE, 0.0)
    assert [file.name for file in windows.files] == ["10534_SSW_20170429.ogg", "7019_COR_20190904.ogg"]
    assert windows.starts.tolist() == [0, 0, 5] and windows.ends.tolist() == [5, 5, 10]
    assert windows.truth.tolist() == [[0, 0, 1], [0, 0, 0], [1, 1, 0]]


# ---- streamed windows ----


def test_streamed_blocks_spans_and_windows_equal_the_whole_decoded_file(tmp_path):
    path = tmp_path / "s.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 5 * RATE).astype(np.float32), RATE)
    whole = decode(path, RATE)
    blocks = list(stream_audio(path, RATE, block_seconds=0.7))
    assert len(blocks) == 8 and np.array_equal(np.concatenate(blocks), whole)
    spans = [(0, 100), (50, 9000), (8000, 8000 + 3 * RATE), (39_000, 42_000), (60_000, 61_000)]
    for (start, stop), piece in zip(spans, soundscapes.read_spans(path, RATE, spans), strict=True):
        expected = np.pad(whole[start:stop], (0, stop - start - len(whole[start:stop])))
        assert np.array_equal(piece, expected), (start, stop)
    windows = list(soundscapes.consecutive_windows(path, RATE, 3 * RATE))
    assert np.array_equal(np.stack(windows), predict.cut_windows(whole, 3 * RATE))
    assert soundscapes.window_count(len(whole), 3 * RATE) == len(windows) == 2
    (tmp_path / "bad.ogg").write_bytes(b"not audio")
    with pytest.raises(AudioReadError):
        list(stream_audio(tmp_path / "bad.ogg", RATE))


def test_find_audio_recurses_and_skips_hidden_files(tmp_path):
    for name in ("a/b/x.OGG", "a/y.wav", ".hidden/z.wav", "a/.partial.flac", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert soundscapes.find_audio(tmp_path) == [tmp_path / "a/b/x.OGG", tmp_path / "a/y.wav"]
    with pytest.raises(DataError, match="holds no audio files"):
        soundscapes.unlabelled_files(tmp_path / "a" / "b" / "none", RATE, 0.1)


# ---- scoring labelled windows ----


class MeanLevel(nn.Module):
    """A stand-in model: class 0's probability is the window's mean sample, class 1's is one minus it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        level = waveform.float().mean(dim=1).clamp(1e-4, 1 - 1e-4)
        probabilities = torch.stack([level, 1 - level, torch.full_like(level, 0.5)], dim=1)
        logits = torch.logit(probabilities) * self.scale
        return {"clipwise_logits": logits, "framewise_logits": logits[:, None, :]}


def pairwise_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by counting (positive, negative) pairs in order: the definition, by hand."""
    positives, negatives = scores[truth == 1], scores[truth == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_window_scoring_matches_a_hand_computed_auc(tmp_path):
    write_steps(tmp_path / "steps.wav", [0.1, 0.9, 0.3, 0.7, 0.2, 0.5])
    write_csv(
        tmp_path / soundscapes.LABELS_FILE,
        [
            ["steps.wav", "0", "1", "bbb2"],  # pieces 0.1 -> aaa1 0.1, bbb2 0.9
            ["steps.wav", "1", "3", "aaa1"],  # 0.9, 0.3 -> aaa1 0.9, bbb2 0.7
            ["steps.wav", "2", "4", ""],  # 0.3, 0.7 -> 0.7, 0.7
            ["steps.wav", "4", "6", "aaa1"],  # 0.2, 0.5 -> 0.5, 0.8
            ["steps.wav", "3", "4.5", "bbb2"],  # 0.7, then 0.2 for 0.5 s + 0.5 s of padding -> 0.7, 0.9
        ],
    )
    cfg = from_hyperparameters(SMALL)
    windows = soundscapes.labelled_windows(tmp_path, LABELS, RATE, 0.0)
    validation = load(windows, cfg, ONE_PROCESS)
    assert len(validation.pieces) == 9  # 1 + 2 + 2 + 2 + 2 one-second pieces
    loaded = predict.LoadedModel(MeanLevel(), LABELS, cfg)
    scores = evaluate_soundscapes(validation, loaded.model, loaded, None, torch.device("cpu"), ONE_PROCESS, bool)
    # Windows come sorted by start: [0,1) aaa1 0.1, [1,3) 0.9, [2,4) 0.7, [3,4.5) 0.7, [4,6) 0.5.
    truth = windows.truth
    expected = np.array([[0.1, 0.9, 0.5], [0.9, 0.7, 0.5], [0.7, 0.7, 0.5], [0.7, 0.9, 0.5], [0.5, 0.8, 0.5]])
    # aaa1: positives 0.9, 0.5 over negatives 0.1, 0.7, 0.7 -> 4 of 6 pairs; bbb2: positives 0.9, 0.9 over
    # 0.7, 0.7, 0.8 -> 6 of 6; ccc3 has no positive and is left out.
    hand = (4 / 6 + 6 / 6) / 2
    assert pairwise_auc(truth[:, 0], expected[:, 0]) == pytest.approx(4 / 6)
    assert scores["val_soundscape_auc"] == pytest.approx(hand, abs=1e-6)
    assert scores["val_soundscape_cmap"] == pytest.approx(padded_cmap(truth, expected), abs=1e-3)
    stopped = evaluate_soundscapes(validation, loaded.model, loaded, None, torch.device("cpu"), ONE_PROCESS, lambda: 1)
    assert stopped is None


def test_window_scores_take_the_maximum_and_shards_balance():
    pieces = np.array([[0.1, 0.2], [0.4, 0.1], [0.3, 0.3]], dtype=np.float32)
    assert np.allclose(window_scores(pieces, np.array([0, 0, 1]), 2), [[0.4, 0.2], [0.3, 0.3]])
    assert shard_by_load([10, 1, 1, 8, 2], 2) == [[0, 1], [2, 3, 4]]  # 11 and 11
    assert shard_by_load([5.0], 3) == [[0], [], []]


# ---- pseudo-labels ----


def test_a_round_keeps_and_discards_windows_by_threshold():
    probabilities = np.array(
        [
            [0.9, 0.3, 0.05],  # kept: top 0.9
            [0.5, 0.49, 0.2],  # kept: top exactly at the threshold
            [0.49, 0.1, 0.4],  # discarded: top below it
            [0.2, 0.6, 0.09],  # kept
        ],
        dtype=np.float32,
    )
    kept, targets = pseudo.pseudo_targets(probabilities, threshold=0.5, power=1.0, minimum=0.1)
    assert kept.tolist() == [True, True, False, True]
    assert targets[0].tolist() == pytest.approx([0.9, 0.3, 0.0])  # 0.05 < pseudo_min: 0
    assert targets[3].tolist() == pytest.approx([0.2, 0.6, 0.0])
    # The power sharpens first; pseudo_min then applies to the sharpened value (0.3 ** 2 = 0.09 < 0.1).
    _, sharpened = pseudo.pseudo_targets(probabilities, threshold=0.5, power=2.0, minimum=0.1)
    assert sharpened[0].tolist() == pytest.approx([0.81, 0.0, 0.0])
    assert pseudo.pseudo_targets(probabilities, threshold=0.0, power=1.0, minimum=0.0)[0].all()


def sound_files(count: int) -> list[soundscapes.SoundscapeFile]:
    return [soundscapes.SoundscapeFile(Path(f"/x/f{index}.ogg"), f"f{index}.ogg", 100) for index in range(count)]


def test_pseudo_labels_from_shares_in_any_order_are_one_sorted_set(tmp_path):
    cfg = from_hyperparameters({"pseudo_threshold": 0.5, "pseudo_min": 0.1}).soundscapes
    first, second = pseudo._Kept.empty(), pseudo._Kept.empty()
    first.add(np.array([2, 2, 0]), np.array([1, 0, 3]), np.array([[0.9, 0.0], [0.2, 0.3], [0.6, 0.7]]), cfg)
    second.add(np.array([1, 1]), np.array([0, 1]), np.array([[0.05, 0.95], [0.4, 0.4]]), cfg)
    files = sound_files(3)
    merged = pseudo.merge(1, [first.arrays(), second.arrays()], files, length=10)
    swapped = pseudo.merge(1, [second.arrays(), first.arrays()], files, length=10)
    assert merged.files == ["f0.ogg", "f1.ogg", "f2.ogg"]
    assert merged.file_index.tolist() == [0, 1, 2] and merged.starts.tolist() == [30, 0, 10]
    assert np.allclose([merged.target(index, 2) for index in range(3)], [[0.6, 0.7], [0.0, 0.95], [0.9, 0]])
    for name in ("file_index", "starts", "confidence", "indptr", "columns", "values"):
        assert np.array_equal(getattr(merged, name), getattr(swapped, name)), name
    assert (first.windows, second.windows) == (3, 2)
    nothing = pseudo.merge(1, [pseudo._Kept.empty().arrays()] * 2, files, length=10)  # no window kept anywhere
    assert len(nothing) == 0 and nothing.files == [] and nothing.indptr.tolist() == [0]

    labels = dataclasses.replace(merged, windows=5, mean_confidence=0.75)
    torch.save({"pseudo": labels.state_dict()}, tmp_path / "c.pt")
    restored = pseudo.PseudoLabels.from_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["pseudo"])
    assert restored.summary() == labels.summary() == "round=1 pseudo_windows=5 kept=3 mean_confidence=0.750000"
    assert np.array_equal(restored.values, labels.values) and restored.files == labels.files

    pseudo.write_csv(tmp_path / "pseudo_labels_round1.csv", labels, ["aaa1", "bbb2"], sample_rate=10, length=10)
    with open(tmp_path / "pseudo_labels_round1.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["filename", "start", "end", "confidence", "aaa1", "bbb2"]
    assert rows[1:] == [
        ["f0.ogg", "3", "4", "0.7000", "0.6000", "0.7000"],
        ["f1.ogg", "0", "1", "0.9500", "0", "0.9500"],
        ["f2.ogg", "1", "2", "0.9000", "0.9000", "0"],
    ]


def focal_sampler(count: int, rank: int = 0, world_size: int = 1) -> WeightedEpochSampler:
    return WeightedEpochSampler(np.ones(50), num_samples=count, seed=3, rank=rank, world_size=world_size)


def test_the_mix_probability_swaps_that_share_of_items_reproducibly():
    mixed = pseudo.PseudoMixSampler(focal_sampler(4000), focal_count=50, pseudo_count=7, p=0.4, seed=3)
    mixed.set_epoch(2)
    draws = list(mixed)
    swapped = [index for index, _ in draws if index >= 50]
    assert len(draws) == 4000 and abs(len(swapped) / 4000 - 0.4) < 0.03
    assert set(swapped) == set(range(50, 57))  # uniform over the 7 pseudo windows
    focal = focal_sampler(4000)  # the same epoch's focal draws, unmixed: the items not swapped
    focal.set_epoch(2)
    assert all(mine == theirs for mine, theirs in zip(draws, focal, strict=True) if mine[0] < 50)
    mixed.set_epoch(2, start=1000)  # a mid-epoch resume continues the same sequence
    assert list(mixed) == draws[1000:]
    shares = [pseudo.PseudoMixSampler(focal_sampler(4000, rank, 2), 50, 7, 0.4, 3) for rank in (0, 1)]
    for share in shares:
        share.set_epoch(2)
    interleaved = [item for pair in zip(*(list(share) for share in shares), strict=True) for item in pair]
    assert interleaved == draws  # two processes take disjoint shares of one sequence
    for p, pseudo_count, expected in ((0.0, 7, 0), (1.0, 7, 4000), (0.4, 0, 0)):
        sampler = pseudo.PseudoMixSampler(focal_sampler(4000), 50, pseudo_count, p, 3)
        assert sum(index >= 50 for index, _ in sampler) == expected


def test_a_round_with_few_kept_windows_says_so(caplog):
    cfg = from_hyperparameters({"pseudo_rounds": 1})
    rounds.warn_about_repeats(cfg, kept=40, items_per_epoch=100, number=1)
    assert not caplog.text
    rounds.warn_about_repeats(cfg, kept=4, items_per_epoch=96, number=1)
    assert "only 4 window(s) reached pseudo_threshold=0.5, so each is drawn about 10 times per epoch" in caplog.text
    rounds.warn_about_repeats(cfg, kept=0, items_per_epoch=96, number=2)
    assert "Round 2: no soundscape window reached pseudo_threshold=0.5" in caplog.text


def test_the_best_epoch_of_every_round_is_kept_and_an_earlier_rounds_win_is_said(caplog):
    metric = "val_soundscape_auc"
    history = [{"epoch": 1, "round": 0, metric: 0.8}, {"epoch": 2, "round": 0, metric: 0.9}]
    assert job.newest_is_best(history, metric)
    history.append({"epoch": 3, "round": 1, metric: 0.85})  # best of round 1, not of the job
    assert not job.newest_is_best(history, metric)
    history.append({"epoch": 4, "round": 1, metric: 0.9})  # equal is not better: the first of equals stays
    assert not job.newest_is_best(history, metric)
    # An unscored epoch is not what finish delivers while others are scored; with none scored, the latest is.
    assert not job.newest_is_best([*history, {"epoch": 5, "round": 2, metric: float("nan")}], metric)
    assert job.newest_is_best([{"epoch": 1, "round": 0}, {"epoch": 2, "round": 1}], metric)

    # Within a round (best_model.pt): an unscored epoch after a scored one is not the round's best either.
    assert job.newest_is_best(history[:3], metric, 1)
    assert not job.newest_is_best([*history, {"epoch": 5, "round": 1, metric: float("nan")}], metric, 1)
    assert job.newest_is_best([*history, {"epoch": 5, "round": 2, metric: float("nan")}], metric, 2)
    assert not job.newest_is_best([{"epoch": 1, metric: 0.7}, {"epoch": 2, metric: float("nan")}], metric, 0)
    # select_epoch=last: every newest epoch is the one kept, in its round and in the job.
    assert job.newest_is_best(history, metric, rule="last") and job.newest_is_best(history, metric, 1, "last")

    best = selection.best_record(history, metric)
    assert (best["epoch"], best["round"]) == (2, 0)
    rounds.log_round_choice(history, best, metric)
    assert "The model is round 0's (val_soundscape_auc=0.9000): the last round, 1, scored at most" in caplog.text
    caplog.clear()
    rounds.log_round_choice(history[:2], history[1], metric)
    assert not caplog.text


def test_mixed_items_carry_the_pseudo_window_and_its_soft_target(tmp_path):
    write_steps(tmp_path / "u" / "long.wav", [0.25, 0.5, 0.75, 1.0], sample_rate=RATE)
    labels = pseudo.PseudoLabels(
        round=1, files=["long.wav"], file_index=np.array([0, 0]), starts=np.array([RATE, 3 * RATE]),
        confidence=np.array([0.9, 0.8], dtype=np.float32), indptr=np.array([0, 1, 2]), columns=np.array([2, 0]),
        values=np.array([0.9, 0.8], dtype=np.float32), windows=4, mean_confidence=0.5,
    )  # fmt: skip
    windows = pseudo.PseudoWindowDataset(labels, tmp_path / "u", num_classes=3, sample_rate=RATE, length=2 * RATE)
    item = windows[1]  # from 3 s: one second of 1.0, then padding
    assert item["target"].tolist() == pytest.approx([0.8, 0.0, 0.0]) and item["weight"].item() == 1.0
    assert item["waveform"].dtype == torch.int16 and item["waveform"][:RATE].min() > 32000
    assert item["waveform"][RATE:].abs().max() == 0
    assert windows[0]["waveform"][0] == round(0.5 * 32767)
    with pytest.raises(DataError, match="not in the 'soundscapes' channel"):
        pseudo.PseudoWindowDataset(labels, tmp_path / "elsewhere", 3, RATE, 2 * RATE)


# ---- configuration, selection, schedule ----


def test_hyperparameters_and_their_checks():
    cfg = from_hyperparameters({"pseudo_rounds": "2", "pseudo_threshold": "0.6", "select_metric": "VAL_SOUNDSCAPE_AUC"})
    assert (cfg.soundscapes.pseudo_rounds, cfg.soundscapes.pseudo_threshold) == (2, 0.6)
    assert (cfg.soundscapes.pseudo_p, cfg.soundscapes.pseudo_min, cfg.soundscapes.pseudo_power) == (0.4, 0.1, 1.0)
    assert cfg.validation.select_metric == "val_soundscape_auc" and rounds.pseudo_epochs(cfg) == cfg.optim.epochs
    for bad, message in (
        ({"pseudo_threshold": "1.5"}, "'pseudo_threshold' must be at most 1.0"),
        ({"pseudo_power": "0"}, "'pseudo_power' must be greater than 0.0"),
        ({"pseudo_rounds": "-1"}, "'pseudo_rounds' must be at least 0"),
        ({"select_metric": "loss"}, "'select_metric' must be one of auto, val_cmap"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_hyperparameters(bad)
    record = {"val_cmap": 0.5, "val_auc": 0.7, "val_soundscape_auc": 0.9}
    assert selection.selection_score(record, "val_cmap") == 0.5 and selection.selection_score(record, "val_auc") == 0.7
    assert selection.selection_score(record, "val_soundscape_auc") == 0.9
    assert np.isnan(selection.selection_score(record, "val_soundscape_cmap"))


def test_channels_the_hyperparameters_need_are_checked_first(tmp_path):
    env = SageMakerEnv(tmp_path, {"train": tmp_path}, tmp_path, tmp_path, tmp_path, tmp_path)
    with pytest.raises(DataError, match="pseudo_rounds=1 needs a 'soundscapes' channel"):
        rounds.check_channels(from_hyperparameters({"pseudo_rounds": 1}), env)
    with pytest.raises(ConfigError, match="select_metric=val_soundscape_cmap needs a 'soundscape_validation'"):
        rounds.check_channels(from_hyperparameters({"select_metric": "val_soundscape_cmap"}), env)
    rounds.check_channels(from_hyperparameters({}), env)


def learning_rates(cfg, steps_per_epoch: int, updates: int) -> list[float]:
    """The head's rate at each update under the job's scheduler (timm's, set per update)."""
    model = create_model(cfg, 2)
    optimizer = create_optimizer(model, cfg.optim)
    scheduler = rounds.create_scheduler(optimizer, cfg, steps_per_epoch)
    rates = []
    for step in range(updates):
        scheduler.step_update(step)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_the_learning_rate_schedule_restarts_every_round():
    base = {**FAST_HYPERPARAMETERS, "epochs": 4, "warmup_epochs": 1, "min_lr_ratio": 0.0, "lr": 1.0}
    cfg = from_hyperparameters({**base, "pseudo_rounds": 2, "pseudo_epochs": 2, "backbone_lr_scale": 0.5})
    steps = 10
    rates = learning_rates(cfg, steps, 80)
    assert rates[:40] == pytest.approx(learning_rates(from_hyperparameters(base), steps, 40))  # round 0: focal
    assert rates[0] == rates[40] == rates[60] == pytest.approx(0.1)  # each round warms up again (timm: lr / warmup)
    assert rates[50] == pytest.approx(1.0) and rates[59] < 0.03 and rates[79] < 0.03
    assert rounds.end_epoch(cfg, 0) == 4 and rounds.end_epoch(cfg, 2) == 8
    assert rounds.create_scheduler(create_optimizer(create_model(cfg, 2), cfg.optim), cfg, steps).state_dict() == {}
    scaled = learning_rates(from_hyperparameters({**cfg.hyperparameters(), "pseudo_lr_scale": 0.25}), steps, 80)
    assert scaled[:40] == rates[:40] and scaled[40:] == pytest.approx([rate * 0.25 for rate in rates[40:]])


def test_round_0_takes_its_first_update_at_the_focal_jobs_warmup_rate():
    """The loop sets the rates of update `step + 1` after update `step`: update 0 runs at the rates the
    scheduler set when built. A pseudo-label job's round 0 once took it at the full `lr` (no warmup)."""
    base = {**FAST_HYPERPARAMETERS, "epochs": 4, "warmup_epochs": 1, "backbone_lr_scale": 0.5}
    first_rates = []
    for cfg in (from_hyperparameters(base), from_hyperparameters({**base, "pseudo_rounds": 2, "pseudo_epochs": 2})):
        optimizer = create_optimizer(create_model(cfg, 2), cfg.optim)
        rounds.create_scheduler(optimizer, cfg, 10)
        first_rates.append([group["lr"] for group in optimizer.param_groups])
    assert first_rates[1] == pytest.approx(first_rates[0])
    assert max(first_rates[0]) == pytest.approx(base["lr"] / 10)  # timm's warmup starts at lr / warmup updates


def test_the_backbone_follows_each_rounds_schedule_at_its_scale():
    cfg = from_hyperparameters(
        {**FAST_HYPERPARAMETERS, "epochs": 2, "pseudo_rounds": 1, "pseudo_epochs": 1, "backbone_lr_scale": 0.25}
    )
    optimizer = create_optimizer(create_model(cfg, 2), cfg.optim)
    scheduler = rounds.create_scheduler(optimizer, cfg, 4)
    for step in (0, 5, 8, 11):
        scheduler.step_update(step)
        head, backbone = optimizer.param_groups[1]["lr"], optimizer.param_groups[3]["lr"]
        assert backbone == pytest.approx(0.25 * head)


# ---- smoothing at prediction time ----


def test_smoothing_averages_neighbours_within_the_recording():
    values = np.array([[0.0, 1.0], [3.0, 1.0], [6.0, 1.0], [9.0, 1.0]], dtype=np.float32)
    assert smooth_windows(values, 1)[:, 0].tolist() == [1.5, 3.0, 6.0, 7.5]
    assert smooth_windows(values, 1)[:, 1].tolist() == [1.0] * 4
    assert smooth_windows(values, 9)[:, 0].tolist() == [4.5] * 4
    assert smooth_windows(values, 0) is values and smooth_windows(values[:1], 2).tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="at least 0"):
        smooth_windows(values, -1)


def test_predict_smooth_keeps_the_row_ids_and_smooths_each_file(tmp_path, capsys):
    cfg = from_hyperparameters({**SMALL, "duration": 1})
    torch.manual_seed(0)
    outputs.write_model_dir(tmp_path / "model", create_model(cfg, len(LABELS)).state_dict(), LABELS, cfg)
    rng = np.random.default_rng(1)
    (tmp_path / "audio").mkdir()
    for name, seconds in (("a.wav", 4.5), ("b.flac", 3)):
        sf.write(tmp_path / "audio" / name, rng.uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32), RATE)
    runs = {}
    for smooth in (0, 2):
        out = tmp_path / f"smooth{smooth}.csv"
        arguments = ["--model", str(tmp_path / "model"), "--audio", str(tmp_path / "audio"), "--out", str(out)]
        assert predict_cli.main([*arguments, "--quiet", "--smooth", str(smooth)]) == 0
        with open(out, newline="") as handle:
            runs[smooth] = list(csv.DictReader(handle))
    capsys.readouterr()
    assert [row["row_id"] for row in runs[2]] == [row["row_id"] for row in runs[0]]
    assert [row["row_id"] for row in runs[0]] == ["a_1", "a_2", "a_3", "a_4", "a_5", "b_1", "b_2", "b_3"]
    raw = np.array([[float(row[label]) for label in LABELS] for row in runs[0]])
    smoothed = np.array([[float(row[label]) for label in LABELS] for row in runs[2]])
    expected = np.concatenate([smooth_windows(raw[:5], 2), smooth_windows(raw[5:], 2)])
    assert np.allclose(smoothed, expected, atol=2e-6)
    with pytest.raises(SystemExit):
        predict_cli.parse_args(["--model", "m", "--audio", "a", "--out", "o", "--smooth", "-1"])


def test_the_pseudo_label_benchmark_reports_its_figures(tmp_path):
    """A smoke test of `code/bench_pseudo.py` (the figures themselves are measured, not asserted)."""
    make_soundscapes(tmp_path / "sc", files=1, seconds=11, sample_rate=32000, labelled=False, seed=5)
    arguments = ["--data", str(tmp_path / "sc"), "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    try:
        figures = soundscape_bench.run(soundscape_bench.parse_args(arguments), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert figures["windows"] == 3 and figures["backbone"] == "test_efficientnet"
    for key in ("pseudo_windows_per_s", "decode_windows_per_s", "model_windows_per_s", "round_s_per_soundscape_hour"):
        assert figures[key] > 0, key
