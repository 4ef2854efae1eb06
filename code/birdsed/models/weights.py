"""Where the backbone's starting weights come from: the `pretrained` channel, the Hugging Face Hub, or nowhere.

`pretrained=auto` (the default) tries, in order: a weights file in the `pretrained` channel; the
Hub (timm's repository of the backbone), the file kept in the checkpoint directory by an earlier
start of this job first; huggingface_hub's own cache when the Hub does not answer; then random
initialisation, with a warning that says how to get weights. `pretrained=true` fails in one line
where `auto` would start from random weights; `pretrained=false` looks nowhere. The job logs one
line, `weights=channel:<file>`, `weights=hub:<repo id>@<commit>` or `weights=random`, and records it.

The Hub's file is downloaded into `<checkpoint dir>/hub-weights/<repo id>/<commit>/`: SageMaker
uploads that folder with the checkpoints (once: the file does not change) and copies it back when
a spot job restarts, so a restart neither depends on the Hub nor changes the weights it starts from.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import birdsed.models.weights_file as weights_file
from birdsed import hub
from birdsed.config import ModelConfig
from birdsed.errors import DataError
from birdsed.models.backbone import find_pretrained_weights
from birdsed.sm_env import HubSettings

logger = logging.getLogger(__name__)

# Under the checkpoint directory: the Hub's file, kept for restarts of the same job.
HUB_WEIGHTS_DIR = "hub-weights"


@dataclass(frozen=True)
class PretrainedWeights:
    """The backbone's starting weights: a local file and where it came from, or none (random init)."""

    source: Literal["channel", "hub", "random"]
    path: Path | None = None
    name: str = ""  # channel: the file within the channel; hub: <repo id>@<commit>

    @property
    def summary(self) -> str:
        """What the log line and config.json/metrics.json say: channel:<file>, hub:<repo id>@<commit>, random."""
        return f"{self.source}:{self.name}" if self.name else self.source


RANDOM = PretrainedWeights("random")


def resolve_weights(
    cfg: ModelConfig, channel_dir: Path | None, settings: HubSettings, checkpoint_dir: Path
) -> PretrainedWeights:
    """Apply the `pretrained` policy (see the module's docstring); logs the `weights=` line."""
    weights = _resolve(cfg, channel_dir, settings, checkpoint_dir)
    logger.info("weights=%s", weights.summary)
    return weights


def _resolve(
    cfg: ModelConfig, channel_dir: Path | None, settings: HubSettings, checkpoint_dir: Path
) -> PretrainedWeights:
    if cfg.pretrained == "false":
        return RANDOM
    path = find_pretrained_weights(channel_dir, cfg.backbone)
    if path is not None:
        weights_file.read_shapes(path, cfg.backbone)  # a junk file fails here, before the data is probed
        return PretrainedWeights("channel", path, str(path.relative_to(channel_dir)))
    try:
        return from_hub(cfg.backbone, settings, checkpoint_dir / HUB_WEIGHTS_DIR)
    except hub.HubUnavailable as error:
        reason = str(error)
    channel = "holds no weights file" if channel_dir is not None and channel_dir.is_dir() else "is not given"
    if cfg.pretrained == "true":
        raise DataError(
            f"pretrained=true but no weights were found for backbone '{cfg.backbone}': the 'pretrained' channel "
            f"{channel}, and the Hugging Face Hub ({settings.endpoint}) {reason}. Add the channel (launch/submit.py "
            "--pretrained hub puts the Hub's weights in S3 and passes them; a job with --network-isolation needs it), "
            "let the job reach the Hub, or set pretrained=auto or false."
        )
    logger.warning(
        "No pretrained weights for backbone %s: the 'pretrained' channel %s, and the Hugging Face Hub (%s) %s. "
        "The backbone starts from RANDOM initialisation, which trains far worse than pretrained weights. To get "
        "them: launch/submit.py --pretrained hub (stages the Hub's weights in S3; works with --network-isolation), "
        "or --pretrained s3://.../model.safetensors, or let the job reach the Hub.",
        cfg.backbone,
        channel,
        settings.endpoint,
        reason,
    )
    return RANDOM


def from_hub(backbone: str, settings: HubSettings, keep_dir: Path) -> PretrainedWeights:
    """The Hub's weights of `backbone`: kept from an earlier start, else downloaded, else from huggingface_hub's cache.

    Raises `hub.HubUnavailable` saying why there are none.
    """
    repo = hub.hub_repo(backbone)
    if repo is None:
        raise hub.HubUnavailable(f"is not asked: timm knows no Hugging Face weights for '{backbone}'")
    kept = kept_file(repo, keep_dir)
    if kept is not None:
        damage = unusable(kept[1], backbone)
        if damage is None:
            logger.info("Using %s, kept from an earlier start of this job (the Hub is not asked again)", kept[1])
            return PretrainedWeights("hub", kept[1], kept[0].name)
        # E.g. a checkpoint sync cut short: the copy goes, and the Hub is asked as on a first start.
        shutil.rmtree(kept[1].parent, ignore_errors=True)
        logger.warning("The weights kept from an earlier start, %s, are not usable (%s): removed", kept[1], damage)
    try:
        file = hub.first_contact(repo, settings)
    except hub.HubUnavailable as error:
        cached = hub.in_cache(repo, settings)
        if cached is None:
            raise
        damage = unusable(cached[1], backbone)
        if damage is not None:  # huggingface_hub's cache is not ours to delete
            raise hub.HubUnavailable(
                f"{error}, and the copy in huggingface_hub's cache, {cached[1]}, is not usable ({damage})"
            ) from None
        logger.warning("The Hugging Face Hub %s; using the copy in huggingface_hub's cache, %s", error, cached[1])
        return PretrainedWeights("hub", cached[1], cached[0].name)
    return checked(backbone, file, fetch(file, settings, keep_dir))


def kept_file(repo: hub.HubRepo, keep_dir: Path) -> tuple[hub.HubFile, Path] | None:
    """The file an earlier start of this job downloaded (`<keep_dir>/<repo id>/<commit>/<file>`), if any."""
    for filename in repo.filenames:
        found = sorted((keep_dir / repo.repo_id).glob(f"*/{filename}"), key=lambda path: path.stat().st_mtime)
        if found:
            path = found[-1]
            return hub.HubFile(repo.repo_id, filename, path.parent.name, path.stat().st_size), path
    return None


def fetch(file: hub.HubFile, settings: HubSettings, keep_dir: Path) -> Path:
    size = f"{file.size / 2**20:.1f} MB" if file.size is not None else "size unknown"
    logger.info("Downloading %s %s (%s) from %s", file.name, file.filename, size, settings.endpoint)
    started = time.monotonic()
    try:
        path = hub.download(file, settings, keep_dir / file.repo_id / file.commit)
    except Exception as error:  # noqa: BLE001 - a download that fails midway is "no weights from the Hub"
        raise hub.HubUnavailable(f"answered, but the download failed ({type(error).__name__}: {error})") from None
    logger.info("Downloaded %s in %.1f s to %s", file.filename, time.monotonic() - started, path)
    return path


def checked(backbone: str, file: hub.HubFile, path: Path) -> PretrainedWeights:
    """The downloaded file gets the channel's checks; a file that fails them is removed (a restart fetches it again)."""
    damage = unusable(path, backbone)
    if damage is not None:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise hub.HubUnavailable(f"served a file that is not usable weights ({damage})")
    return PretrainedWeights("hub", path, file.name)


def unusable(path: Path, backbone: str) -> str | None:
    """Why the file at `path` is not weights of `backbone` (the channel's checks), or None."""
    try:
        weights_file.read_shapes(path, backbone)
    except DataError as error:
        return str(error)
    return None
