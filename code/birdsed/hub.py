"""A backbone's pretrained weights on the Hugging Face Hub: which file timm loads, asked for in bounded time.

timm names each backbone's weights (`pretrained_cfg.hf_hub_id`, and the files `load_state_dict_from_hf`
tries: `model.safetensors`, then `pytorch_model.bin`) and fetches them with huggingface_hub, which
honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE. The job uses the same ids, files, library and
variables, but does not call `timm.create_model(..., pretrained=True)` for the download, because:

- it cannot be bounded: when the Hub does not answer and nothing is cached, huggingface_hub retries
  the metadata request with a 60 s timeout, five times with back-off (minutes), and a job must fall
  back within 30 s;
- it does not say which revision it loaded, which the job records (`weights=hub:<repo id>@<commit>`);
- the file would skip the checks that a channel's file gets (`models/weights_file.py`).

So the first request is ours and bounded (`first_contact`), the download is huggingface_hub's
(`hf_hub_download` into a plain folder), and the file is then loaded by timm's own loader exactly
like a channel's file. No torch here: the launcher (`submit.py --pretrained hub`) uses this too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from birdsed.sm_env import HubSettings

logger = logging.getLogger(__name__)

# timm's order (timm.models._hub.load_state_dict_from_hf): the safetensors file, else the pickle.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The first answer must come within this, all tries and pauses together: a job falls back within 30 s.
CONTACT_BUDGET_S = 25.0
CONTACT_TRIES = 3
RETRY_PAUSE_S = 1.0


@dataclass(frozen=True)
class HubRepo:
    """Where timm's weights of a backbone live."""

    repo_id: str  # e.g. timm/tf_efficientnetv2_s.in21k
    revision: str  # a branch, tag or commit: "main" unless timm pins one (`hf_hub_id="org/name@rev"`)
    filenames: tuple[str, ...]  # in timm's order of preference


@dataclass(frozen=True)
class HubFile:
    """One weights file of one commit, as the Hub described it."""

    repo_id: str
    filename: str
    commit: str  # 40 hex digits (X-Repo-Commit)
    size: int | None = None

    @property
    def name(self) -> str:
        """`<repo id>@<commit>`: what the job logs and records."""
        return f"{self.repo_id}@{self.commit}"


class HubUnavailable(Exception):
    """The Hub has no usable weights for the backbone; the message says why, in a few words."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.retry = retry  # worth asking again (no answer, 5xx, 429) rather than a definite "no"


def hub_repo(backbone: str) -> HubRepo | None:
    """The Hub repository of `backbone`'s weights, from timm's pretrained config; None when timm has none.

    Without timm (a launcher-only environment) a name with a pretrained tag maps to `timm/<name>`, as
    every timm model on the Hub is named; a bare architecture name needs timm to find its default tag.
    """
    try:
        import timm
    except ImportError:
        if "." not in backbone:
            raise HubUnavailable(
                f"timm is not installed here to find the default weights of '{backbone}': install it "
                f"(pip install timm) or name the backbone with its tag (e.g. {backbone}.ra_in1k)"
            ) from None
        return HubRepo(f"timm/{backbone}", "main", WEIGHT_FILES)
    config = timm.models.get_pretrained_cfg(backbone)
    if config is None or not config.hf_hub_id or config.custom_load:
        return None
    repo_id, _, revision = config.hf_hub_id.partition("@")
    filenames = (config.hf_hub_filename,) if config.hf_hub_filename else WEIGHT_FILES
    return HubRepo(repo_id, revision or "main", filenames)


def first_contact(
    repo: HubRepo, settings: HubSettings, budget: float = CONTACT_BUDGET_S, tries: int = CONTACT_TRIES
) -> HubFile:
    """Ask the Hub which commit and file hold the weights: at most `tries` requests within `budget` seconds.

    Each request waits at most `settings.timeout` (HF_HUB_ETAG_TIMEOUT, 10 s by default) and never
    beyond the budget; a definite answer (no such repository or file, a gated repository) is not asked again.
    """
    if settings.offline:
        raise HubUnavailable("is not asked: HF_HUB_OFFLINE is set")
    deadline = time.monotonic() + budget
    last, made = "no request was made", 0
    while made < tries and (remaining := deadline - time.monotonic()) > 0:
        made += 1
        try:
            return _metadata(repo, settings, timeout=min(settings.timeout, remaining))
        except HubUnavailable as error:
            if not error.retry:
                raise
            last = str(error)
        if made < tries:
            time.sleep(max(0.0, min(RETRY_PAUSE_S, deadline - time.monotonic())))
    tried = f"{made} {'try' if made == 1 else 'tries'}"
    raise HubUnavailable(f"did not answer within {budget:g} s ({tried}; last: {last})", retry=True)


def _metadata(repo: HubRepo, settings: HubSettings, timeout: float) -> HubFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    for filename in repo.filenames:
        url = hf_hub_url(repo.repo_id, filename, revision=repo.revision, endpoint=settings.endpoint)
        try:
            metadata = get_hf_file_metadata(url, timeout=timeout, endpoint=settings.endpoint, library_name="timm")
        except EntryNotFoundError:
            continue
        except RepositoryNotFoundError as error:  # also gated and private repositories without a token
            raise HubUnavailable(f"refused {repo.repo_id} ({_status(error)}; a private repo needs HF_TOKEN)") from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            retry = status is None or status >= 500 or status in (408, 429)
            raise HubUnavailable(f"answered {_status(error)}", retry=retry) from None
        except Exception as error:  # noqa: BLE001 - no answer at all: refused, timed out, no route, DNS
            raise HubUnavailable(f"{type(error).__name__}: {_first_line(error)}", retry=True) from None
        if not metadata.commit_hash:
            raise HubUnavailable(f"answered for {url} without a commit (X-Repo-Commit): is {settings.endpoint} a Hub?")
        return HubFile(repo.repo_id, filename, metadata.commit_hash, metadata.size)
    raise HubUnavailable(f"has none of {', '.join(repo.filenames)} in {repo.repo_id}@{repo.revision}")


def download(file: HubFile, settings: HubSettings, local_dir: Path, progress: bool = False) -> Path:
    """The file of exactly `file.commit` in `local_dir` (a plain file, no cache symlinks); no-op when there.

    A copy in huggingface_hub's own cache is copied instead of downloaded. Once the Hub has answered,
    the transfer is huggingface_hub's: a stalled one fails after HF_HUB_DOWNLOAD_TIMEOUT (10 s) without data.
    """
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        file.repo_id,
        file.filename,
        revision=file.commit,
        local_dir=local_dir,
        cache_dir=settings.cache_dir,
        endpoint=settings.endpoint,
        etag_timeout=settings.timeout,
        library_name="timm",
        tqdm_class=None if progress else _Quiet,
    )
    return Path(path)


def in_cache(repo: HubRepo, settings: HubSettings) -> tuple[HubFile, Path] | None:
    """The weights in huggingface_hub's own cache (e.g. timm used on this machine before), if any."""
    from huggingface_hub import try_to_load_from_cache

    if settings.cache_dir is None:
        return None
    for filename in repo.filenames:
        found = try_to_load_from_cache(repo.repo_id, filename, cache_dir=settings.cache_dir, revision=repo.revision)
        if isinstance(found, str):
            path = Path(found)  # <cache>/models--org--name/snapshots/<commit>/<filename>
            return HubFile(repo.repo_id, filename, path.parent.name, path.stat().st_size), path
    return None


class _Quiet(tqdm):
    """No progress bar in a job's log (CloudWatch keeps every redraw); the job logs size and time instead."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _status(error: Exception) -> str:
    response = getattr(error, "response", None)
    return f"HTTP {response.status_code}" if response is not None else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"
