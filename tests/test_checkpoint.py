import torch

from birdsed.training import checkpoint


def state(step: int) -> dict:
    """The shape of a real checkpoint: model weights and progress, among others."""
    return {"step": step, "model": {"w": torch.full((2,), float(step))}, "progress": {"step": step}}


def test_keeps_the_newest_checkpoints_and_loads_the_latest(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save_checkpoint(tmp_path, state(step), step, keep=3)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "checkpoint-00000010.pt",
        "checkpoint-00000015.pt",
        "checkpoint-00000020.pt",
    ]
    assert checkpoint.load_latest_checkpoint(tmp_path)["step"] == 20
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    checkpoint.save_checkpoint(tmp_path, state(1), 1, keep=3)
    checkpoint.save_checkpoint(tmp_path, state(2), 2, keep=3)
    newest = tmp_path / checkpoint.checkpoint_name(2)
    newest.write_bytes(newest.read_bytes()[:20])  # truncated, as by a kill mid-copy
    assert checkpoint.load_latest_checkpoint(tmp_path)["step"] == 1
    assert "unreadable" in caplog.text


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest_checkpoint(tmp_path / "missing") is None


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"step": 3, "evil": Payload()}, tmp_path / checkpoint.checkpoint_name(3))
    assert checkpoint.load_latest_checkpoint(tmp_path) is None


def test_pruning_keeps_only_checkpoints_that_load_and_moves_the_others_aside(tmp_path, caplog):
    """An unreadable checkpoint with a higher step, and keep=1: each new checkpoint used to be deleted at once."""
    (tmp_path / checkpoint.checkpoint_name(300)).write_bytes(b"PK\x03\x04 truncated by an interrupted copy")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / checkpoint.checkpoint_name(200))  # another program's
    checkpoint.save_checkpoint(tmp_path, state(10), 10, keep=1)
    checkpoint.save_checkpoint(tmp_path, state(20), 20, keep=1)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [checkpoint.checkpoint_name(20)]
    assert sorted(p.name for p in tmp_path.glob("*.unreadable")) == [
        "checkpoint-00000200.pt.unreadable",
        "checkpoint-00000300.pt.unreadable",
    ]
    assert "checkpoint-00000300.pt is unreadable" in caplog.text
    assert "checkpoint-00000200.pt is not a birdsed checkpoint (no model and progress" in caplog.text
    assert checkpoint.load_latest_checkpoint(tmp_path)["step"] == 20


def test_a_foreign_newest_file_is_passed_over_on_resume(tmp_path, caplog):
    checkpoint.save_checkpoint(tmp_path, state(1), 1, keep=3)
    torch.save([1, 2, 3], tmp_path / checkpoint.checkpoint_name(9))
    assert checkpoint.load_latest_checkpoint(tmp_path)["step"] == 1
    assert (tmp_path / "checkpoint-00000009.pt.unreadable").exists()
    assert "not a birdsed checkpoint" in caplog.text
