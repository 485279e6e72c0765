"""Fault injection for crash tests: `PREFSYNTH_KILL_AT=<point>:<n>` kills this process with SIGKILL the n-th time
it passes `<point>`; `<point>:<n>:group` kills its whole process group (a Prefect worker and the flow run it
started: the machine dies); with `PREFSYNTH_KILL_ONCE=<file>` only the first process to get there dies (it creates
the file), so a re-submitted run on the same worker is left alone. Unset (always, outside tests), `point()` is one
dictionary lookup.

Named points: journal.add (a review or score was just journaled), shard.before_rename (a shard's bytes are written
under a temporary name), journal.before_remove (a journal was compacted but not yet deleted), judge.scored (the LLM
judge has scored a review, before it is journaled), write.before_swap (the new dataset folder is complete under its
temporary name), write.after_swap.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("PREFSYNTH_KILL_AT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    nth, _, how = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] < int(nth or 1):
        return
    if once := os.environ.get("PREFSYNTH_KILL_ONCE"):
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    if how == "group":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
