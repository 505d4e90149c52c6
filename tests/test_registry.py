import json
import os
import signal
from pathlib import Path

import pytest
import registry_writers
import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry, RegistryError

CFG = ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8)
META = ModelMeta(model=CFG, num_classes=3, classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3)


def tamper(uri: str, key: str) -> None:
    """Flip one byte of a stored object, behind the registry's back."""
    if uri.startswith("s3://"):
        import boto3

        bucket, _, prefix = uri[len("s3://") :].partition("/")
        client = boto3.client("s3")
        data = bytearray(client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
        data[-5] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(data))
    else:
        path = Path(uri) / key
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))


def _model(seed=0, freeze_depth=0):
    torch.manual_seed(seed)
    return build_segmenter(CFG.model_copy(update={"freeze_depth": freeze_depth}), 3)


def test_register_get_promote_and_list(registry_uri):
    reg = Registry(registry_uri)
    v1 = reg.register("fog", _model(1), META, {"miou": 0.5})
    v2 = reg.register("fog", _model(2), META, {"miou": 0.6})
    assert (v1, v2) == (1, 2)
    reg.set_alias("fog", 1, "production")
    model, meta, entry = reg.load("fog")  # production alias
    assert entry.version == 1 and torch.equal(model.head.weight, _model(1).head.weight)
    assert reg.load("fog@2")[2].version == 2
    rows = reg.list()
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["production"]), (2, [])]
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        reg.resolve("fog@staging")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.get_entry("fog", 9)
    assert [(h.alias, h.version, h.previous) for h in reg.history("fog")] == [("production", 1, None)]


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65, "a..b", "fog\n", "fog\nbar"])
def test_bad_domain_names_never_become_paths(tmp_path, name):
    with pytest.raises(RegistryError, match="invalid domain name"):
        Registry(tmp_path).register(name, _model(), META)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weights_fail_the_hash_check(registry_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEGMENT_CACHE", str(tmp_path / "cache"))
    reg = Registry(registry_uri)
    reg.register("night", _model(), META)
    tamper(registry_uri, f"night/blobs/{reg.get_entry('night', 1).sha256}.safetensors")
    with pytest.raises(RegistryError, match="does not match its manifest hash"):
        reg.load("night@1")


def test_delta_stores_only_changed_tensors_and_rebuilds(registry_uri):
    reg = Registry(registry_uri)
    base = _model(0)
    reg.register("clear", base, META)
    child = _model(0, freeze_depth=4)
    with torch.no_grad():  # a fine-tune that only moved the unfrozen part
        for _name, p in child.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    version = reg.register("fog", child, META, parent="clear@1")
    entry = reg.get_entry("fog", version)
    full = reg.get_entry("clear", 1)
    assert entry.base is not None and entry.base.ref == "clear@1"
    assert entry.bytes < full.bytes
    loaded, _, _ = reg.load(f"fog@{version}")
    for key, value in child.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(RegistryError, match="base of fog@1"):
        reg.remove("clear", 1)


def _writers(uri: str, count: int, n: int):
    """`n` writer processes registering `count` versions each, and the pipes their versions come on."""
    ctx = registry_writers.context()
    pipes = [ctx.Pipe(duplex=False) for _ in range(n)]
    procs = [
        ctx.Process(target=registry_writers.register, args=(uri, count, float(w), registry_writers.environment(), send))
        for w, (_, send) in enumerate(pipes)
    ]
    for proc in procs:
        proc.start()
    for _, send in pipes:
        send.close()  # the child holds its own end: a dead writer ends its pipe
    return procs, [recv for recv, _ in pipes]


def _drain(recv) -> list[int]:
    versions = []
    while True:
        try:
            versions.append(recv.recv())
        except EOFError:
            return versions


def test_concurrent_registrations_never_collide(registry_uri):
    # 4 processes x 4 registrations of one domain: versions 1..16, each exactly once, none lost.
    procs, pipes = _writers(registry_uri, 4, 4)
    versions = sorted(v for recv in pipes for v in _drain(recv))
    for proc in procs:
        proc.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs)
    assert versions == list(range(1, 17))
    reg = Registry(registry_uri)
    assert reg.versions("fog") == versions
    for v in versions:
        reg.load(f"fog@{v}")  # every version complete and hash-valid


def test_kill_9_mid_write_leaves_registry_readable(registry_uri):
    reg = Registry(registry_uri)
    reg.register("fog", _model(7), META)
    for written in (1, 2, 3):
        # Evidence first: the writer has finished `written` registrations and is inside the next
        # one (it registers in a loop), so the kill lands mid-write, not before the first byte.
        (proc,), (recv,) = _writers(registry_uri, 1000, 1)
        done = [recv.recv() for _ in range(written)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        versions = reg.versions("fog")
        assert versions[0] == 1 and set(done) <= set(versions)
        for v in versions:
            reg.load(f"fog@{v}")
        assert torch.equal(reg.load("fog@1")[0].head.weight, _model(7).head.weight)
    assert reg.register("fog", _model(), META) == max(reg.versions("fog"))


def test_registry_cli(tmp_path, cli):
    reg = Registry(tmp_path)
    reg.register("fog", _model(1), META, {"miou": 0.42})
    reg.register("fog", _model(2), META)

    def run(*args):
        return cli("registry", *args, "--registry", tmp_path)

    judged = run("promote", "fog@2")  # no run config to judge it by: it stays a candidate
    assert judged.returncode == 0 and "fog@2 is now candidate: no held-back score" in judged.stdout
    forced = run("promote", "fog@2", "--force", "--by", "alice")
    assert forced.returncode == 0 and "is now production: forced by alice" in forced.stdout
    assert Registry(tmp_path).history("fog")[-1].decision.forced_by == "alice"
    listing = run("ls").stdout.splitlines()
    assert listing[0].startswith("fog@1 - ") and "miou=0.42" in listing[0] and listing[1].startswith("fog@2 ")
    assert "production" in listing[1]
    assert json.loads(run("show", "fog@production").stdout)["version"] == 2
    refused = run("rm", "fog@2")
    assert refused.returncode == 2 and "aliased as production" in refused.stderr
    assert run("rm", "fog@1").returncode == 0 and Registry(tmp_path).versions("fog") == [2]
    bad = run("show", "../x@1")
    assert bad.returncode == 2 and "invalid domain name" in bad.stderr


def test_shared_loading_keeps_one_copy_of_the_base(tmp_path):
    from raysegment.config import ModelConfig
    from raysegment.models.io import ModelMeta
    from raysegment.models.segmenter import build_segmenter
    from raysegment.registry import SharedBases

    meta = ModelMeta(
        model=ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
        num_classes=3,
        classes=["a", "b", "c"],
        palette=[(0, 0, 0), (1, 1, 1), (2, 2, 2)],
    )
    torch.manual_seed(0)
    base = build_segmenter(meta.model, 3).eval()
    reg = Registry(tmp_path)
    reg.register("base", base, meta)
    for i, domain in enumerate(("fog", "night")):
        variant = build_segmenter(meta.model, 3).eval()
        variant.load_state_dict(base.state_dict())
        with torch.no_grad():
            variant.head.bias.fill_(float(i + 1))
        reg.register(domain, variant, meta, parent="base@1")
    bases = SharedBases()
    fog, _, _ = reg.load_shared("fog@1", bases)
    night, _, _ = reg.load_shared("night@1", bases)
    assert len(bases) == 1
    assert fog.encoder.conv_stem.weight.data_ptr() == night.encoder.conv_stem.weight.data_ptr()  # one copy
    assert fog.head.bias.data_ptr() != night.head.bias.data_ptr()
    x = torch.rand(1, 3, 32, 32)
    full, _, _ = reg.load("night@1")
    assert torch.allclose(night(x), full(x))


def test_version_numbers_are_never_reused_after_removal(registry_uri):
    reg = Registry(registry_uri)
    assert [reg.register("fog", _model(s), META) for s in range(3)] == [1, 2, 3]
    reg.remove("fog", 3)
    reg.remove("fog", 2)
    assert reg.versions("fog") == [1]
    assert reg.register("fog", _model(9), META) == 4  # not 2 or 3: a cache may still hold fog@3's weights
    with pytest.raises(RegistryError, match="no version 3"):
        reg.load("fog@3")


def test_racing_promotions_never_lose_an_alias(registry_uri):
    reg = Registry(registry_uri)
    reg.register("fog", _model(0), META)
    reg.register("fog", _model(1), META)
    ctx, rounds = registry_writers.context(), 20
    procs = [
        ctx.Process(target=registry_writers.promote, args=(registry_uri, w, rounds, registry_writers.environment()))
        for w in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs)
    # 80 read-modify-writes of one aliases.json: without compare-and-swap some would overwrite
    # others' aliases or history records.
    assert reg.aliases("fog") == {f"w{w}": 2 for w in range(4)}
    assert len(reg.history("fog")) == 4 * rounds


def test_remote_weights_are_cached_by_content_hash(s3_bucket, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAYSEGMENT_CACHE", str(cache))
    reg = Registry(f"{s3_bucket}/reg")
    reg.register("fog", _model(1), META)
    digest = reg.get_entry("fog", 1).sha256
    first, _, _ = reg.load("fog@1")
    assert [p.name for p in cache.iterdir()] == [f"{digest}.safetensors"]
    # A damaged local copy is never served: the hash check sends the replica back to the store.
    (cache / f"{digest}.safetensors").write_bytes(b"garbage")
    again, _, _ = Registry(f"{s3_bucket}/reg").load("fog@1")
    assert torch.equal(again.head.weight, first.head.weight)
    assert reg.register("fog", _model(2), META) == 2
    assert len(list(cache.iterdir())) == 1  # nothing fetched until fog@2 is loaded


@pytest.mark.parametrize("uri", ["gs://bucket/registry", "hdfs://x/y", "s3://"])
def test_unsupported_registry_uris_fail_with_a_reason(uri):
    with pytest.raises(RegistryError, match="not supported yet|no bucket"):
        Registry(uri)


def test_signatures_travel_with_a_version_and_leave_with_it(registry_uri):
    from raysegment.engine.signature import Signature

    reg = Registry(registry_uri)
    model = build_segmenter(CFG, 3)
    own = Signature([torch.rand(4, dtype=torch.float64)], [torch.rand(4, dtype=torch.float64) + 0.1], 7, 0.25)
    reg.register("base", model, META)
    version = reg.register("fog", model, META, parent="base@1", signatures={"own": own, "base@1": own})
    entry = reg.get_entry("fog", version)
    back = reg.signature(entry)
    assert back is not None and back.images == 7 and back.radius == 0.25
    assert torch.allclose(back.means[0], own.means[0].float().double())
    assert reg.signature(entry, "base@1") is not None and reg.signature(entry, "other@1") is None
    assert reg.signature(reg.get_entry("base", 1)) is None  # registered without one
    reg.remove("fog", version)
    assert Registry(registry_uri).store.children("fog/signatures") == []


class CountingStore:
    """A registry's real store, counting the requests made through it."""

    def __init__(self, store) -> None:
        self._store, self.requests = store, 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.requests += 1
            return attr(*args, **kwargs)

        return counted


def _requests(uri: str, read) -> int:
    reg = Registry(uri)
    reg.store = counting = CountingStore(reg.store)
    read(reg)
    return counting.requests


def test_a_domains_versions_are_read_in_requests_that_do_not_grow_with_them(registry_uri):
    reg = Registry(registry_uri)
    reg.register("fog", _model(0), META)
    one = _requests(registry_uri, lambda r: r.entries("fog"))
    for seed in range(1, 6):
        reg.register("fog", _model(seed), META, parent="fog@1", lineage={"trial_id": f"t{seed}"})
    six = _requests(registry_uri, lambda r: r.entries("fog"))
    assert one == six == 2  # the listing and the index, for 1 version or 6
    entries = reg.entries("fog")
    assert [e.version for e in entries] == list(range(1, 7))
    assert [e for e in entries] == [reg.get_entry("fog", v) for v in range(1, 7)]
    reg.remove("fog", 6)
    assert [e.version for e in Registry(registry_uri).entries("fog")] == list(range(1, 6))


def test_a_version_the_index_missed_is_still_listed(tmp_path):
    """A writer killed between its manifest and the index update: the listing is the truth, and
    a corrupt index only makes reads slower."""
    reg = Registry(tmp_path)
    for seed in range(3):
        reg.register("fog", _model(seed), META)
    index = tmp_path / "fog" / "index.json"
    doc = json.loads(index.read_text())
    del doc["versions"]["3"]
    index.write_text(json.dumps(doc))
    assert [e.version for e in reg.entries("fog")] == [1, 2, 3]
    assert reg.entries("fog")[2] == reg.get_entry("fog", 3)
    index.write_text("{not json")
    assert [e.version for e in reg.entries("fog")] == [1, 2, 3]
    reg.register("fog", _model(9), META)  # a registration starts the index again
    assert [e.version for e in reg.entries("fog")] == [1, 2, 3, 4] and "4" in json.loads(index.read_text())["versions"]
