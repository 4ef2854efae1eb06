"""Decode and resample every recording once into a waveform cache that training reads by memory map.

The command-line script (see `python code/prepare.py --help`); the code is `birdsed.commands.prepare`.
"""

import sys

from birdsed.commands.prepare import main

if __name__ == "__main__":
    sys.exit(main())
