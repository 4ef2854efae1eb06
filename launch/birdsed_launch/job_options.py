"""The launcher's options: one typed record built from defaults, a config file, the environment and flags.

Later sources win: defaults < `--config FILE` < environment (`BIRDSED_ROLE`) < command-line flags;
`--hp` entries are merged over the file's `hyperparameters`. Every value, from the file or a flag,
goes through the same converter, so both fail with the same message. Nothing here talks to AWS.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import birdsed
from birdsed import config as training_config
from birdsed.parsing import parse_bool, split_key_value
from birdsed.sm_env import CHANNELS
from birdsed_launch.checks import UsageError

ROLE_ENV = "BIRDSED_ROLE"
INPUT_MODES = ("File", "FastFile")


@dataclass(frozen=True)
class JobOptions:
    """Everything one training job needs; see `submit.py --help` for the meaning of each."""

    train: str | None = None
    validation: str | None = None
    pretrained: str | None = None
    noise: str | None = None
    soundscape_validation: str | None = None
    soundscapes: str | None = None
    instance: str = "ml.g5.xlarge"
    instance_count: int = 1
    nproc_per_node: int | None = None  # training processes per instance; default: one per GPU
    image_uri: str | None = None
    role: str | None = None
    input_mode: str = "File"
    hyperparameters: dict[str, str] = field(default_factory=dict)
    spot: bool = True
    max_run: int = 24 * 3600
    max_wait: int | None = None
    volume_size: int = 50
    output_path: str | None = None
    checkpoint_s3_uri: str | None = None
    tensorboard_s3_uri: str | None = None
    job_name: str = "birdsed"
    tags: dict[str, str] = field(default_factory=dict)
    network_isolation: bool = False
    wait: bool = False
    dry_run: bool = False
    local: bool = False
    region: str | None = None
    profile: str | None = None

    def channels(self) -> dict[str, str]:
        """The data channels given, by the names the container reads."""
        return {name: getattr(self, name) for name in CHANNELS if getattr(self, name)}

    @property
    def spot_max_wait(self) -> int:
        """Managed spot needs MaxWaitTimeInSeconds >= MaxRuntimeInSeconds; default: twice the run time."""
        return self.max_wait if self.max_wait is not None else 2 * self.max_run


OPTION_NAMES = tuple(item.name for item in dataclasses.fields(JobOptions))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- converters: raw value (a flag's string or a config file's JSON value) -> typed value -------------


def _text(name: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise UsageError(f"{flag(name)} must be a non-empty string, got {raw!r}")
    return raw.strip()


def _boolean(name: str, raw: object) -> bool:
    value = parse_bool(raw)
    if value is None:
        raise UsageError(f"{flag(name)} must be true or false, got {raw!r}")
    return value


def _positive_int(name: str, raw: object) -> int:
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or value < 1:
        raise UsageError(f"{flag(name)} must be a positive integer, got {raw!r}")
    return value


DURATION = re.compile(r"(?P<number>\d+)\s*(?P<unit>[smhd]?)")
SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(name: str, raw: object) -> int:
    """Seconds, from `3600`, `90m`, `12h` or `2d`."""
    match = DURATION.fullmatch(str(raw).strip().lower()) if not isinstance(raw, bool) else None
    if not match or int(match["number"]) < 1:
        raise UsageError(f"{flag(name)} must be a duration such as 3600, 90m, 12h or 2d, got {raw!r}")
    return int(match["number"]) * SECONDS_PER[match["unit"]]


def _input_mode(name: str, raw: object) -> str:
    for mode in INPUT_MODES:
        if str(raw).strip().lower() == mode.lower():
            return mode
    raise UsageError(f"{flag(name)} must be one of {', '.join(INPUT_MODES)}, got {raw!r}")


def _tags(name: str, raw: object) -> dict[str, str]:
    """A mapping (config file) or `key=value` items, each possibly `k1=v1,k2=v2` (flags)."""
    if isinstance(raw, Mapping):
        return {str(key): str(value) for key, value in raw.items()}
    items = [raw] if isinstance(raw, str) else list(raw)
    return dict(_key_value(name, part) for item in items for part in str(item).split(",") if part.strip())


def _hyperparameters(name: str, raw: object) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(key): hyperparameter_string(key, value) for key, value in raw.items()}
    return dict(_key_value("hp", item) for item in raw)


def _key_value(name: str, item: str) -> tuple[str, str]:
    pair = split_key_value(item)
    if pair is None:
        raise UsageError(f"{flag(name)} expects key=value, got {item!r}")
    return pair


def hyperparameter_string(name: object, value: object) -> str:
    """SageMaker takes strings; JSON spelling keeps `true`, `30` and `0.001` what the toolkit decodes."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise UsageError(f"hyperparameter '{name}' must be a string, number or boolean, got {value!r}")


CONVERTERS: dict[str, Callable[[str, object], object]] = {
    **{name: _text for name in OPTION_NAMES},
    **{name: _boolean for name in ("spot", "network_isolation", "wait", "dry_run", "local")},
    **{name: _positive_int for name in ("instance_count", "nproc_per_node", "volume_size")},
    **{name: _duration for name in ("max_run", "max_wait")},
    "input_mode": _input_mode,
    "tags": _tags,
    "hyperparameters": _hyperparameters,
}


# --- sources -------------------------------------------------------------------------------------------


def load_config_file(path: str) -> dict[str, object]:
    """Read `--config FILE`: a JSON (or, by extension, YAML) mapping of option names and `hyperparameters`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror}") from None
    data = _parse_config(text, file.suffix.lower(), path)
    if not isinstance(data, Mapping):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    return _normalise_keys(data, f"--config {path}")


def _parse_config(text: str, suffix: str, path: str) -> object:
    if suffix in {".yaml", ".yml"}:
        import yaml  # PyYAML, pinned in launch/requirements.txt; only YAML config files need it

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UsageError(f"--config {path}: not valid YAML: {' '.join(str(error).split())}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--config {path}: not valid JSON: {error}") from None


def _normalise_keys(data: Mapping[str, object], source: str) -> dict[str, object]:
    values = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        name = {"hp": "hyperparameters", "instance_type": "instance"}.get(name, name)
        if name not in CONVERTERS:
            close = difflib.get_close_matches(name, CONVERTERS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(CONVERTERS))}"
            raise UsageError(f"{source}: unknown option '{key}' ({hint})")
        if value is not None:
            values[name] = value
    return values


def resolve_options(
    flags: Mapping[str, object], file_values: Mapping[str, object], environ: Mapping[str, str]
) -> JobOptions:
    """Merge the sources (later wins) and convert every value to its type."""
    env_values = {"role": environ[ROLE_ENV]} if environ.get(ROLE_ENV) else {}
    merged = {**file_values, **env_values, **{k: v for k, v in flags.items() if k != "hyperparameters"}}
    converted = {name: CONVERTERS[name](name, value) for name, value in merged.items()}
    hyperparameters = {
        **CONVERTERS["hyperparameters"]("hyperparameters", file_values.get("hyperparameters", {})),
        **CONVERTERS["hyperparameters"]("hyperparameters", flags.get("hyperparameters", [])),
    }
    if "nproc_per_node" in converted:
        # The container starts torchrun itself (code/birdsed/torchrun.py); this is its only setting.
        hyperparameters["nproc_per_node"] = str(converted["nproc_per_node"])
    return JobOptions(**{**converted, "hyperparameters": hyperparameters})


# --- the training code's own rules ---------------------------------------------------------------------


def check_hyperparameters(hyperparameters: Mapping[str, str]) -> None:
    try:
        training_config.from_hyperparameters(hyperparameters)
    except training_config.ConfigError as error:
        raise UsageError(str(error)) from None


def backbone(hyperparameters: Mapping[str, str]) -> str:
    """The job's backbone: the hyperparameter, else the training code's default."""
    return training_config.from_hyperparameters(hyperparameters).model.backbone


def pretrained_policy(hyperparameters: Mapping[str, str]) -> str:
    """The job's `pretrained` hyperparameter: auto, true or false."""
    return training_config.from_hyperparameters(hyperparameters).model.pretrained


def replace_pretrained(options: JobOptions, source: str) -> JobOptions:
    return dataclasses.replace(options, pretrained=source)


def project_version() -> str:
    """The image tag the build scripts push: `birdsed.__version__`."""
    return birdsed.__version__
