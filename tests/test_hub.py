"""The Hub client (`prefsynth.hub`) through a real publish: retries, token handling and one-line errors.

Faults are injected server-side into the loopback Hub (tests/hub); nothing is mocked. The same client pushes
training's adapters (tests/test_train_run.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from hub import READ_TOKEN
from hub import WRITE_TOKEN as TOKEN  # any occurrence of it in logs, output or uploaded bytes is a leak
from prefsynth.errors import UserError
from prefsynth.publish import PublishConfig, PublishResult, publish
from test_publish import REPO, assert_one_line, cfg, local_files, make_dataset  # noqa: F401 (cfg: a fixture)

pytestmark = pytest.mark.usefixtures("hub_env")


# ----------------------------------------------------------------------------------------------------- faults


def test_faults_survived_with_one_complete_commit(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    hub.fail_next("/preupload/", 500)  # huggingface_hub's own backoff retries this one
    hub.drop_next("/_lfs/", method="PUT")  # connection dropped in the middle of the LFS upload
    hub.fail_next("/commit/", 429, headers={"Retry-After": "0"})  # rate limited: our retry loop
    hub.drop_next("/commit/", after=True)  # commit applied, answer lost: the retry must not commit again

    [res] = publish(folder, cfg)

    assert [s for _m, p, s in hub.requests if "/commit/" in p] == [429, 0]  # a 3rd call would be a duplicate
    assert [s for m, p, s in hub.requests if m == "PUT"].count(0) == 1
    assert hub.commit_count == 1 and res.committed and res.tag == "v1" and res.revision == hub.head(REPO)
    remote = hub.files(REPO)
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local_files(folder)


def test_retries_exhausted_one_line_and_repo_unchanged(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    [v1] = publish(folder, cfg)
    make_dataset(folder, tag="b")
    hub.fail_next("/commit/", 503, times=100)

    with pytest.raises(UserError) as exc:
        publish(folder, replace(cfg, max_retries=2))

    msg = assert_one_line(exc.value)
    assert "503" in msg and "after 3 attempts" in msg and f"unchanged at {v1.revision[:12]}" in msg
    assert hub.head(REPO) == v1.revision and hub.commit_count == 1 and hub.repo(REPO).tags == {"v1": v1.revision}
    assert hub.files(REPO)["prefsynth.json"] == json.dumps({"version": "a", "configs": ["paired", "unpaired"]}).encode()
    hub.clear_faults()
    [v2] = publish(folder, cfg)  # and the next run completes the version
    assert v2.committed and v2.tag == "v2" and hub.commit_count == 2


def test_stalled_server_times_out_and_is_retried(hub, cfg, tmp_path):
    hub.stall_next("/commit/", 1.5)  # answers after the client gave up: the commit lands, the client retries
    [res] = publish(make_dataset(tmp_path / "ds"), replace(cfg, timeout=0.5))
    assert hub.commit_count == 1 and res.committed and res.tag == "v1"


def test_token_never_leaks(hub, cfg, tmp_path, caplog, capfd):
    import huggingface_hub

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    huggingface_hub.utils.logging.set_verbosity_debug()
    try:
        folder = make_dataset(tmp_path / "ds", plot=True)
        hub.fail_next("/preupload/", 502)
        hub.drop_next("/commit/", after=True)
        [res] = publish(folder, cfg)
        make_dataset(folder, tag="b")
        split = publish(folder, replace(cfg, split_repos=True))
        hub.fail_next("/commit/", 500, times=100)
        make_dataset(folder, tag="c")
        with pytest.raises(UserError) as exc:
            publish(folder, replace(cfg, max_retries=1))
    finally:
        huggingface_hub.utils.logging.set_verbosity_warning()
    captured = capfd.readouterr()

    assert "retry" in caplog.text  # the retries were logged, so the check below has something to look at
    results = json.dumps([r.to_dict() for r in [res, *split]])
    for text in (caplog.text, captured.out, captured.err, str(exc.value), results):
        assert TOKEN not in text
    for key in list(hub.repos):
        for content in hub.files(key[1], repo_type=key[0]).values():
            assert TOKEN.encode() not in content
    for field_value in PublishConfig.__dataclass_fields__:
        assert "token" not in field_value  # the token is never a config field (configs get saved)
    assert "token" not in PublishResult.__dataclass_fields__


# ----------------------------------------------------------------------------------------------------- user errors


def test_no_token(hub, cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), cfg)
    assert "no Hugging Face token" in assert_one_line(exc.value) and hub.requests == []


def test_rejected_token(hub, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_0123456789")
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), cfg)
    msg = assert_one_line(exc.value)
    assert "rejected the token (HTTP 401)" in msg and "hf_not_a_real_token" not in msg
    assert hub.repos == {}


def test_read_only_token(hub, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), cfg)
    assert "read-only" in assert_one_line(exc.value) and hub.repos == {}


def test_forbidden_namespace(hub, cfg, tmp_path):
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), replace(cfg, repo_id="someone-else/prefs"))
    assert "HTTP 403" in assert_one_line(exc.value)


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad id!", "", "noslash", "user/-dash", "user/a--b", "u/" + "x" * 97])
def test_malformed_repo_id(hub, cfg, tmp_path, repo_id):
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), replace(cfg, repo_id=repo_id))
    msg = assert_one_line(exc.value)
    assert ("malformed repo id" in msg or "no repo given" in msg) and hub.requests == []


def test_endpoint_unreachable(cfg, tmp_path, free_port):
    port = free_port()  # free a moment ago, and nobody listens on it now
    with pytest.raises(UserError) as exc:
        publish(make_dataset(tmp_path / "ds"), replace(cfg, endpoint=f"http://127.0.0.1:{port}", max_retries=1))
    msg = assert_one_line(exc.value)
    assert "cannot connect to" in msg and f"127.0.0.1:{port}" in msg and "after 2 attempts" in msg
