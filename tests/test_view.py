"""view: the dataset page, on a real dataset built from the tiny model.

The JSON API (counts, filters, sort, paging, bad queries), the page in a real headless Chromium driven by Selenium
(rows, a filter, a search, a row opened, markup in the data shown as text), the `prefsynth view` command (URL,
serving, Ctrl-C) and its one-line errors: a missing folder, a folder without parquet, a Hub repo that is missing
or unreachable, a port in use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from prefsynth.errors import UserError
from prefsynth.view import Dataset, ViewServer
from test_train_run import built  # noqa: F401 (a fixture: collect -> ... -> write on the tiny model, both configs)

XSS = "<script>window.__xss=1</script><b>bold</b>"
REASONS = [["repeat"], ["repeat", "echo"], ["inconsistent"]]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(built, tmp_path_factory) -> Path:  # noqa: F811 (built: the imported fixture)
    """The built dataset with markup in one title and one review, and dropped rows: the build's own dropped file
    when it writes one, plus three kept rows copied in with drop reasons (so every filter has something to find)."""
    out = tmp_path_factory.mktemp("view") / "ds"
    shutil.copytree(built, out)
    path = out / "paired" / "train.parquet"
    df = pl.read_parquet(path)
    rows = df.to_dicts()
    rows[0]["title"] = f"{XSS} {rows[0]['title']}"
    rows[0]["chosen"][-1]["content"] = f"{XSS} {rows[0]['chosen'][-1]['content']}"
    pl.DataFrame(rows, schema=df.schema).write_parquet(path)
    extra = df.slice(1, len(REASONS)).with_columns(
        pl.col("title") + " (dropped copy)", split=pl.lit("train"),
        drop_reasons=pl.Series(REASONS, dtype=pl.List(pl.String)),
        chosen_reasons=pl.Series(REASONS, dtype=pl.List(pl.String)),
        rejected_reasons=pl.Series([[]] * len(REASONS), dtype=pl.List(pl.String)))
    dropped = out / "dropped" / "paired.parquet"
    if dropped.exists():
        extra = pl.concat([pl.read_parquet(dropped), extra], how="diagonal_relaxed")
    dropped.parent.mkdir(exist_ok=True)
    extra.write_parquet(dropped)
    return out


def expected(folder: Path) -> dict:
    """What the files hold, read independently of prefsynth.view."""
    kept = {p.stem: pl.read_parquet(p) for p in sorted((folder / "paired").glob("*.parquet"))}
    dropped = pl.read_parquet(folder / "dropped" / "paired.parquet")
    every = pl.concat([*kept.values(), dropped], how="diagonal_relaxed")
    return {"kept": sum(f.height for f in kept.values()), "splits": {s: f.height for s, f in kept.items()},
            "dropped": dropped.height, "every": every,
            "repeat": int(dropped["drop_reasons"].list.contains("repeat").sum()),
            "unpaired": sum(pl.read_parquet(p).height for p in (folder / "unpaired").glob("*.parquet"))}


@pytest.fixture(scope="module")
def server(folder):
    srv = ViewServer(Dataset.open(str(folder)))
    srv.start_thread()
    yield srv
    srv.stop()


def get(server: ViewServer, path: str, host: str | None = None) -> tuple[int, object]:
    req = urllib.request.Request(server.url + path.lstrip("/"), headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if e.headers.get_content_type() == "application/json" else body.decode()


def headless_chromium():
    """Debian's Chromium through its own chromedriver (never a Selenium Manager download), headless. Skips the
    test without them, or fails it on CI, where `make install` must have installed them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = (f"the browser test needs {', '.join(missing)}: run `make install` (as root, it installs Debian's "
               f"chromium and chromium-driver) or `apt-get install chromium chromium-driver`")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="prefsynth-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-extensions", "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(arg)  # --no-sandbox: Chromium refuses to run as root (CI containers) without it
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # script errors and CSP violations
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    driver.profile_dir = profile
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ the API


def test_api_counts_filters_sort_and_paging(server, folder):
    x = expected(folder)
    status, meta = get(server, "/api/meta")
    paired = meta["configs"]["paired"]
    assert status == 200 and set(meta["configs"]) == {"paired", "unpaired"}
    assert paired["status"] == {"kept": x["kept"], "dropped": x["dropped"]}
    assert paired["reasons"]["repeat"] == x["repeat"] and paired["reasons"]["inconsistent"] >= 1
    assert {"chosen_judge_negative", "rejected_judge_negative"} <= set(paired["scores"])
    assert "consistent" in paired["flags"] and paired["texts"] == ["prompt", "chosen", "rejected"]

    def total(query: str) -> int:
        code, body = get(server, "/api/rows?config=paired&" + query)
        assert code == 200, body
        return body["total"]

    assert total("status=kept") == x["kept"] and total("status=all") == x["kept"] + x["dropped"]
    assert total("status=dropped&reason=repeat") == x["repeat"]
    assert total("split=validation&status=kept") == x["splits"]["validation"]
    high = x["every"].filter(pl.col("chosen_judge_negative").is_between(0.5, 0.9)).height
    assert total("status=all&score=chosen_judge_negative&min=0.5&max=0.9") == high
    assert total("status=all&q=%3CSCRIPT") == 1  # case-insensitive, literal (no regex)

    _, body = get(server, "/api/rows?config=paired&status=all&sort=-chosen_judge_negative&limit=500")
    scores = [r["chosen_judge_negative"] for r in body["rows"]]
    assert len(scores) == x["kept"] + x["dropped"] and scores == sorted(scores, reverse=True)
    _, first = get(server, "/api/rows?config=paired&status=all&sort=title&limit=1")
    assert first["rows"][0]["title"].startswith(XSS)  # "<" sorts before letters
    _, page = get(server, "/api/rows?config=paired&status=all&sort=title&offset=5&limit=5")
    _, whole = get(server, "/api/rows?config=paired&status=all&sort=title&limit=10")
    assert [r["_id"] for r in page["rows"]] == [r["_id"] for r in whole["rows"][5:]]

    _, row = get(server, f"/api/row?config=paired&id={first['rows'][0]['_id']}")
    assert row["row"]["chosen"][-1]["content"].startswith(XSS) and row["row"]["status"] == "kept"
    assert not any(k.startswith("_text_") for k in row["row"])
    _, unpaired = get(server, "/api/rows?config=unpaired&status=kept&limit=2")
    assert unpaired["total"] == x["unpaired"] and isinstance(unpaired["rows"][0]["label"], bool)
    assert unpaired["rows"][0]["completion"]

    for query, code in (("rows?config=paired&status=bogus", 400), ("rows?config=paired&min=x", 400),
                        ("rows?config=nope", 400), ("rows?config=paired&limit=0", 400),
                        ("row?config=paired&id=99999999", 400), ("nothing", 404)):
        status, body = get(server, "/api/" + query)
        assert status == code and body["error"], (query, body)
    assert get(server, "/api/meta", host="evil.example:80")[0] == 403  # DNS rebinding


# ----------------------------------------------------------------------------------------------------- the page


def test_page_in_chromium_filters_searches_opens_and_escapes(server, folder, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    x, d = expected(folder), browser
    renders = [0]

    def rendered(check=lambda: True):
        """Wait for the next render of the rows, then for `check`."""
        WebDriverWait(d, 15).until(lambda _: d.execute_script("return window.__view.renders") > renders[0])
        renders[0] = d.execute_script("return window.__view.renders")
        WebDriverWait(d, 15).until(lambda _: check())

    def cards():
        return d.find_elements(By.CSS_SELECTOR, "#rows article.row")

    d.get(server.url)
    rendered()
    assert len(cards()) == min(50, x["kept"])
    assert f"of {x['kept']} matching" in d.find_element(By.ID, "summary").text

    Select(d.find_element(By.ID, "reason")).select_by_value("repeat")  # switches the status to dropped
    rendered(lambda: len(cards()) == x["repeat"])
    assert Select(d.find_element(By.ID, "status")).first_selected_option.get_attribute("value") == "dropped"
    assert all("dropped" in c.get_attribute("class") and "repeat" in c.text for c in cards())
    sides = [c.find_element(By.CSS_SELECTOR, ".side.chosen .sidehead").text for c in cards()]
    assert all("repeat" in t for t in sides)  # the side that failed says so

    Select(d.find_element(By.ID, "reason")).select_by_value("")
    rendered()
    Select(d.find_element(By.ID, "status")).select_by_value("all")
    rendered(lambda: len(cards()) == min(50, x["kept"] + x["dropped"]))
    d.find_element(By.ID, "q").send_keys("script>")
    rendered(lambda: len(cards()) == 1)
    title = cards()[0].find_element(By.CSS_SELECTOR, ".title")
    assert title.text.startswith(XSS)  # the markup, as text
    assert "&q=script%3E" in d.current_url  # the state is in the URL, for a link to this view

    title.click()
    WebDriverWait(d, 10).until(lambda _: d.find_element(By.ID, "detail").is_displayed())
    full = x["every"].filter(pl.col("title").str.starts_with(XSS))["chosen"][0][-1]["content"]
    assert full.startswith(XSS) and full in d.execute_script("return document.getElementById('detail-body')"
                                                             ".textContent")  # the whole review, as text
    assert d.execute_script("return window.__xss") is None  # no script from the data ran
    assert not d.find_elements(By.CSS_SELECTOR, "#rows b, #detail b, body script:not([nonce])")
    d.find_element(By.ID, "close").click()

    d.find_element(By.ID, "q").clear()  # the view to look at: every row, the one with markup first
    d.execute_script("const q = document.getElementById('q'); q.dispatchEvent(new Event('input'));")
    rendered()
    Select(d.find_element(By.ID, "sort")).select_by_value("title")
    rendered(lambda: cards()[0].find_element(By.CSS_SELECTOR, ".title").text.startswith(XSS))
    shot = Path(os.environ.get("PREFSYNTH_VIEW_SCREENSHOT") or tmp_path / "viewer.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [e for e in d.get_log("browser") if e["level"] == "SEVERE"]  # no script error, no CSP violation


# ----------------------------------------------------------------------------------------------------- the command


def test_command_prints_the_url_serves_and_stops_on_ctrl_c(folder):
    proc = subprocess.Popen([sys.executable, "-m", "prefsynth", "view", str(folder), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "api/meta", timeout=10) as r:
            assert json.loads(r.read())["configs"]["paired"]["status"]["kept"] == expected(folder)["kept"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out, err


def test_user_errors_are_one_line(folder, tmp_path, capsys):
    from prefsynth.cli import main

    (tmp_path / "empty" / "paired").mkdir(parents=True)
    cases = [(str(tmp_path / "missing"), "is not a folder"),
             (str(tmp_path / "empty"), "has no paired/ or unpaired/ parquet files")]
    for path, message in cases:
        rc = main(["view", path, "--no-browser"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            ViewServer(Dataset.open(str(folder)), taken.getsockname()[1])


def test_hub_repo_opens_and_missing_or_unreachable_is_one_line(built, hub, monkeypatch, free_port):  # noqa: F811
    from prefsynth.publish import PublishConfig, publish

    publish(built, PublishConfig(repo_id="tester/view", endpoint=hub.endpoint, max_retries=0))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    ds = Dataset.open("tester/view")
    assert ds.tables["paired"].frame.height == sum(pl.read_parquet(p).height for p in (built / "paired").glob("*"))
    with pytest.raises(UserError, match="dataset repo tester/nothing not found on") as err:
        Dataset.open("tester/nothing")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match="cannot be reached|cannot connect") as err2:
        Dataset.open("tester/elsewhere")
    assert "\n" not in str(err.value) + str(err2.value)
