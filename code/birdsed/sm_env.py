"""The SageMaker training contract: where inputs, outputs and hyperparameters are.

Mirrors the sagemaker-training toolkit (`environment.py`): `/opt/ml` is the base, moved by
`SAGEMAKER_BASE_DIR`; `SM_*` variables, when the toolkit set them, take precedence. Nothing is
read at import time: `from_environ` builds the object from the mapping it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from birdsed import atomic
from birdsed.errors import ConfigError

DEFAULT_BASE_DIR = "/opt/ml"
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
FAILURE_FILE = "failure"
DEFAULT_MASTER_PORT = 29500
# The input channels a job reads (any other channel is ignored): the launcher, the local runners and
# the job all take the list from here.
CHANNELS = ("train", "validation", "pretrained", "noise", "soundscape_validation", "soundscapes")
# huggingface_hub's defaults for the variables it honours (its `constants`, read there at import).
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
DEFAULT_HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProcessGroupEnv:
    """This process's place among the training processes, as torchrun describes it (RANK, WORLD_SIZE, ...)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # training processes on this host
    under_torchrun: bool = False  # torchrun (ours or the SDK's) started this process
    master_port: int = DEFAULT_MASTER_PORT


@dataclass(frozen=True)
class HubSettings:
    """The Hugging Face Hub as huggingface_hub's own variables describe it (HF_ENDPOINT, HF_HUB_OFFLINE, ...).

    Read here, from the mapping given, so that code and tests pass them explicitly; HF_TOKEN is left
    to huggingface_hub, which reads it itself for every request (and never logs it).
    """

    endpoint: str = DEFAULT_HUB_ENDPOINT
    offline: bool = False
    timeout: float = DEFAULT_HUB_TIMEOUT  # seconds per metadata request (HF_HUB_ETAG_TIMEOUT)
    cache_dir: Path | None = None  # huggingface_hub's cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)


@dataclass(frozen=True)
class SageMakerEnv:
    """Paths and settings of one training process."""

    base_dir: Path
    channels: dict[str, Path]
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    hyperparameters: dict[str, object] = field(default_factory=dict)
    hosts: tuple[str, ...] = ("localhost",)
    current_host: str = "localhost"
    num_gpus: int = 0
    network_interface: str | None = None  # e.g. eth0: the interface between the job's hosts
    process: ProcessGroupEnv = field(default_factory=ProcessGroupEnv)
    hub: HubSettings = field(default_factory=HubSettings)

    def channel(self, name: str) -> Path | None:
        """The directory of an input channel, or None when the job has no such channel."""
        return self.channels.get(name)


def output_dir_from(environ: Mapping[str, str]) -> Path:
    """Where the failure file goes; cannot fail, so a bad environment can still be reported."""
    base_dir = Path(environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR))
    return Path(environ.get("SM_OUTPUT_DIR", base_dir / "output"))


def from_environ(environ: Mapping[str, str], argv: Sequence[str] = ()) -> SageMakerEnv:
    """Build the environment from `SM_*` variables (when present) and the `/opt/ml` layout.

    `argv` holds `--key value` pairs as the toolkit passes hyperparameters; they override `SM_HPS`
    so that `python code/train.py --epochs 3` works with or without the toolkit.
    """
    base_dir = Path(environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR))
    output_dir = output_dir_from(environ)
    hyperparameters = _hyperparameters_from_env(environ)
    hyperparameters.update(parse_cli_hyperparameters(argv))
    hosts = tuple(json.loads(environ["SM_HOSTS"])) if "SM_HOSTS" in environ else ("localhost",)
    return SageMakerEnv(
        base_dir=base_dir,
        channels=_channels(environ, base_dir),
        model_dir=Path(environ.get("SM_MODEL_DIR", base_dir / "model")),
        output_dir=output_dir,
        output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR", output_dir / "data")),
        checkpoint_dir=base_dir / "checkpoints",
        hyperparameters=hyperparameters,
        hosts=hosts,
        current_host=environ.get("SM_CURRENT_HOST", hosts[0]),
        num_gpus=int(environ.get("SM_NUM_GPUS", "0") or 0),
        network_interface=environ.get("SM_NETWORK_INTERFACE_NAME") or None,
        process=_process_group(environ),
        hub=hub_settings(environ),
    )


def hub_settings(environ: Mapping[str, str]) -> HubSettings:
    """huggingface_hub's settings from `environ`, with its defaults and its rules for the cache folder."""
    try:
        timeout = float(environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_HUB_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_HUB_TIMEOUT
    home = environ.get("HF_HOME") or str(Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return HubSettings(
        endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT).rstrip("/"),
        offline=str(environ.get("HF_HUB_OFFLINE", "")).strip().upper() in {"1", "ON", "YES", "TRUE"},
        timeout=timeout if timeout > 0 else DEFAULT_HUB_TIMEOUT,
        cache_dir=Path(environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser(),
    )


def _process_group(environ: Mapping[str, str]) -> ProcessGroupEnv:
    return ProcessGroupEnv(
        rank=int(environ.get("RANK", "0")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", "1")),
        under_torchrun="TORCHELASTIC_RUN_ID" in environ or "LOCAL_RANK" in environ,
        master_port=int(environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)),
    )


def _channels(environ: Mapping[str, str], base_dir: Path) -> dict[str, Path]:
    """Channels named by `SM_CHANNEL_<NAME>`, else the folders under `input/data`."""
    channels = {
        key[len("SM_CHANNEL_") :].lower(): Path(value)
        for key, value in environ.items()
        if key.startswith("SM_CHANNEL_")
    }
    if channels:
        return channels
    data_dir = base_dir / "input" / "data"
    if not data_dir.is_dir():
        return {}
    return {child.name: child for child in sorted(data_dir.iterdir()) if child.is_dir()}


def _hyperparameters_from_env(environ: Mapping[str, str]) -> dict[str, object]:
    raw = environ.get("SM_HPS")
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"SM_HPS is not valid JSON ({error}); it should be set by SageMaker.") from None
    return {key: value for key, value in decoded.items() if not key.startswith("sagemaker_")}


def parse_cli_hyperparameters(argv: Sequence[str]) -> dict[str, str]:
    """Parse `--key value` and `--key=value` pairs, as the toolkit writes hyperparameters."""
    parsed: dict[str, str] = {}
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if not item.startswith("--") or len(item) == 2:
            raise ConfigError(f"Unexpected command-line argument '{item}': pass hyperparameters as --name value.")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if index + 1 >= len(items):
                raise ConfigError(f"Hyperparameter '--{key}' has no value: pass it as --{key} VALUE.")
            index += 1
            value = items[index]
        parsed[key.replace("-", "_")] = value
        index += 1
    return {key: value for key, value in parsed.items() if not key.startswith("sagemaker_")}


def write_failure(output_dir: Path, reason: str, replace: bool = False) -> None:
    """Write the failure reason SageMaker shows for the job, keeping an earlier one unless `replace`.

    The toolkit writes `output/failure` only when it does not exist yet; we follow the same rule
    so that the first, most specific reason wins. `replace` is for a cause found later that
    explains the earlier reports (a process killed for memory, after the others stopped with errors).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    failure_file = output_dir / FAILURE_FILE
    if failure_file.exists() and not replace:
        return
    atomic.write_text(failure_file, reason.strip() + "\n")
