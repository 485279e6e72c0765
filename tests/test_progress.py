"""progress: the rate counts tokens the engine has generated, in-flight ones included; the ETA comes from tokens."""

from __future__ import annotations

from prefsynth import progress
from prefsynth.progress import Meter, fmt_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rate_and_eta_before_any_request_finishes():
    clock, engine = Clock(), {"tokens": 1000}
    m = Meter("gen", total=10, max_tokens=100, engine_tokens=lambda: engine["tokens"], clock=clock)
    clock.t, engine["tokens"] = 10.0, 1000 + 200  # nothing finished yet, 200 tokens generated in 10 s
    assert m.rate() == 20.0
    assert m.eta() == (10 * 100 - 200) / 20.0  # max_tokens per review until one finishes
    m.finished(50)  # one finished at 50 tokens: the estimate uses the observed length
    clock.t, engine["tokens"] = 20.0, 1000 + 400
    assert m.rate() == 20.0 and m.eta() == (10 * 50 - 400) / 20.0


def test_an_engine_without_a_running_count_falls_back_to_finished_requests():
    clock = Clock()
    m = Meter("gen", total=2, max_tokens=100, engine_tokens=lambda: None, clock=clock)
    clock.t = 4.0
    assert m.rate() == 0.0 and m.eta() is None and m.postfix()["eta"] == "?"
    m.finished(40)
    assert m.rate() == 10.0
    m.finished(40)
    assert m.eta() == 0.0


def test_lines_go_to_the_stage_sink_every_so_often():
    clock, lines = Clock(), []
    m = Meter("gen", total=4, max_tokens=10, engine_tokens=lambda: 0, every=15.0, clock=clock)
    token = progress.sink.set(lines.append)
    try:
        clock.t = 5.0
        m.tick()
        clock.t = 16.0
        m.tick()
        m.tick(force=True)
    finally:
        progress.sink.reset(token)
    assert len(lines) == 2 and lines[0].startswith("gen: 0/4 done, 0 tokens in 0:16")


def test_fmt_seconds():
    assert fmt_seconds(75) == "1:15" and fmt_seconds(3725) == "1:02:05" and fmt_seconds(-3) == "0:00"
