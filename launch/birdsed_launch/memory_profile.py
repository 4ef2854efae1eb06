"""Measure whether memory stays flat over a long CPU training run (issue: never lose a run).

Runs a job through the real toolkit on a generated dataset with DataLoader workers and reads the
per-epoch `memory epoch=N rss_mb=... workers_rss_mb=... peak_rss_mb=...` log lines.

    python launch/memory_profile.py [--epochs 40] [--workdir /tmp/birdsed-memory]

Prints key=value lines: the first and last epochs' resident memory (main process, workers), the
growth between the second and the last epoch (the first includes one-off allocations), and the peak.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from birdsed.config import TINY_HYPERPARAMETERS
from birdsed.data.synthetic import make_dataset
from birdsed_launch import local_job

MEMORY_LINE = re.compile(r"memory epoch=(\d+) rss_mb=(\d+) workers_rss_mb=(\d+) peak_rss_mb=(\d+) workers_uss_mb=(\d+)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/birdsed-memory"))
    args = parser.parse_args(argv)
    data = args.workdir / "data"
    if not (data / "train_metadata.csv").is_file():
        make_dataset(data, species=6, recordings_per_species=10, seconds=(3.0, 8.0), seed=3)
    base = args.workdir / "opt_ml"
    hyperparameters = {**TINY_HYPERPARAMETERS, "num_workers": 2, "epochs": args.epochs}
    local_job.layout(base, {"train": data}, hyperparameters, fresh=True)
    completed = local_job.run_toolkit(base, capture_output=True, text=True)
    rows = [tuple(map(int, match.groups())) for match in MEMORY_LINE.finditer(completed.stdout)]
    if completed.returncode != 0 or len(rows) < 2:
        print(completed.stdout[-3000:], file=sys.stderr)
        return 1
    second, last = rows[1], rows[-1]
    print(f"epochs={len(rows)}")
    print(f"rss_mb_epoch_1={rows[0][1]} rss_mb_epoch_2={second[1]} rss_mb_last={last[1]}")
    print(f"workers_rss_mb_epoch_2={second[2]} workers_rss_mb_last={last[2]}")
    print(f"workers_uss_mb_epoch_2={second[4]} workers_uss_mb_last={last[4]}")
    print(f"rss_growth_mb={last[1] - second[1]} workers_rss_growth_mb={last[2] - second[2]}")
    print(f"workers_uss_growth_mb={last[4] - second[4]}")
    print(f"peak_rss_mb={max(row[3] for row in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
