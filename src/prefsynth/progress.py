"""Progress that tells the truth: tokens/s from the tokens the engine has generated so far, and an ETA from tokens.

Counting finished requests lies for batched engines: every request runs at once and most finish near the end, so a
rate computed from finished reviews reads ~14 tok/s for the first 40 s of a default run and the ETA is meaningless.
`Meter` reads the engine's running token count (`Backend.tokens_generated`, in-flight requests included, where the
engine reports it) and estimates what is left from the mean length of the reviews finished so far (`max_tokens`
before any has finished). Lines go to the terminal bar and, every `every` seconds, to `sink` (the Prefect run log
inside a flow: `orchestrate.stage` sets it for the stage it runs; else the "prefsynth" logger).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable

log = logging.getLogger("prefsynth.progress")

sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("prefsynth_progress_sink",
                                                                                    default=None)


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Meter:
    """Rate and ETA of one batch of requests on one engine."""

    def __init__(self, what: str, total: int, max_tokens: int, engine_tokens: Callable[[], int | None],
                 every: float = 15.0, clock: Callable[[], float] = time.monotonic, log_without_sink: bool = True):
        self.what, self.total, self.max_tokens = what, total, max_tokens
        self.log_without_sink = log_without_sink  # False when a terminal bar already shows the same figures
        self.engine_tokens, self.every, self.clock = engine_tokens, every, clock
        self.t0 = self.last_line = clock()
        self.start_tokens = engine_tokens()
        self.done = 0
        self.done_tokens = 0

    def finished(self, tokens: int) -> None:
        self.done += 1
        self.done_tokens += tokens

    def tokens(self) -> int:
        """Tokens generated so far for this batch: the engine's running count when it has one, else those of the
        finished requests (an engine that only reports at the end)."""
        now = self.engine_tokens()
        if now is None or self.start_tokens is None:
            return self.done_tokens
        return max(now - self.start_tokens, self.done_tokens)

    def rate(self) -> float:
        elapsed = self.clock() - self.t0
        return self.tokens() / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left: expected tokens of the whole batch minus those generated, at the current rate."""
        rate = self.rate()
        if rate <= 0:
            return None
        per_review = self.done_tokens / self.done if self.done else self.max_tokens
        left = max(0.0, per_review * self.total - self.tokens())
        return 0.0 if self.done == self.total else left / rate

    def postfix(self) -> dict[str, str]:
        eta = self.eta()
        return {"tok_s": f"{self.rate():.0f}", "eta": "?" if eta is None else fmt_seconds(eta)}

    def line(self) -> str:
        eta = self.eta()
        return (f"{self.what}: {self.done}/{self.total} done, {self.tokens()} tokens in "
                f"{fmt_seconds(self.clock() - self.t0)} ({self.rate():.0f} tok/s), about "
                f"{'?' if eta is None else fmt_seconds(eta)} left")

    def tick(self, force: bool = False) -> None:
        """Send a progress line when `every` seconds have passed since the last one (or `force`)."""
        now = self.clock()
        if force or now - self.last_line >= self.every:
            self.last_line = now
            out = sink.get()
            if out is not None:
                out(self.line())
            elif self.log_without_sink:
                log.info("%s", self.line())
