import torch

from birdsed.training import checkpoint


def test_keeps_the_newest_checkpoints_and_loads_the_latest(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save_checkpoint(tmp_path, {"step": step, "w": torch.full((2,), float(step))}, step, keep=3)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "checkpoint-00000010.pt",
        "checkpoint-00000015.pt",
        "checkpoint-00000020.pt",
    ]
    assert checkpoint.load_latest_checkpoint(tmp_path)["step"] == 20
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    checkpoint.save_checkpoint(tmp_path, {"step": 1}, 1, keep=3)
    checkpoint.save_checkpoint(tmp_path, {"step": 2}, 2, keep=3)
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
