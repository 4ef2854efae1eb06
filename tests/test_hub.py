"""The Hugging Face Hub step of `pretrained=auto|true|false`, against a stand-in Hub on 127.0.0.1 (no internet)."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
from huggingface_hub import hf_hub_download

from birdsed import hub
from birdsed.config import from_hyperparameters
from birdsed.errors import DataError
from birdsed.models.weights import HUB_WEIGHTS_DIR, RANDOM, resolve_weights
from birdsed.sm_env import HubSettings, hub_settings
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS
from hub_server import COMMIT, SilentHub, StandInHub, refusing_endpoint, serve_weights, timm_weights
from tiny_data import write_wav_dataset

REPO = "timm/test_efficientnet.r160_in1k"  # timm's Hub repository of test_efficientnet's default weights
AUTO = from_hyperparameters({**FAST_HYPERPARAMETERS, "pretrained": "auto"}).model
TRUE = from_hyperparameters({**FAST_HYPERPARAMETERS, "pretrained": "true"}).model
FALSE = from_hyperparameters({**FAST_HYPERPARAMETERS, "pretrained": "false"}).model


@pytest.fixture(scope="module")
def weights():
    return timm_weights("test_efficientnet")


def settings(endpoint: str, tmp_path, **overrides) -> HubSettings:
    return HubSettings(**{"endpoint": endpoint, "cache_dir": tmp_path / "hf-cache", **overrides})


def test_settings_come_from_huggingface_hubs_own_variables(tmp_path):
    environ = {"HF_ENDPOINT": "http://mirror/", "HF_HUB_OFFLINE": "1", "HF_HUB_ETAG_TIMEOUT": "3", "HF_HOME": "/h"}
    assert hub_settings(environ) == HubSettings("http://mirror", True, 3.0, hub.Path("/h/hub"))
    assert hub_settings({"HF_HUB_CACHE": str(tmp_path)}).cache_dir == tmp_path
    assert hub_settings({}).endpoint == "https://huggingface.co" and not hub_settings({}).offline


def test_the_repo_and_files_are_timms():
    assert hub.hub_repo("test_efficientnet") == hub.HubRepo(REPO, "main", ("model.safetensors", "pytorch_model.bin"))
    assert hub.hub_repo("tf_efficientnetv2_s.in21k").repo_id == "timm/tf_efficientnetv2_s.in21k"


def test_without_timm_a_tagged_name_maps_to_timms_repo(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # the launcher may run without timm
    assert hub.hub_repo("tf_efficientnetv2_s.in21k").repo_id == "timm/tf_efficientnetv2_s.in21k"
    with pytest.raises(hub.HubUnavailable, match="name the backbone with its tag"):
        hub.hub_repo("efficientnet_b0")


def test_first_contact_names_the_commit_and_falls_back_to_the_pickle(tmp_path, weights):
    with serve_weights(REPO, weights, filename="pytorch_model.bin") as server:
        found = hub.first_contact(hub.hub_repo("test_efficientnet"), settings(server.url, tmp_path))
        assert found == hub.HubFile(REPO, "pytorch_model.bin", COMMIT, found.size) and found.size > 0
        assert [r.method for r in server.requests] == ["HEAD", "HEAD"]  # model.safetensors: 404, then the .bin


def test_a_hub_that_accepts_and_never_answers_is_given_up_within_the_budget(monkeypatch):
    """Each request waits HF_HUB_ETAG_TIMEOUT at most, and never beyond what is left of the budget."""
    repo = hub.hub_repo("test_efficientnet")
    with SilentHub() as silent:
        started = time.monotonic()
        with pytest.raises(hub.HubUnavailable, match=r"did not answer within 2 s \(1 try; last: ReadTimeout"):
            hub.first_contact(repo, HubSettings(endpoint=silent.url, timeout=10), budget=2)
        assert time.monotonic() - started < 3
        monkeypatch.setattr(hub, "RETRY_PAUSE_S", 0.1)
        with pytest.raises(hub.HubUnavailable, match=r"within 25 s \(3 tries; last: ReadTimeout"):
            hub.first_contact(repo, HubSettings(endpoint=silent.url, timeout=0.3))
        assert len(silent.connections) == 4
    assert hub.CONTACT_BUDGET_S + 3 < 30  # + huggingface_hub's 3 s registry fetch when telemetry is on


def test_a_refusing_hub_is_tried_three_times_then_given_up():
    started = time.monotonic()
    with pytest.raises(hub.HubUnavailable, match="3 tries; last: ConnectError"):
        hub.first_contact(hub.hub_repo("test_efficientnet"), HubSettings(endpoint=refusing_endpoint()))
    assert time.monotonic() - started < 2 * hub.RETRY_PAUSE_S + 2


def test_a_definite_no_is_not_asked_again(tmp_path):
    with StandInHub({("timm/another", "model.safetensors"): b"x"}) as server:
        with pytest.raises(hub.HubUnavailable, match=r"refused timm/test_efficientnet.r160_in1k .*HF_TOKEN"):
            hub.first_contact(hub.hub_repo("test_efficientnet"), settings(server.url, tmp_path))
        assert len(server.requests) == 1


def test_auto_downloads_once_into_the_checkpoint_dir_and_a_restart_uses_that_copy(tmp_path, weights, caplog):
    caplog.set_level(logging.INFO)
    with serve_weights(REPO, weights) as server:
        found = resolve_weights(AUTO, None, settings(server.url, tmp_path), tmp_path / "checkpoints")
        assert found.summary == f"hub:{REPO}@{COMMIT}"
        assert found.path == tmp_path / "checkpoints" / HUB_WEIGHTS_DIR / REPO / COMMIT / "model.safetensors"
        assert f"weights=hub:{REPO}@{COMMIT}" in caplog.text
        assert server.downloads() == [f"/{REPO}/resolve/{COMMIT}/model.safetensors"]
    # The restarted job: no Hub at all, pretrained=true, the same file and commit.
    again = resolve_weights(TRUE, None, settings(refusing_endpoint(), tmp_path), tmp_path / "checkpoints")
    assert again == found


def test_a_damaged_kept_copy_is_removed_and_fetched_again(tmp_path, weights, caplog):
    """E.g. a checkpoint sync cut short: the restart must not train from a truncated file, nor give up."""
    with serve_weights(REPO, weights) as server:
        found = resolve_weights(AUTO, None, settings(server.url, tmp_path), tmp_path / "checkpoints")
        complete = found.path.read_bytes()
        found.path.write_bytes(complete[: len(complete) // 2])
        again = resolve_weights(TRUE, None, settings(server.url, tmp_path), tmp_path / "checkpoints")
        assert again == found and found.path.read_bytes() == complete
        assert len(server.downloads()) == 2
    assert "The weights kept from an earlier start" in caplog.text and "are not usable" in caplog.text


def test_a_damaged_copy_in_huggingface_hubs_cache_is_not_used_and_the_reason_says_both(tmp_path, weights, caplog):
    with serve_weights(REPO, weights) as server:
        cached = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf-cache", endpoint=server.url)
    blob = hub.Path(cached).resolve()
    blob.write_bytes(blob.read_bytes()[:1000])
    offline = settings("http://unused", tmp_path, offline=True)
    assert resolve_weights(AUTO, None, offline, tmp_path / "checkpoints") == RANDOM
    assert "HF_HUB_OFFLINE is set, and the copy in huggingface_hub's cache" in caplog.text
    with pytest.raises(DataError) as raised:
        resolve_weights(TRUE, None, offline, tmp_path / "checkpoints")
    message = str(raised.value)
    assert "is not usable" in message and "HF_HUB_OFFLINE is set" in message and "\n" not in message
    assert blob.is_file()  # huggingface_hub's cache is left as it is


def test_the_channel_comes_first_and_false_never_asks(tmp_path, weights):
    channel = tmp_path / "channel"
    channel.mkdir()
    with serve_weights(REPO, weights) as server:
        with serve_weights(REPO, weights) as unused:
            hub_server = settings(unused.url, tmp_path)
            (channel / "model.safetensors").write_bytes(server.files[(REPO, "model.safetensors")])
            assert resolve_weights(AUTO, channel, hub_server, tmp_path).summary == "channel:model.safetensors"
            assert resolve_weights(FALSE, None, hub_server, tmp_path) == RANDOM
            assert unused.requests == []


def test_huggingface_hubs_cache_is_used_when_the_hub_does_not_answer(tmp_path, weights, caplog, monkeypatch):
    monkeypatch.setattr(hub, "RETRY_PAUSE_S", 0.05)
    with serve_weights(REPO, weights) as server:  # timm used on this machine before
        hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf-cache", endpoint=server.url)
    found = resolve_weights(TRUE, None, settings(refusing_endpoint(), tmp_path), tmp_path / "checkpoints")
    assert found.summary == f"hub:{REPO}@{COMMIT}" and (tmp_path / "hf-cache") in found.path.parents
    assert "did not answer" in caplog.text and "using the copy in huggingface_hub's cache" in caplog.text


def test_an_unreachable_hub_means_random_weights_with_a_warning_or_a_one_line_error(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    offline = settings("http://unused", tmp_path, offline=True)
    assert resolve_weights(AUTO, None, offline, tmp_path) == RANDOM
    warning = caplog.records[-2].getMessage()
    assert caplog.records[-2].levelname == "WARNING" and "test_efficientnet" in warning
    assert "RANDOM initialisation" in warning and "--pretrained hub" in warning
    assert caplog.records[-1].getMessage() == "weights=random"
    with pytest.raises(DataError) as raised:
        resolve_weights(TRUE, tmp_path / "empty", offline, tmp_path)
    message = str(raised.value)
    assert message.startswith("pretrained=true but no weights were found for backbone 'test_efficientnet'")
    assert "is not asked: HF_HUB_OFFLINE is set" in message and "\n" not in message


def test_a_hub_serving_junk_is_no_source_and_its_file_is_not_kept(tmp_path, caplog):
    with StandInHub({(REPO, "model.safetensors"): b"<html>Sign in to the proxy</html>"}) as server:
        assert resolve_weights(AUTO, None, settings(server.url, tmp_path), tmp_path / "checkpoints") == RANDOM
        assert "served a file that is not usable weights" in caplog.text and "is not a safetensors file" in caplog.text
        assert not (tmp_path / "checkpoints" / HUB_WEIGHTS_DIR / REPO / COMMIT).exists()
        with pytest.raises(DataError, match="served a file that is not usable weights"):
            resolve_weights(TRUE, None, settings(server.url, tmp_path), tmp_path / "checkpoints")


# ---- through the real toolkit: a Hub that never answers ----


@pytest.mark.slow
def test_a_job_against_a_silent_hub_falls_back_to_random_and_pretrained_true_fails_in_one_line(tmp_path):
    data = write_wav_dataset(tmp_path / "data")
    with SilentHub() as silent:
        env = {"HF_ENDPOINT": silent.url, "HF_HUB_ETAG_TIMEOUT": "1"}  # 3 tries of 1 s: the 25 s budget is unit-tested
        jobs = {}
        for policy in ("auto", "true"):
            base = tmp_path / policy
            local_job.layout(base, {"train": data}, {**FAST_HYPERPARAMETERS, "epochs": 1, "pretrained": policy})
            jobs[policy] = local_job.run_toolkit(base, env, capture_output=True, text=True)
    auto = jobs["auto"]
    assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]
    log = auto.stdout + auto.stderr
    assert "weights=random" in log and "did not answer within 25 s (3 tries; last: ReadTimeout" in log
    assert "RANDOM initialisation" in log and "--pretrained hub" in log
    assert json.loads((tmp_path / "auto" / "output" / "data" / "metrics.json").read_text())["weights"] == "random"
    assert json.loads((tmp_path / "auto" / "model" / "config.json").read_text())["weights"] == "random"

    assert jobs["true"].returncode != 0
    failure = (tmp_path / "true" / "output" / "failure").read_text().strip()
    assert failure.startswith("pretrained=true but no weights were found for backbone 'test_efficientnet'")
    assert "\n" not in failure and "did not answer" in failure
    assert not (tmp_path / "true" / "model" / "model.pt").exists()
