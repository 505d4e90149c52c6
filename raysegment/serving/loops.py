"""Loop turns started over HTTP (`POST /v1/domains/{d}/loop`): one `raysegment loop DOMAIN` run
(adapt production to its captured traffic, shadow, then the one promotion policy decides) as a
child process of the gateway, so the training never runs on the request loop; at most one turn per
domain at a time, stopped after `loop_timeout_s`. Its log and outcome are kept for `GET`."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from raysegment.serving.errors import Conflict, UnknownLoopTurn
from raysegment.serving.schemas import LoopTurnStatus


@dataclass
class TurnProcess:
    id: str
    domain: str
    started_by: str
    started: float
    process: subprocess.Popen
    log: Path
    ended: float | None = None
    notes: list[str] = field(default_factory=list)

    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        if self.ended is None:
            self.ended = time.time()
        return "succeeded" if code == 0 else "failed"

    def report(self) -> LoopTurnStatus:
        state = self.state()
        lines = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        outcome = None
        if state == "succeeded" and lines:
            try:
                outcome = json.loads(lines[-1])
            except json.JSONDecodeError:
                outcome = None
        return LoopTurnStatus(
            id=self.id,
            domain=self.domain,
            state=state,
            started_by=self.started_by,
            started=self.started,
            ended=self.ended,
            exit_code=self.process.returncode,
            log_tail=[line[:300] for line in lines[-20:]],
            outcome=outcome,
            notes=self.notes,
        )


class TurnProcesses:
    def __init__(self, registry: str, timeout_s: float, keep: int = 64) -> None:
        self.registry, self.timeout_s, self.keep = registry, timeout_s, keep
        self.turns: dict[str, TurnProcess] = {}
        self.folder = Path(tempfile.mkdtemp(prefix="raysegment-loops-"))

    def start(self, domain: str, actor: str) -> TurnProcess:
        self._expire()
        running = [t for t in self.turns.values() if t.domain == domain and t.state() == "running"]
        if running:
            raise Conflict("a loop turn is running", f"{domain} already has loop turn {running[0].id}")
        turn_id = uuid.uuid4().hex[:12]
        log = self.folder / f"{turn_id}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "raysegment.cli", "loop", domain, "--registry", self.registry],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        turn = self.turns[turn_id] = TurnProcess(turn_id, domain, actor, time.time(), process, log)
        while len(self.turns) > self.keep:  # forget the oldest finished turns
            oldest = next((t for t in self.turns.values() if t.state() != "running"), None)
            if oldest is None:
                break
            del self.turns[oldest.id]
        return turn

    def get(self, turn_id: str) -> TurnProcess:
        self._expire()
        turn = self.turns.get(turn_id)
        if turn is None:
            raise UnknownLoopTurn(f"no loop turn {turn_id[:40]!r} on this gateway")
        return turn

    def _expire(self) -> None:
        now = time.time()
        for turn in self.turns.values():
            if turn.state() == "running" and now - turn.started > self.timeout_s:
                turn.process.kill()
                turn.process.wait()
                turn.notes.append(f"stopped after {self.timeout_s:g} s (loop_timeout_s)")
