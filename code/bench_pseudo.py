"""Benchmark a pseudo-label round's prediction pass over soundscapes; prints key=value lines.

    python code/bench_pseudo.py [--data DIR] [--minutes 20] [--device cpu|cuda] [--backbone NAME] [--batch-size 32]

Without --data it generates 32 kHz OGG soundscapes. `pseudo_windows_per_s` x 5 s is the audio a round
predicts per second; see docs/soundscapes.md for figures.
"""

import sys

from birdsed.soundscape_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
