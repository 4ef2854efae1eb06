"""A Python environment that holds only what the GPU machine has, to try tests/gpu_check.py without it.

    .venv/bin/python tests/gpu_check_mimic.py /tmp/mimic
    /tmp/mimic/bin/python -I tests/gpu_check.py --device cpu --wheels WHEELS_FOR_THIS_PYTHON

Makes a venv without system site-packages in which the packages the GPU machine has preinstalled (torch,
torchaudio, timm, numpy, pandas, scikit-learn, scipy, tensorboard, matplotlib, tqdm, psutil, safetensors,
pip) and their dependencies are links into this environment's site-packages, and nothing else: no
soundfile, no toolkit, no boto3, no SageMaker SDK, no pytest. The wheels must be for this Python's
version (the download commands of docs/gpu-check.md with `--python-version` changed).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

PREINSTALLED = (
    *("torch", "torchaudio", "timm", "numpy", "pandas", "scikit-learn", "scipy", "tensorboard"),
    *("matplotlib", "tqdm", "psutil", "safetensors", "pip"),
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions `roots` need, with their dependencies (no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = normalise(pending.pop())
        if name in found:
            continue
        try:
            found[name] = distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            print(f"not installed here, left out: {name}")
            continue
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def main(target: Path) -> int:
    distributions = closure(PREINSTALLED)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = next(target.glob("lib/python3.*/site-packages"))
    source = Path(importlib.metadata.distribution("torch").locate_file(""))
    linked: set[str] = set()
    for distribution in distributions.values():
        for file in distribution.files or []:
            top = file.parts[0]
            if top not in linked and top not in ("..", "__pycache__") and (source / top).exists():
                (site / top).symlink_to(source / top)
                linked.add(top)
    print(f"{target}: {len(distributions)} distributions: {' '.join(sorted(distributions))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
