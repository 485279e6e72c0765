"""The Prefect automation that turns a dead worker's runs from Running into Crashed (Prefect's documented zombie
detection), so that a build waiting on shard runs re-submits them (prefsynth.fanout).

Workers started by scripts/worker.sh send a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30)
for each flow run; when none (nor a final state) follows within PREFSYNTH_ZOMBIE_SECONDS (90), the run is marked
Crashed. `make serve` runs this file; running it again changes nothing.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python flows/automations.py
"""

from __future__ import annotations

import os
from datetime import timedelta

NAME = "prefsynth: crash flow runs whose heartbeats stopped"


def zombie_automation(within_seconds: float):
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=NAME,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: its worker or machine died")],
    )


def ensure(within_seconds: float | None = None) -> str:
    """Create the automation unless one of this name exists; returns what was done."""
    from prefect.automations import Automation

    within = within_seconds or float(os.environ.get("PREFSYNTH_ZOMBIE_SECONDS", "90"))
    try:
        existing = Automation.read(name=NAME)
    except ValueError:
        existing = None
    if existing is not None:
        return f"automation '{NAME}' already exists"
    zombie_automation(within).create()
    return f"created automation '{NAME}' (Crashed after {within:.0f} s without a heartbeat)"


if __name__ == "__main__":
    print(ensure())
