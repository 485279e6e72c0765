"""Publish stage over real HTTP, against a loopback server that speaks the Hub's protocol.

What this checks: that prefsynth drives the real `huggingface_hub` client (create repo, preupload, LFS batch + PUT,
NDJSON commit, refs, tags) and that the real `datasets` client can load what was published; retries, tokens and
Hub errors are in tests/test_hub.py. The server is `tests/hub/` (conftest's `hub` fixture), not the Hugging Face
Hub: these tests prove the client-side protocol and our retry/atomicity logic, not the real Hub's behaviour (Xet
storage, quotas, real rate limits, permissions of fine-grained tokens...).

Nothing here is mocked: the clients send real requests over 127.0.0.1, and faults are injected server-side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import yaml

from hub import READ_TOKEN, HubServer
from hub import WRITE_TOKEN as TOKEN  # any occurrence of it in logs, output or uploaded bytes is a leak
from prefsynth.errors import UserError
from prefsynth.publish import PublishConfig, publish

ROOT = Path(__file__).resolve().parents[1]
# The online-Hub environment (HF_TOKEN = TOKEN, no stored token) for every test here; `hub` is conftest's server.
pytestmark = pytest.mark.usefixtures("hub_env")
REPO = "tester/neurips-prefs"
CLI_EXISTS = (ROOT / "src" / "prefsynth" / "__main__.py").exists() and (ROOT / "src" / "prefsynth" / "cli.py").exists()


# ----------------------------------------------------------------------------------------------------- fixtures


def make_dataset(folder: Path, *, tag: str = "a", n: int = 4, configs=("paired", "unpaired"), plot: bool = False):
    """A folder shaped like the build stage's output: card with `configs:`, parquet per config and split."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", n), ("validation", 2)):
        rows = range(k)
        if "paired" in configs:
            (folder / "paired").mkdir(exist_ok=True)
            pl.DataFrame({
                "prompt": [f"Review paper {i} ({split}, {tag})" for i in rows],
                "chosen": [f"A careful review {i}{tag}" for i in rows],
                "rejected": [f"A sloppy review {i}{tag}" for i in rows],
                "title": [f"Title {i}" for i in rows],
            }).write_parquet(folder / "paired" / f"{split}.parquet")
        if "unpaired" in configs:
            (folder / "unpaired").mkdir(exist_ok=True)
            pl.DataFrame({
                "prompt": [f"Review paper {i} ({split}, {tag})" for i in rows],
                "completion": [f"Review {i}{tag}" for i in rows],
                "label": [i % 2 == 0 for i in rows],
                "title": [f"Title {i}" for i in rows],
            }).write_parquet(folder / "unpaired" / f"{split}.parquet")
    yaml_configs = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.parquet\n"
        f"  - split: validation\n    path: {c}/validation.parquet\n"
        for c in configs
    )
    (folder / "README.md").write_text(
        f"---\nlicense: apache-2.0\ntask_categories:\n- text-generation\nconfigs:\n{yaml_configs}tags:\n- dpo\n---\n"
        f"# Reviewer 2 preferences\n\n| config | rows |\n|---|---|\n| paired | {n} |\n",
        encoding="utf-8",
    )
    (folder / "prefsynth.json").write_text(json.dumps({"version": tag, "configs": list(configs)}))
    if plot:
        (folder / "judge_scores.png").write_bytes(b"\x89PNG\r\n\x1a\n" + tag.encode() * 64)
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cfg(hub) -> PublishConfig:
    # Short waits keep retries fast; the endpoint is passed explicitly (HF_ENDPOINT is read at import time).
    return PublishConfig(repo_id=REPO, endpoint=hub.endpoint, max_retries=3, retry_wait=0.05, timeout=10)


def load_rows(hub: HubServer, loads: list[tuple[str, str, str | None]], tmp_path: Path) -> tuple[dict, str]:
    """Run `datasets.load_dataset` in a fresh interpreter (datasets reads HF_ENDPOINT at import) against the
    server. loads: (repo, config, revision) -> {"repo|config|revision": {split: rows}}."""
    script = (
        "import json, sys, datasets\n"
        "out = {}\n"
        "for repo, config, rev in json.loads(sys.argv[1]):\n"
        "    d = datasets.load_dataset(repo, config, revision=rev)\n"
        "    out[f'{repo}|{config}|{rev}'] = {s: d[s].to_list() for s in d}\n"
        "print('ROWS' + json.dumps(out))\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-load"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-load" / "datasets"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(loads)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ROWS"))
    return json.loads(line[4:]), proc.stdout + proc.stderr


def parquet_rows(path: Path) -> list[dict]:
    return pl.read_parquet(path).to_dicts()


def assert_one_line(err: UserError) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and TOKEN not in msg and READ_TOKEN not in msg, msg
    return msg


def commit_calls(hub: HubServer) -> list[tuple[str, str, int]]:
    return [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]


# ----------------------------------------------------------------------------------------------------- happy paths


def test_first_publish_creates_repo_and_one_commit(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds", plot=True)
    (folder / ".lock").write_text("123")  # hidden files (locks) are not part of the dataset

    [res] = publish(folder, cfg)

    repo = hub.repo(REPO)
    assert repo.private is True  # private by default
    assert hub.commit_count == 1 and len(commit_calls(hub)) == 1
    assert res.committed and res.tag == "v1" and res.revision == hub.head(REPO)
    assert repo.tags == {"v1": res.revision}
    history = hub.history(REPO)
    assert [c.title for c in history] == ["prefsynth: publish paired, unpaired", "initial commit"]
    assert history[0].parent == history[1].sha
    remote = hub.files(REPO, res.revision)
    expected = {k: v for k, v in local_files(folder).items() if k != ".lock"}
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == expected
    # parquet went through LFS, the card as a regular file, as on the Hub
    tree = repo.commits[res.revision].tree
    assert tree["paired/train.parquet"].lfs_sha256 and tree["README.md"].lfs_sha256 is None
    assert res.url == f"{hub.endpoint}/datasets/{REPO}" and res.configs == ["paired", "unpaired"]
    assert json.loads(json.dumps(res.to_dict()))["revision"] == res.revision  # JSON-serialisable
    assert hub.unknown == []


def test_public_flag(hub, cfg, tmp_path):
    [res] = publish(make_dataset(tmp_path / "ds"), replace(cfg, private=False))
    assert hub.repo(REPO).private is False and res.private is False


def test_unchanged_republish_makes_no_commit(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    [first] = publish(folder, cfg)
    hub.requests.clear()

    [again] = publish(folder, cfg)

    assert hub.commit_count == 1 and commit_calls(hub) == []  # not even an attempted commit call
    assert not any("/tag/" in path for _m, path, _s in hub.requests)
    assert (again.committed, again.revision, again.tag) == (False, first.revision, "v1")
    assert hub.repo(REPO).tags == {"v1": first.revision}


def test_untagged_head_gets_its_tag_without_a_commit(hub, cfg, tmp_path):
    # A run that died between its commit and its tag: the next run tags the head instead of committing again.
    folder = make_dataset(tmp_path / "ds")
    [first] = publish(folder, cfg)
    hub.repo(REPO).tags.clear()
    [again] = publish(folder, cfg)
    assert (again.committed, again.revision, again.tag) == (False, first.revision, "v1")
    assert hub.commit_count == 1 and hub.repo(REPO).tags == {"v1": first.revision}


def test_changed_publish_makes_one_commit_and_new_tag(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds", plot=True)
    [v1] = publish(folder, cfg)
    # New rows, and the plot is gone: the new version must not keep the stale plot.
    make_dataset(folder, tag="b", n=5)
    (folder / "judge_scores.png").unlink()
    hub.requests.clear()

    [v2] = publish(folder, cfg)

    assert hub.commit_count == 2 and len(commit_calls(hub)) == 1
    assert v2.committed and v2.tag == "v2" and v2.revision != v1.revision
    assert hub.repo(REPO).tags == {"v1": v1.revision, "v2": v2.revision}
    assert hub.history(REPO)[0].parent == v1.revision
    remote = hub.files(REPO, "v2")
    assert "judge_scores.png" not in remote and "judge_scores.png" in hub.files(REPO, "v1")
    assert remote["paired/train.parquet"] == (folder / "paired" / "train.parquet").read_bytes()
    # The old version is still readable at its tag: training pinned to v1 is unaffected.
    assert hub.files(REPO, "v1")["prefsynth.json"] != remote["prefsynth.json"]


def test_load_dataset_reads_published_rows(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    [res] = publish(folder, cfg)
    # v2 exists too, so loading by pinned sha or tag must return v1's rows, not the head's.
    make_dataset(folder, tag="new", n=3)
    [res2] = publish(folder, cfg)

    got, output = load_rows(
        hub,
        [(REPO, "paired", None), (REPO, "unpaired", None), (REPO, "paired", res.revision), (REPO, "unpaired", "v1")],
        tmp_path,
    )

    for config in ("paired", "unpaired"):
        want = {s: parquet_rows(folder / config / f"{s}.parquet") for s in ("train", "validation")}
        assert got[f"{REPO}|{config}|None"] == want
    old = make_dataset(tmp_path / "old", tag="a")  # the exact content of v1, rebuilt
    assert got[f"{REPO}|paired|{res.revision}"]["train"] == parquet_rows(old / "paired" / "train.parquet")
    assert got[f"{REPO}|unpaired|v1"]["validation"] == parquet_rows(old / "unpaired" / "validation.parquet")
    assert res2.revision != res.revision
    assert TOKEN not in output
    assert hub.unknown == []  # every call the datasets client made is one the server models


def test_split_repos(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds", plot=True)

    results = publish(folder, replace(cfg, split_repos=True))

    assert [r.repo_id for r in results] == [f"{REPO}-paired", f"{REPO}-unpaired"]
    assert hub.commit_count == 2 and all(r.committed and r.tag == "v1" for r in results)
    assert ("dataset", REPO) not in hub.repos  # no combined repo
    for r, config in zip(results, ("paired", "unpaired"), strict=True):
        files = hub.files(r.repo_id)
        assert sorted(files) == [".gitattributes", "README.md", f"{config}/train.parquet",
                                 f"{config}/validation.parquet"]
        card = files["README.md"].decode()
        meta = yaml.safe_load(card.split("---")[1])
        assert [c["config_name"] for c in meta["configs"]] == [config]
        assert meta["license"] == "apache-2.0" and "# Reviewer 2 preferences" in card
    got, _ = load_rows(hub, [(f"{REPO}-unpaired", "unpaired", None)], tmp_path)
    assert got[f"{REPO}-unpaired|unpaired|None"]["train"] == parquet_rows(folder / "unpaired" / "train.parquet")


def test_only_one_config_present(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds", configs=("paired",))
    [res] = publish(folder, cfg)
    assert res.configs == ["paired"] and not any(p.startswith("unpaired/") for p in hub.files(REPO))


def test_repo_exists_with_another_type(cfg, tmp_path):
    # The real Hub keeps model and dataset names apart; this server (like a stricter Hub-compatible one) refuses a
    # dataset named like an existing model, and publish must say so instead of failing later with a 404.
    with HubServer(tokens={TOKEN: "write"}, types_share_names=False) as strict:
        strict.add_repo(REPO, "model")
        with pytest.raises(UserError) as exc:
            publish(make_dataset(tmp_path / "ds"), replace(cfg, endpoint=strict.endpoint))
        assert "exists" in (msg := assert_one_line(exc.value)) and "model repo" in msg
        assert ("dataset", REPO) not in strict.repos and strict.commit_count == 0


@pytest.mark.parametrize(
    "case", ["missing", "no-card", "no-config", "card-points-nowhere", "config-gone", "bad-yaml", "bad-endpoint"]
)
def test_bad_folder_or_endpoint(hub, cfg, tmp_path, case):
    folder = tmp_path / "ds"
    if case != "missing":
        make_dataset(folder)
    if case == "no-card":
        (folder / "README.md").unlink()
    elif case == "no-config":
        for p in folder.rglob("*.parquet"):
            p.unlink()
    elif case == "card-points-nowhere":
        (folder / "unpaired" / "validation.parquet").unlink()
    elif case == "config-gone":  # the card still lists unpaired, the folder has none
        for p in (folder / "unpaired").iterdir():
            p.unlink()
    elif case == "bad-yaml":
        (folder / "README.md").write_text("---\nconfigs: [unclosed\n---\nbody\n")
    if case == "bad-endpoint":
        cfg = replace(cfg, endpoint="ftp://example.org")
    with pytest.raises(UserError) as exc:
        publish(folder, cfg)
    assert_one_line(exc.value)
    assert hub.requests == []


def test_validate_is_offline(hub):
    PublishConfig(repo_id="me/prefs", split_repos=True).validate()
    with pytest.raises(UserError):
        PublishConfig(repo_id="me/prefs/x").validate()


# ----------------------------------------------------------------------------------------------------- CLI


def _cli(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HOME": str(tmp_path / "cli-hf"), **env}
    full.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-m", "prefsynth", "publish", *args], env=full, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@pytest.mark.skipif(not CLI_EXISTS, reason="prefsynth CLI (src/prefsynth/cli.py, __main__.py) not written yet")
def test_cli_errors_are_one_line_without_traceback(hub, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    cases = [
        (["--out", str(folder), "--repo", "bad id!"], {"HF_TOKEN": TOKEN}, "malformed repo id"),
        (["--out", str(folder), "--repo", REPO, "--endpoint", hub.endpoint], {"HF_TOKEN": ""}, "no Hugging Face token"),
        (["--out", str(folder), "--repo", REPO], {"HF_TOKEN": "hf_wrong", "HF_ENDPOINT": hub.endpoint}, "HTTP 401"),
    ]
    for args, env, needle in cases:
        proc = _cli(args, env, tmp_path)
        assert proc.returncode != 0, proc.stdout
        assert "Traceback" not in proc.stderr, proc.stderr
        # The CLI's own INFO log lines (its logging format starts with the level) are not part of the error report.
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("INFO ")]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
        assert proc.returncode == 2  # UserError's exit code
        assert TOKEN not in proc.stderr + proc.stdout


@pytest.mark.skipif(not CLI_EXISTS, reason="prefsynth CLI (src/prefsynth/cli.py, __main__.py) not written yet")
def test_cli_publishes_and_prints_the_revision(hub, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    proc = _cli(["--out", str(folder), "--repo", REPO], {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["revision"] == hub.head(REPO) and result["tag"] == "v1" and hub.commit_count == 1
    assert TOKEN not in proc.stdout + proc.stderr



def test_dropped_rows_are_published_only_when_asked(hub, cfg, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    (folder / "dropped").mkdir()
    pl.DataFrame({"title": ["x"], "drop_reasons": [["empty"]]}).write_parquet(folder / "dropped" / "paired.parquet")
    [res] = publish(folder, cfg)
    assert not any(p.startswith("dropped/") for p in hub.files(REPO, res.revision))
    [res] = publish(folder, replace(cfg, include_dropped=True))
    assert "dropped/paired.parquet" in hub.files(REPO, res.revision)
    [res] = publish(folder, cfg)  # switched off again: the remote copy goes, like any stale data file
    assert not any(p.startswith("dropped/") for p in hub.files(REPO, res.revision))
