"""The benchmark runs end to end on a tiny dataset and reports every figure (a smoke test, not a timed one)."""

import torch

from birdsed import bench
from birdsed.data.synthetic import make_dataset

KEYS = {
    "prepare_s",
    "pipeline_samples_per_s",
    "baseline_samples_per_s",
    "pipeline_speedup",
    "aug_ms_per_batch",
    "model_only_samples_per_s",
    "step_samples_per_s",
    "step_efficiency",
    "model_only_contiguous_samples_per_s",
    "channels_last_speedup",
}


def test_the_benchmark_reports_every_figure(tmp_path):
    data = make_dataset(tmp_path / "data", species=2, recordings_per_species=2, seconds=(5.5, 7.0), seed=2)
    settings = bench.Settings(
        data=data,
        workdir=tmp_path / "work",
        device=torch.device("cpu"),
        backbone="test_efficientnet",
        batch_size=4,
        steps=2,
        workers=0,
        pipeline_batches=2,
        baseline_samples=4,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend (36 s instead of 3 s on a busy 2-core machine)
    try:
        figures = dict(bench.run_benchmark(settings))
    finally:
        torch.set_num_threads(threads)
    assert KEYS <= set(figures) and figures["device"] == "cpu" and "say nothing about a GPU" in figures["note"]
    assert all(float(figures[key]) > 0 for key in KEYS - {"prepare_s"})
