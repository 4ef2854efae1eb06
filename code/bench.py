"""Benchmark the input pipeline against the seed's per-item CPU work; prints key=value lines.

    python code/bench.py [--data DIR] [--device cpu|cuda] [--backbone NAME] [--batch-size 32] [--steps N]

Without --data it generates its own corpus (8 species x 8 recordings of 10-30 s, OGG and MP3 at
44.1/48 kHz). See docs/performance.md for the figures and what each key means.
"""

import sys

from birdsed.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
