"""Decode and resample every recording once into a waveform cache that training reads by memory map.

    python code/prepare.py --input DATA --output CACHE [--sample-rate 32000] [--workers N]

DATA is a BirdCLEF-style folder (train_metadata.csv + train_audio/). Rerunning with the same --output
resumes: finished recordings are skipped, unreadable ones are tried again. Upload CACHE as the job's
`train` channel (e.g. `aws s3 sync CACHE s3://bucket/prefix`); see docs/data.md, "Preparing a waveform cache".
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdsed.data.cache import prepare_cache
from birdsed.data.loaders import resolve_num_workers
from birdsed.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="dataset folder with train_metadata.csv")
    parser.add_argument("--output", type=Path, required=True, help="cache folder (created; resumed if present)")
    parser.add_argument("--sample-rate", type=int, default=32000, help="Hz; must equal the job's sample_rate")
    parser.add_argument("--workers", type=int, default=-1, help="decoding processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare_cache(args.input, args.output, args.sample_rate, resolve_num_workers(args.workers))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a folder that became unwritable, ...: one line, no traceback
        print(f"error: cannot write the cache in {args.output}: {error}", file=sys.stderr)
        return 1
    for name, reason in report.unreadable.items():
        print(f"unreadable: {name}: {reason}")
    index = report.index
    print(
        f"cache={args.output} sample_rate={index.sample_rate} recordings={len(index.files)} "
        f"converted={report.converted} skipped={report.skipped} unreadable={len(report.unreadable)}"
    )
    clipped = {name: entry["clipped"] for name, entry in index.files.items() if entry.get("clipped")}
    if clipped:
        # The rule of training and predict: samples beyond full scale are clipped, and said once with a count.
        print(
            f"clipped: {sum(clipped.values())} samples beyond full scale clipped to [-1, 1] in {len(clipped)} "
            f"recordings (per file in {args.output / 'cache.json'})"
        )
    if not index.files:
        print(f"error: none of the recordings in {args.input} could be read (see above)", file=sys.stderr)
        return 1
    return 0
