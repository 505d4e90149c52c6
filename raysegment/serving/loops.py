"""Loop turns started over HTTP (`POST /v1/domains/{d}/loop`): adapt production to its captured
traffic, shadow, then the one promotion policy decides (`distributed.closed_loop.run_loop`).

Each turn runs in its own detached, named Ray actor (`LoopTurnRunner`, reserving no CPU: like the
loop run as a Ray Job, it trains on what the node has), so training never runs on a gateway's
request loop and a gateway replica that goes away does not take the turn with it. The turn's
status lives in the registry's store (`traffic/<domain>/loop-turns/<id>.json`), written by the
actor as it goes, so any gateway replica answers a poll. One turn per domain at a time: the
domain's `running` marker is created only if absent. A turn past `loop_timeout_s`, or whose actor
died, is ended by whichever replica polls it.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

import ray

from raysegment.config import LoopConfig
from raysegment.distributed.closed_loop import run_loop
from raysegment.registry.store import open_store
from raysegment.registry.versions import TRAFFIC
from raysegment.serving.errors import Conflict, UnknownLoopTurn
from raysegment.serving.schemas import LoopTurnStatus

TURNS = "loop-turns"
RUNNING = "running"  # traffic/<domain>/loop-turns/running: the id of the domain's running turn
NAMESPACE = "raysegment-loop-turns"  # the runners' Ray namespace, whatever app the gateway is in
TURN_ID = re.compile(r"[0-9a-f]{12}")
LOG_TAIL = 20


def runner_name(turn_id: str) -> str:
    return f"turn-{turn_id}"


class TurnRecords:
    """The loop turns' status documents in a registry's store: what every gateway replica reads."""

    def __init__(self, registry_uri: str) -> None:
        self.store = open_store(registry_uri)

    def _key(self, domain: str, name: str) -> str:
        return f"{TRAFFIC}/{domain}/{TURNS}/{name}"

    def read(self, domain: str, turn_id: str) -> LoopTurnStatus | None:
        data = self.store.get(self._key(domain, f"{turn_id}.json"))
        return None if data is None else LoopTurnStatus.model_validate_json(data)

    def write(self, status: LoopTurnStatus) -> None:
        self.store.put(self._key(status.domain, f"{status.id}.json"), status.model_dump_json().encode())

    def claim(self, domain: str, turn_id: str) -> bool:
        """Take the domain's running marker for `turn_id`; False when another turn holds it."""
        return self.store.put_new(self._key(domain, RUNNING), turn_id.encode())

    def holder(self, domain: str) -> str | None:
        data = self.store.get(self._key(domain, RUNNING))
        return None if data is None else data.decode()

    def release(self, domain: str, turn_id: str) -> None:
        if self.holder(domain) == turn_id:
            self.store.delete(self._key(domain, RUNNING))


class TurnRunner:
    """One loop turn in its own worker process; it records its progress and its end, then exits."""

    def run(self, registry_uri: str, started: LoopTurnStatus) -> None:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))  # a no-CPU actor gets one thread by default
        records, lines = TurnRecords(registry_uri), list[str]()

        def log(line: str) -> None:
            lines.append(line)
            records.write(started.model_copy(update={"log_tail": [x[:300] for x in lines[-LOG_TAIL:]]}))

        try:
            outcome = run_loop(registry_uri, started.domain, LoopConfig(), log=log)
            end: dict[str, Any] = {"state": "succeeded", "exit_code": 0, "outcome": outcome}
        except Exception as exc:  # the turn's failure is its record's, not the service's
            log(f"{type(exc).__name__}: {str(exc)[:300]}")
            end = {"state": "failed", "exit_code": 1}
        tail = [x[:300] for x in lines[-LOG_TAIL:]]
        records.write(started.model_copy(update={**end, "ended": time.time(), "log_tail": tail}))
        records.release(started.domain, started.id)
        ray.actor.exit_actor()


LoopTurnRunner: Any = ray.remote(num_cpus=0)(TurnRunner)  # the actor class (Ray's wrapper is untyped)


class LoopTurns:
    """What a gateway replica does with loop turns: start one, read one, end one that overran."""

    def __init__(self, registry_uri: str, timeout_s: float) -> None:
        self.registry_uri, self.timeout_s = registry_uri, timeout_s
        self.records = TurnRecords(registry_uri)

    def start(self, domain: str, actor: str) -> LoopTurnStatus:
        holder = self.records.holder(domain)
        if holder is not None and self.get(domain, holder).state == "running":
            raise Conflict("a loop turn is running", f"{domain} already has loop turn {holder}")
        turn_id = uuid.uuid4().hex[:12]
        if not self.records.claim(domain, turn_id):  # another replica started one a moment ago
            raise Conflict("a loop turn is running", f"{domain} already has loop turn {self.records.holder(domain)}")
        status = LoopTurnStatus(id=turn_id, domain=domain, state="running", started_by=actor, started=time.time())
        self.records.write(status)
        runner = LoopTurnRunner.options(name=runner_name(turn_id), namespace=NAMESPACE, lifetime="detached").remote()
        runner.run.remote(self.registry_uri, status)
        return status

    def get(self, domain: str, turn_id: str) -> LoopTurnStatus:
        """The turn's status; a running turn whose runner is gone, or that overran, is ended here."""
        status = self.records.read(domain, turn_id) if TURN_ID.fullmatch(turn_id) else None
        if status is None:
            raise UnknownLoopTurn(f"no loop turn {turn_id[:40]!r} of {domain!r}")
        if status.state != "running":
            return status
        try:
            runner = ray.get_actor(runner_name(turn_id), namespace=NAMESPACE)
        except ValueError:
            runner = None
        if runner is not None and time.time() - status.started <= self.timeout_s:
            return status
        latest = self.records.read(domain, turn_id) or status  # it may have ended just now
        if latest.state != "running":
            return latest
        if runner is not None:
            ray.kill(runner)
        note = f"stopped after {self.timeout_s:g} s (loop_timeout_s)" if runner is not None else "its runner is gone"
        ended = latest.model_copy(update={"state": "failed", "ended": time.time(), "notes": [*latest.notes, note]})
        self.records.write(ended)
        self.records.release(domain, turn_id)
        return ended
