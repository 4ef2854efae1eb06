"""Install the pinned requirements into the image without replacing the base image's torch.

Runs inside `docker build` with the base image's Python (standard library only):

    python install_requirements.py wheels  --requirements R --constraints C --wheel-dir DIR
    python install_requirements.py install --requirements R --constraints C --find-links DIR

`wheels` (builder stage, which has a compiler) builds a wheel for every requirement that PyPI
ships only as source, e.g. the sagemaker-training toolkit. `install` (final stage, no compiler)
installs binary wheels only, taking those from DIR.

The base image's torch stack (torch, torchaudio, torchvision, triton, nvidia-*) is pinned to
exactly what the base has, as an extra constraints file; pip's plan is checked before anything is
installed and the versions are checked again after: the build fails rather than replace them.
Why the care: timm wants torchvision, whose latest release wants a newer torch; one loose pin and
pip would silently swap the base's CUDA build of torch for another multi-gigabyte one.

Behind a TLS-inspecting proxy, pass its CA certificates as the BuildKit secret `extra_ca`: they
are appended to a copy of pip's bundle in a temporary folder for the duration of this command
and never written to an image layer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXTRA_CA_SECRET = Path("/run/secrets/extra_ca")
TORCH_STACK = ("torch", "torchaudio", "torchvision", "triton")


def log(message: str) -> None:
    print(f"install_requirements: {message}", flush=True)


def fail(message: str) -> None:
    print(f"install_requirements: ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """`2.9.1+cu128` -> `2.9.1`: the CUDA build tag is not part of the release."""
    return version.split("+", 1)[0]


def is_torch_stack(name: str) -> bool:
    name = canonical(name)
    return name in TORCH_STACK or name.startswith("nvidia-")


def installed() -> dict[str, str]:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonical(item["name"]): item["version"] for item in json.loads(listing)}


def requirement_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file (the others are left to pip)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def pip_environment(workdir: Path) -> dict[str, str]:
    """pip's environment; with the `extra_ca` secret, a CA bundle that trusts the proxy."""
    environment = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if EXTRA_CA_SECRET.is_file() and EXTRA_CA_SECRET.stat().st_size > 0:
        from pip._vendor import certifi  # pip's own bundle: present wherever pip is

        bundle = workdir / "ca-bundle.pem"
        parts = [Path(certifi.where()).read_text(encoding="utf-8")]
        system_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if system_bundle.is_file():
            parts.append(system_bundle.read_text(encoding="utf-8"))
        parts.append(EXTRA_CA_SECRET.read_text(encoding="utf-8"))
        bundle.write_text("\n".join(parts), encoding="utf-8")
        for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            environment[variable] = str(bundle)
        log("trusting the extra CA certificates from the build secret 'extra_ca' (not kept in the image)")
    return environment


def check_base_torch(base: dict[str, str], pins: dict[str, str]) -> None:
    """The base's torch stack must be the release that requirements.txt pins."""
    if "torch" not in base:
        log("the base image has no torch: requirements.txt's torch will be installed")
        return
    for name in ("torch", "torchaudio", "torchvision"):
        if name in base and name in pins and public_version(base[name]) != pins[name]:
            fail(
                f"the base image has {name} {base[name]} but requirements.txt pins {name}=={pins[name]}. "
                "The image keeps the base's torch (it is built for the base's CUDA): use a base image "
                f"with {name} {pins[name]} (--build-arg BASE_IMAGE=...) or change the pins in requirements.txt."
            )
    log("base image torch stack: " + ", ".join(f"{name}=={version}" for name, version in sorted(base.items())))


def write_base_constraints(base: dict[str, str], workdir: Path) -> Path:
    path = workdir / "base-torch-stack.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(base.items())), encoding="utf-8")
    return path


def plan(pip_args: list[str], environment: dict[str, str], workdir: Path) -> list[dict]:
    """What `pip install` would install (pip's --dry-run --report), without installing anything."""
    report = workdir / "plan.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *pip_args]
    subprocess.run(command, check=True, env=environment)
    return json.loads(report.read_text(encoding="utf-8"))["install"]


def describe(item: dict) -> str:
    return f"{item['metadata']['name']}=={item['metadata']['version']}"


def build_wheels(args: argparse.Namespace, pip_args: list[str], environment: dict[str, str], workdir: Path) -> None:
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    sources = [
        item for item in plan(pip_args, environment, workdir) if not item["download_info"]["url"].endswith(".whl")
    ]
    if not sources:
        log("every requirement has a binary wheel: nothing to build")
        return
    names = [describe(item) for item in sources]
    log("building wheels for the source-only requirements: " + " ".join(names))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(args.wheel_dir), *names]
    subprocess.run(command, check=True, env=environment)


def install(
    args: argparse.Namespace, pip_args: list[str], environment: dict[str, str], workdir: Path, before: dict[str, str]
) -> None:
    pip_args = [*pip_args, "--only-binary=:all:", "--find-links", str(args.find_links)]
    planned = plan(pip_args, environment, workdir)
    replaced = [describe(item) for item in planned if is_torch_stack(item["metadata"]["name"])]
    if replaced and before:
        fail("pip would replace the base image's torch stack with " + " ".join(replaced) + "; refusing.")
    log("installing " + " ".join(describe(item) for item in planned))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *pip_args], check=True, env=environment)
    after = {name: version for name, version in installed().items() if is_torch_stack(name)}
    changed = {name: (before.get(name), after.get(name)) for name in before if before.get(name) != after.get(name)}
    if changed:
        fail(f"the base image's torch stack changed during the install: {changed}")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=environment)
    if check.returncode != 0:
        # Reported, not fatal: a base image may carry packages of its own with loose ends.
        log("pip check reports (not fatal):\n" + check.stdout + check.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("wheels", "install"))
    parser.add_argument("--requirements", type=Path, required=True)
    parser.add_argument("--constraints", type=Path, required=True)
    parser.add_argument("--wheel-dir", type=Path, help="wheels: where to put the built wheels")
    parser.add_argument("--find-links", type=Path, help="install: the wheels built by the 'wheels' step")
    args = parser.parse_args(argv)
    if args.mode == "wheels" and not args.wheel_dir:
        parser.error("wheels needs --wheel-dir")
    if args.mode == "install" and not args.find_links:
        parser.error("install needs --find-links")

    workdir = Path(tempfile.mkdtemp(prefix="install-requirements-"))
    try:
        base = {name: version for name, version in installed().items() if is_torch_stack(name)}
        check_base_torch(base, requirement_pins(args.requirements))
        pip_args = ["-r", str(args.requirements), "-c", str(args.constraints)]
        if base:
            pip_args += ["-c", str(write_base_constraints(base, workdir))]
        environment = pip_environment(workdir)
        if args.mode == "wheels":
            build_wheels(args, pip_args, environment, workdir)
        else:
            install(args, pip_args, environment, workdir, before=base)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
