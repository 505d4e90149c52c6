"""Audit records: typed on the way in and out, stored with only what happened, old ones still readable."""

import json

import pytest

from raysegment.models.rebuild import load_model
from raysegment.registry import CorruptRegistry, Registry
from raysegment.registry.audit import AuditRecord, LoopStep, Retired, RolledBack
from raysegment.registry.promotion import CANDIDATE, retire


def test_records_are_stored_with_only_their_cause_and_read_back_typed(tmp_path, source_model_dir):
    reg = Registry(tmp_path)
    model, meta = load_model(source_model_dir)
    reg.register("fog", model, meta)
    reg.set_alias("fog", 1, CANDIDATE)
    reg.note("fog", AuditRecord(loop=LoopStep(step="search", scores={"adabn": (0.5, 0.4)}, best="adabn")))
    retire(reg, "fog", 1, "lost")
    stored = json.loads((tmp_path / "fog" / "aliases.json").read_text())["history"]
    assert set(stored[0]) == {"time", "alias", "version"}  # no previous alias, no cause: left out
    assert stored[1]["loop"] == {"step": "search", "scores": {"adabn": [0.5, 0.4]}, "best": "adabn"}
    assert stored[2]["retired"] == {"version": 1, "reason": "lost"} and stored[2]["previous"] == 1
    move, step, retired = reg.history("fog")
    assert move.alias == CANDIDATE and move.previous is None and not move.decides
    assert step.loop.scores == {"adabn": (0.5, 0.4)} and step.alias is None
    assert retired.retired == Retired(version=1, reason="lost") and retired.version is None and retired.decides


def test_a_record_written_before_the_type_reads_and_a_broken_one_is_corrupt(tmp_path):
    old = {"time": 1.0, "alias": "production", "version": 2, "previous": 3, "rollback": {"from": 3, "by": None}}
    extra = {"time": 2.0, "loop": {"step": "start", "production": "fog@2", "captured": 4}, "from_an_older_tool": 1}
    (tmp_path / "fog").mkdir()
    (tmp_path / "fog" / "aliases.json").write_text(json.dumps({"aliases": {"production": 2}, "history": [old, extra]}))
    rolled, started = Registry(tmp_path).history("fog")
    assert rolled.rollback == RolledBack(from_=3) and rolled.decides
    assert started.loop.captured == 4 and started.model_dump(mode="json")["from_an_older_tool"] == 1
    broken = {"time": 3.0, "loop": {"step": "dance"}}
    (tmp_path / "fog" / "aliases.json").write_text(json.dumps({"aliases": {}, "history": [old, broken]}))
    with pytest.raises(CorruptRegistry, match="not an audit record"):
        Registry(tmp_path).history("fog")
