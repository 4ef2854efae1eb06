"""Benchmarks of reading and predicting; prints key=value lines.

    python code/bench_inference.py memory [--backbone efficientnet_b0] [--workdir DIR]

`memory`: peak memory of a job's crop reads at six odd sample rates, and of predict and prepare on
one hour of 48 kHz stereo audio (limit 1.5 GB each). See docs/performance-inference.md.
"""

import sys

from birdsed.bench_inference import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
