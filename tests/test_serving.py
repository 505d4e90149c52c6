"""Ray Serve app on the session cluster, exercised with real HTTP requests."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, free_port, gray_png, many_scan_jpeg, miscalibrated, png_chunk
from conftest import constant_model as answering
from PIL import Image

from raysegment.config import ModelConfig, ResizeConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry
from raysegment.serving.config import ClosedLoop, Limits, Online, Replicas, ServeConfig

CLASSES = ["road", "sky", "car", "tree"]
META = ModelMeta(
    model=ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
    num_classes=4,
    classes=CLASSES,
    palette=[(128, 64, 128), (70, 130, 180), (0, 0, 142), (107, 142, 35)],
)


def constant_model(cls: int) -> torch.nn.Module:
    return answering(META, cls)


FOREIGN = {  # domain -> (the meta of a model another library builds, the class it answers)
    "smp-unet": (
        META.model_copy(update={"model": ModelConfig(library="smp", arch="Unet", backbone="tu-test_efficientnet")}),
        2,
    ),
    "tv-deeplab": (
        META.model_copy(update={"model": ModelConfig(library="torchvision", arch="deeplabv3_mobilenet_v3_large")}),
        3,
    ),
}


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG: a few KB on the wire whose decoded RGB would take width*height*3 bytes."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def png(width=48, height=32, fmt="PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        buf, fmt, **kwargs
    )
    return buf.getvalue()


def apng() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32)).save(buf, "PNG", save_all=True, append_images=[Image.new("RGB", (48, 32), "white")])
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve

    from raysegment.serving.app import build_app

    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    reg.register("base", constant_model(0), META)
    for i, domain in enumerate(["fog", "night", "rain"], start=1):
        reg.register(domain, constant_model(i), META, {"val_miou": 0.5 + i / 10}, parent="base@1")
        reg.set_alias(domain, 1, "production")
    reg.register("fog", constant_model(0), META, parent="base@1")  # fog@2: not production
    scaled = META.model_copy(update={"resize": ResizeConfig(short_side=16)})  # trained at a 16 px short side
    reg.register("scaled", constant_model(3), scaled, parent="base@1")
    reg.set_alias("scaled", 1, "production")
    for domain, (meta, cls) in FOREIGN.items():
        reg.register(domain, answering(meta, cls), meta)
        reg.set_alias(domain, 1, "production")
    reg.register("broken", constant_model(1), META, parent="base@1")
    (root / "broken" / "aliases.json").write_text('{"production": 1,')  # torn: this domain alone is unavailable
    reg.register("tampered", constant_model(2), META, parent="base@1")
    weights = next((root / "tampered" / "blobs").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # fails its manifest hash on the replica
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=str(root),
        auth="none",
        limits=Limits(max_image_bytes=200_000, max_pixels=512 * 512, body_timeout_s=3),
        # batch_wait_timeout_s: the production default (0.05 measured no faster or slower under load)
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.25, ingress_cpus=0.1, batch_wait_timeout_s=0.01),
    )
    serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_health_docs_and_domain_listing(served):
    assert httpx.get(f"{served}/healthz").json() == {"status": "degraded", "domains": 9, "unavailable": ["broken"]}
    assert httpx.get(f"{served}/docs").status_code == 200
    domains = httpx.get(f"{served}/v1/domains").json()["domains"]
    assert domains["fog"]["aliases"] == {"production": 1} and len(domains["fog"]["versions"]) == 2
    assert domains["night"]["versions"][0]["metrics"]["val_miou"] == pytest.approx(0.7)
    assert domains["broken"]["error"] == "domain unavailable" and "corrupt" in domains["broken"]["detail"]


def test_chunked_bodies_are_capped_while_streaming(served):
    sent = []

    def chunks():  # no content-length: only counting while reading can stop it
        for _ in range(100):
            sent.append(1)
            yield b"\x89PNG\r\n\x1a\n" + b"0" * 10_000

    r = httpx.post(f"{served}/v1/domains/fog/segment", content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "image too large"
    assert httpx.post(f"{served}/v1/domains/fog/segment", content=png()).status_code == 200


def test_16_bit_palette_gray_and_rgba_uploads_segment_at_their_size(served):
    values = (np.arange(32 * 48).reshape(32, 48) % 256).astype(np.uint8)
    for image in (
        Image.fromarray(values.astype(np.uint16) * 257),
        Image.fromarray(values).convert("P"),
        Image.fromarray(values),
        Image.fromarray(values).convert("RGBA"),
    ):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        r = httpx.post(f"{served}/v1/domains/night/segment", content=buf.getvalue(), timeout=60)
        assert r.status_code == 200, (image.mode, r.text)
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (32, 48)


def test_segment_png_json_and_overlay(served):
    body = png()
    r = httpx.post(f"{served}/v1/domains/night/segment", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (32, 48) and (mask == 2).all()  # night's model answers class 2
    j = httpx.post(f"{served}/v1/domains/fog/segment?format=json", content=body).json()
    assert j["version"] == 1 and j["shares"]["sky"] == pytest.approx(1.0)
    scaled = httpx.post(f"{served}/v1/domains/scaled/segment", content=body)  # runs at 16x24, answers at 32x48
    assert scaled.status_code == 200 and np.asarray(Image.open(io.BytesIO(scaled.content))).shape == (32, 48)
    assert (np.asarray(Image.open(io.BytesIO(scaled.content))) == 3).all()
    old = httpx.post(f"{served}/v1/domains/fog/segment?format=json&version=2", content=body).json()
    assert old["version"] == 2 and old["shares"]["road"] == pytest.approx(1.0)
    overlay = Image.open(
        io.BytesIO(httpx.post(f"{served}/v1/domains/rain/segment?format=overlay", content=body).content)
    )
    assert overlay.width == 48 and overlay.height > 32  # the image, then a legend strip below it
    legend = np.asarray(overlay.convert("RGB"))[32:]
    assert (legend == META.palette[3]).all(axis=-1).sum() >= 50  # rain answers "tree": its swatch is drawn


def test_concurrent_mixed_domains_each_get_their_own_model(served):
    cases = [(d, cls, w) for d, cls in (("fog", 1), ("night", 2), ("rain", 3)) for w in (40, 56, 64)] * 6
    bodies = {w: png(width=w) for w in (40, 56, 64)}

    def call(case):
        domain, cls, w = case
        r = httpx.post(f"{served}/v1/domains/{domain}/segment", content=bodies[w], timeout=60)
        mask = np.asarray(Image.open(io.BytesIO(r.content)))
        return r.status_code, mask.shape == (32, w) and (mask == cls).all(), int(r.headers["x-batch-size"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, cases))
    assert all(status == 200 for status, _, _ in results)
    assert all(right for _, right, _ in results), "a response came from another domain's model"
    assert max(b for _, _, b in results) > 1, "no request was batched"


def test_smp_and_torchvision_models_are_served_batched_beside_raysegments_own(served):
    cases = [(d, cls) for d, cls in (("smp-unet", 2), ("tv-deeplab", 3), ("fog", 1))] * 8
    body = png(width=56)

    def call(case):
        domain, cls = case
        r = httpx.post(f"{served}/v1/domains/{domain}/segment", content=body, timeout=60)
        mask = np.asarray(Image.open(io.BytesIO(r.content)))
        return r.status_code, mask.shape == (32, 56) and (mask == cls).all(), int(r.headers["x-batch-size"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, cases))
    assert all(status == 200 for status, _, _ in results), results
    assert all(right for _, right, _ in results), "a response came from another domain's model"
    assert max(b for _, _, b in results) > 1, "no request was batched"


def test_drift_statistics_come_from_one_batch_in_drift_every_per_model(tmp_path):
    """Taking them costs a pass over every BatchNorm input, so a replica samples batches: the first of
    each model, then one in `drift_every`; none when drift tracking is off."""
    from raysegment.serving.replica import SegmentModels

    models = SegmentModels(
        ServeConfig(registry=str(tmp_path), auth="none", closed_loop=ClosedLoop(drift_every=3)).model_dump()
    )
    assert [models._drift_sample("fog@1") for _ in range(7)] == [True, False, False, True, False, False, True]
    assert models._drift_sample("night@1")  # counted per model: night's first batch
    off = SegmentModels(
        ServeConfig(registry=str(tmp_path), auth="none", closed_loop=ClosedLoop(drift_window=0)).model_dump()
    )
    assert not any(off._drift_sample("fog@1") for _ in range(3))


@pytest.fixture(scope="module")
def fused_served(served, synth_root, source_model_dir, tmp_path_factory):
    """One fused app (validate, decode, batch and segment in one deployment) on `runtime: onnxruntime`:
    fog@1 a real model with an ONNX export, night@1 the same weights without one; haze@1 and dawn@1
    constant models (classes 1 and 2), no exports. Yields (url, registry root)."""
    from ray import serve

    from raysegment.apps.export import export_version
    from raysegment.models.rebuild import load_model
    from raysegment.serving.app import build_app

    root = tmp_path_factory.mktemp("fused-registry")
    reg = Registry(root)
    model, meta = load_model(source_model_dir)
    config = {"data": {"root": str(synth_root), "domain": "fog"}, "model": meta.model.model_dump(mode="json")}
    reg.register("fog", model, meta, config=config)
    reg.register("night", model, meta, parent="fog@1")
    reg.register("base", constant_model(0), META)
    for cls, domain in enumerate(["haze", "dawn"], start=1):
        reg.register(domain, constant_model(cls), META, parent="base@1")
    for domain in ("fog", "night", "haze", "dawn"):
        reg.set_alias(domain, 1, "production")
    export_version(reg, "fog@1", say=lambda line: None)
    replicas = Replicas(topology="fused", cpus_per_replica=0.25, runtime="onnxruntime")
    cfg = ServeConfig(registry=str(root), auth="none", replicas=replicas)
    serve.run(build_app(cfg.model_dump()), name="fused", route_prefix="/fused")
    yield f"{served}/fused"
    serve.delete("fused")


def test_the_fused_topology_batches_mixed_domains_each_with_its_own_model(fused_served):
    """One deployment validates, decodes, batches and segments (no gateway hop): one batch may hold
    several domains' images now, and every answer must still come from its own domain's model."""
    from ray import serve

    assert set(serve.status().applications["fused"].deployments) == {"SegmentService"}
    bodies = {w: png(width=w) for w in (40, 64)}

    def call(case):
        domain, cls, w = case
        r = httpx.post(f"{fused_served}/v1/domains/{domain}/segment", content=bodies[w], timeout=60)
        mask = np.asarray(Image.open(io.BytesIO(r.content)))
        return r.status_code, mask.shape == (32, w) and (mask == cls).all(), int(r.headers["x-batch-size"])

    cases = [(d, cls, w) for d, cls in (("haze", 1), ("dawn", 2)) for w in (40, 64)] * 8
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, cases))
    assert all(status == 200 for status, _, _ in results)
    assert all(right for _, right, _ in results), "a response came from another domain's model"
    assert max(b for _, _, b in results) > 1, "no request was batched"
    bad = httpx.post(f"{fused_served}/v1/domains/haze/segment", content=b"hello world")
    assert bad.status_code == 400 and bad.json()["error"] == "not a valid image"


def test_onnx_runtime_answers_like_torch_over_http_and_a_version_without_an_export_falls_back(
    served, fused_served, synth_root
):
    """The fused app runs `runtime: onnxruntime` over a registry where fog@1 has an ONNX export and
    night@1, the same weights, has none: fog is answered by ONNX Runtime, night by the torch runtime
    (the fallback, said in /v1/domains and `x-runtime`), and the two masks agree on >= 99.9% of pixels."""
    url = f"{fused_served}/v1/domains"
    images = sorted((synth_root / "fog" / "images").glob("*.png"))[:6]
    same = total = 0
    for path in images:
        masks = []
        for domain, runtime in (("fog", "onnxruntime"), ("night", "torch")):
            r = httpx.post(f"{url}/{domain}/segment", content=path.read_bytes(), timeout=60)
            assert r.status_code == 200, r.text
            assert r.headers["x-runtime"] == runtime
            masks.append(np.asarray(Image.open(io.BytesIO(r.content))))
        same, total = same + int((masks[0] == masks[1]).sum()), total + masks[0].size
    assert same / total >= 0.999 and len(np.unique(masks[0])) > 1  # a real model: more than one class
    listed = httpx.get(url).json()["domains"]
    assert listed["fog"]["runtime"] == "onnxruntime"
    assert listed["night"]["runtime"] == "torch (no ONNX export of this version)"
    # The torch runtime (the `served` app's default) never claims an export it does not use.
    assert httpx.get(f"{served}/v1/domains").json()["domains"]["fog"]["runtime"] == "torch"


@pytest.mark.parametrize(
    "body,headers,url,status,needle",
    [
        (b"", {}, "/v1/domains/fog/segment", 400, "empty body"),
        (b"hello world", {}, "/v1/domains/fog/segment", 400, "not a valid image"),
        (png()[:60], {}, "/v1/domains/fog/segment", 400, "not a valid image"),
        (png(), {"content-type": "text/plain"}, "/v1/domains/fog/segment", 415, "unsupported content type"),
        (b"\x89PNG\r\n\x1a\n" + b"0" * 300_000, {}, "/v1/domains/fog/segment", 413, "too large"),
        (png(width=600, height=600), {}, "/v1/domains/fog/segment", 413, "too large"),
        (png(), {}, "/v1/domains/snow/segment", 404, "unknown domain"),
        (png(), {}, "/v1/domains/fog/segment?version=7", 404, "unknown domain"),
        (png(), {}, "/v1/domains/fog/segment?version=staging", 404, "unknown domain"),
        (png(), {}, "/v1/domains/bad..name/segment", 400, "bad domain name"),
        (png(), {}, "/v1/domains/%20x%3B/segment", 400, "bad domain name"),
        (png(), {}, "/v1/domains/fog/segment?format=gif", 422, "invalid request"),
        (bomb_png(20_000, 20_000), {}, "/v1/domains/fog/segment", 413, "too large"),  # 1-bit: tiny file, 1.2 GB decoded
        (png(width=1000, height=1), {}, "/v1/domains/fog/segment", 422, "unsupported image shape"),
        (png(width=1, height=1000), {}, "/v1/domains/fog/segment", 422, "unsupported image shape"),
        (png(), {}, "/v1/domains/fog/segment?version=%C2%B2", 400, "bad version"),
        (png(), {}, "/v1/domains/fog/segment?version=" + "9" * 5000, 400, "bad version"),
        (png(), {}, "/v1/domains/broken/segment", 503, "domain unavailable"),
        (png(), {}, "/v1/domains/tampered/segment", 503, "domain unavailable"),
        (png(fmt="GIF"), {}, "/v1/domains/fog/segment", 415, "unsupported image format"),
        (apng(), {}, "/v1/domains/fog/segment", 415, "unsupported image format"),
        (many_scan_jpeg((512, 512), 8_000), {}, "/v1/domains/fog/segment", 422, "unsupported image shape"),
    ],
)
def test_bad_input_is_4xx_json_and_never_crashes(served, body, headers, url, status, needle):
    r = httpx.post(served + url, content=body, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json().get("error", str(r.json()))
    assert httpx.post(f"{served}/v1/domains/fog/segment", content=png()).status_code == 200


HOSTILE = {  # name -> body; each answered 4xx without decoding its pixels (or decoded and refused)
    "1-bit PNG bomb 20000x20000": bomb_png(20_000, 20_000),
    "PNG bomb 4000x4000 (under the header limit of PIL)": bomb_png(4_000, 4_000),
    "1x1000 strip": png(width=1000, height=1),
    "progressive JPEG, 8000 scans": many_scan_jpeg((512, 512), 8_000),
    "truncated PNG": png(width=400, height=400)[:5_000],
    "truncated JPEG": png(width=400, height=400, fmt="JPEG")[:3_000],
    "animated PNG": apng(),
    "GIF": png(fmt="GIF"),
}


def test_a_replica_stays_alive_and_bounded_across_200_hostile_uploads(served):
    """RSS of the Gateway replica (where uploads are decoded) before and after 200 refused uploads."""
    import psutil
    from ray.util.state import list_actors

    (gateway,) = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "raysegment#Gateway" in (a.name or "")]
    replica = psutil.Process(gateway.pid)
    bodies = list(HOSTILE.items())
    with httpx.Client(timeout=120) as client:
        for name, body in bodies:  # warm-up: allocator pools and imports settle before measuring
            status = client.post(f"{served}/v1/domains/fog/segment", content=body).status_code
            assert 400 <= status < 500, f"{name}: {status}"
        before = replica.memory_info().rss
        statuses = {}
        for k in range(200):
            name, body = bodies[k % len(bodies)]
            statuses[name] = client.post(f"{served}/v1/domains/fog/segment", content=body).status_code
        after = replica.memory_info().rss
        assert client.post(f"{served}/v1/domains/fog/segment", content=png()).status_code == 200
    print(f"Gateway RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB over 200 hostile uploads; {statuses}")
    assert replica.is_running() and all(400 <= s < 500 for s in statuses.values()), statuses
    assert after - before < 64 * 2**20, "a replica's memory grew with refused uploads"


def test_snapshot_is_refused_while_online_adabn_is_off(served):
    r = httpx.post(f"{served}/v1/domains/fog/adabn-snapshot")
    assert r.status_code == 409 and "online AdaBN is off" in r.json()["error"]


def _load(served: str, seconds: float, concurrency: int, stop_after: int | None = None) -> list[tuple[float, int]]:
    """Closed-loop load over three domains from one asyncio aiohttp client (a fraction of httpx's CPU
    per request, which the service under test shares these 2 cores with): (time sent, status) per
    request, 0 for a transport error; bounded in time and count."""
    import asyncio
    import time

    import aiohttp

    body, out = png(), []
    deadline = time.monotonic() + seconds

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.monotonic() < deadline and (stop_after is None or len(out) < stop_after):
            sent = time.monotonic()
            try:
                async with session.post(
                    f"{served}/v1/domains/{('fog', 'night', 'rain')[(k + i) % 3]}/segment", data=body
                ) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            out.append((sent, status))
            i += 1

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(k, session) for k in range(concurrency)))

    asyncio.run(main())
    return out


@pytest.mark.slow
def test_a_thousand_requests_at_concurrency_16_without_errors(served):
    """Counts and outcomes only: 1,000 requests over three domains, all 200 (10,000 took over 3
    minutes of the suite's 15; `benchmarks/bench_serve.py` is the load test, where rates are
    measured). The deadline is a hang guard."""
    import time

    start = time.monotonic()
    results = _load(served, seconds=1_800, concurrency=16, stop_after=1_000)
    seconds = time.monotonic() - start
    errors = [s for _, s in results if s != 200]
    print(
        f"{len(results)} requests at concurrency 16 in {seconds:.0f} s ({len(results) / seconds:.0f} req/s), "
        f"{len(errors)} errors"
    )
    assert len(results) >= 1_000 and not errors


@pytest.mark.slow
def test_a_replica_killed_under_load_recovers(served):
    """A killed model replica costs at most 503s, Serve replaces it, and requests succeed again; the
    120 s bound is only there to turn a hang into a failure."""
    import os
    import signal
    import threading
    import time

    from ray.util.state import list_actors

    def replica_pids() -> list[int]:
        return [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")]) if "SegmentModels" in a.class_name]

    (pid,) = replica_pids()
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(results=_load(served, seconds=12, concurrency=8)))
    runner.start()
    time.sleep(3)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    runner.join()
    results = box["results"]
    recovered = any(s == 200 and t > killed_at for t, s in results)
    while not recovered and time.monotonic() < killed_at + 120:
        recovered = httpx.post(f"{served}/v1/domains/fog/segment", content=png(), timeout=30).status_code == 200
    failed = [(t, s) for t, s in results if s != 200]
    print(
        f"replica killed under load: {len(failed)} of {len(results)} requests failed "
        f"(statuses {sorted({s for _, s in failed})}); new replica pid {replica_pids()}"
    )
    assert all(s in (200, 503) for _, s in results), "a lost replica must surface as 503, never another error"
    assert recovered, "no request succeeded after the kill"
    assert replica_pids() and replica_pids() != [pid], "Serve did not replace the killed replica"


# ---------------------------------------------------------------- the closed loop's service side
@pytest.fixture(scope="module")
def loop_served(served, synth_root, source_model_dir, tmp_path_factory):
    """clear@1 (the source, the routing model), fog@1 and night@1 built on it, each registered with
    the signatures of its train images; fog@2 a different model, fog's `candidate`; dusk@1 the
    source with miscalibrated BatchNorm statistics (what `raysegment loop` should fix)."""
    from ray import serve

    from raysegment.data import open_split
    from raysegment.engine.signature import version_signatures
    from raysegment.models.rebuild import load_model
    from raysegment.serving.app import build_app

    root = tmp_path_factory.mktemp("loop-registry")
    reg = Registry(root)
    source, meta = load_model(source_model_dir)
    train = {d: open_split(synth_root, d, "train", unlabelled=True) for d in ("clear", "fog", "night")}
    reg.register("clear", source, meta, signatures=version_signatures(source, train["clear"], meta.resize))
    for domain in ("fog", "night"):
        signatures = version_signatures(source, train[domain], meta.resize, ("clear@1", source))
        reg.register(domain, source, meta, parent="clear@1", signatures=signatures)
        reg.set_alias(domain, 1, "production")
    other, _ = load_model(source_model_dir)
    with torch.no_grad():
        other.head.bias.add_(torch.linspace(-3, 3, other.head.bias.numel()))  # answers differently
    reg.register("fog", other, meta, parent="clear@1")
    reg.set_alias("fog", 2, "candidate")
    reg.register("dusk", miscalibrated(load_model(source_model_dir)[0]), meta, parent="clear@1")
    reg.set_alias("dusk", 1, "production")
    cfg = ServeConfig(
        registry=str(root),
        auth="none",
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.25, ingress_cpus=0.05),
        closed_loop=ClosedLoop(
            routing_base="clear@1",
            default_domain="clear",
            capture_domains=["fog", "new"],
            capture_max_images=3,
            shadow_share=1.0,
            drift_window=6,
            drift_every=1,
        ),
        resolve_ttl_s=0.0,
    )
    serve.run(build_app(cfg.model_dump()), name="loop", route_prefix="/loop")
    yield f"{served}/loop", root
    serve.delete("loop")


def test_requests_without_a_domain_are_routed_to_the_nearest_one(loop_served, synth_root):
    from raysegment.data import open_split

    url, _ = loop_served
    routed = {}
    for domain in ("clear", "fog", "night"):
        for path, _ in open_split(synth_root, domain, "test").samples:
            r = httpx.post(f"{url}/v1/segment?format=json", content=path.read_bytes(), timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["route"]["domain"] == r.headers["x-route-domain"] and body["route"]["unknown"] is False
            assert float(r.headers["x-route-distance"]) == pytest.approx(body["route"]["distance"], abs=1e-5)
            assert body["domain"] == body["route"]["domain"]  # served by the routed domain's production model
            routed[path] = (domain, body["route"]["domain"])
    right = sum(truth == got for truth, got in routed.values())
    assert right >= len(routed) - 1, routed  # test images never seen by any signature
    assert all(got == "night" for truth, got in routed.values() if truth == "night")


def test_an_image_far_from_every_domain_is_unknown_served_by_the_default_and_captured(loop_served):
    from raysegment.registry.traffic import TrafficStore

    url, root = loop_served
    noise = png(128, 64)  # uniform noise: nothing like a street
    r = httpx.post(f"{url}/v1/segment?format=json", content=noise, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["route"]["unknown"] is True and r.headers["x-route-unknown"] == "true"
    assert r.json()["domain"] == "clear"  # the configured default answered
    assert wait_for(lambda: len(TrafficStore(str(root)).items("new")) == 1)
    assert TrafficStore(str(root)).read(TrafficStore(str(root)).items("new")[0].key) == noise


def wait_for(condition, seconds: float = 60.0) -> bool:
    """Background work (capture, shadow) lands after the answer: poll, bounded only against a hang."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_capture_keeps_a_bounded_sample_and_shadow_answers_from_production(loop_served, synth_root):
    from raysegment.data import open_split
    from raysegment.registry.traffic import TrafficStore

    url, root = loop_served
    store = TrafficStore(str(root))
    images = [p.read_bytes() for p, _ in open_split(synth_root, "fog", "all").samples]
    before = store.seen("fog")
    for body in images:
        r = httpx.post(f"{url}/v1/domains/fog/segment?format=json", content=body, timeout=60)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"  # production answers, always
        assert r.json()["version"] == 1
    assert wait_for(lambda: store.seen("fog") >= before + len(images))
    assert len(store.items("fog")) == 3 and len(store.store.children("traffic/fog/images")) == 3
    assert wait_for(lambda: len(store.shadow("fog", 2, 1)) >= len(images) // 2)
    pairs = store.shadow("fog", 2, 1)
    assert all(0.0 <= c <= 1.0 and 0.0 <= p <= 1.0 for c, p in pairs)
    assert any(abs(c - p) > 1e-6 for c, p in pairs)  # two different models were scored
    explicit = httpx.post(f"{url}/v1/domains/fog/segment?version=2&format=json", content=images[0], timeout=60)
    assert explicit.json()["version"] == 2  # a named version is served, and not mirrored
    assert store.items("clear") == []  # capture is opt-in per domain


def test_the_domain_listing_shows_drift_when_traffic_leaves_the_training_images(loop_served, synth_root):
    from raysegment.data import open_split

    url, _ = loop_served
    fog = [p.read_bytes() for p, _ in open_split(synth_root, "fog", "train").samples]
    night = [p.read_bytes() for p, _ in open_split(synth_root, "night", "all").samples]
    for body in fog:
        httpx.post(f"{url}/v1/domains/fog/segment", content=body, timeout=60)
    calm = httpx.get(f"{url}/v1/domains", timeout=60).json()["domains"]["fog"]
    for body in night:  # the fog endpoint now sees night images
        httpx.post(f"{url}/v1/domains/fog/segment", content=body, timeout=60)
    shifted = httpx.get(f"{url}/v1/domains", timeout=60).json()["domains"]["fog"]
    assert calm["drift"]["recent_images"] > 0 and shifted["drift"]["distance"] > 2 * calm["drift"]["distance"]
    assert calm["drift"]["drifted"] is False and shifted["drift"]["drifted"] is True
    assert shifted["captured"] == 3


def test_the_loop_promotes_on_shadow_evidence_while_production_answers(loop_served, synth_root, cli):
    import threading

    from raysegment.config import LoopConfig
    from raysegment.data import open_split
    from raysegment.distributed.closed_loop import run_loop
    from raysegment.registry.traffic import TrafficStore

    url, root = loop_served
    images = [p.read_bytes() for p, _ in open_split(synth_root, "fog", "all").samples]
    for body in images:
        TrafficStore(str(root)).capture("dusk", body, "png")  # what capture_domains would have kept
    cfg = LoopConfig(tent_lr=[1e-3], epochs=1, batch_size=4, min_images=6, shadow_images=4, shadow_poll_s=0.3)
    done: list = []
    loop = threading.Thread(target=lambda: done.append(run_loop(str(root), "dusk", cfg, log=lambda line: None)))
    loop.start()
    answered = []
    while loop.is_alive() and len(answered) < 2000:
        r = httpx.post(f"{url}/v1/domains/dusk/segment?format=json", content=images[len(answered) % 12], timeout=60)
        assert r.status_code == 200, r.text
        answered.append(r.json()["version"])
    loop.join(timeout=300)
    outcome = done[0]
    assert outcome.candidate == 2 and outcome.promoted, outcome
    assert outcome.shadow_pairs >= 4 and "shadow" in outcome.timings
    assert answered[0] == 1 and set(answered) <= {1, 2}  # production answered; the candidate only once promoted
    assert answered == sorted(answered)  # and never production again after that
    assert len(TrafficStore(str(root)).shadow("dusk", 2, 1)) >= 4
    after = httpx.post(f"{url}/v1/domains/dusk/segment?format=json", content=images[0], timeout=60)
    assert after.json()["version"] == 2  # promoted: live within resolve_ttl_s
    assert cli("registry", "rollback", "dusk", "--registry", root).returncode == 0
    assert Registry(root).aliases("dusk")["production"] == 1
    history = cli("registry", "history", "dusk", "--registry", root)
    steps = [json.loads(line) for line in history.stdout.splitlines()]
    assert [s.get("loop", {}).get("step") for s in steps if "loop" in s] == ["start", "search", "candidate"]
    assert any(
        s.get("decision", {}).get("judge") == "proxy" and s["decision"]["evidence"].startswith("shadow traffic")
        for s in steps
    )
    assert steps[-1]["rollback"]["from"] == 2


# ---------------------------------------------------------------- admin routes, hostile inputs, metrics
@pytest.fixture(scope="module")
def admin_served(served, tmp_path_factory):
    """A token-guarded app with online AdaBN: fog@1 production, fog@2 a candidate; dusk@1 a real
    (BatchNorm) model stored on base@1."""
    from ray import serve

    from raysegment.serving.app import build_app
    from raysegment.serving.auth import add_token

    root = tmp_path_factory.mktemp("admin-registry")
    tokens = root.parent / f"{root.name}-tokens"
    reader, admin = add_token(tokens, "viewer", "read"), add_token(tokens, "ops", "admin")
    reg = Registry(root)
    reg.register("fog", constant_model(1), META, {"val_miou": 0.6})
    reg.set_alias("fog", 1, "production")
    reg.register("fog", constant_model(2), META, {"val_miou": 0.7}, parent="fog@1", lineage={"method": "adabn"})
    reg.set_alias("fog", 2, "candidate")
    torch.manual_seed(0)
    model = build_segmenter(META.model, 4).eval()
    reg.register("base", model, META)
    reg.register("dusk", model, META, {"val_miou": 0.5}, parent="base@1")
    reg.set_alias("dusk", 1, "production")
    cfg = ServeConfig(
        registry=str(root),
        token_file=str(tokens),
        resolve_ttl_s=0.0,
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.1, ingress_cpus=0.05, ingress_replicas=2),
        online=Online(adabn=True, momentum=0.5, max_snapshots_per_domain=1),
    )
    serve.run(build_app(cfg.model_dump()), name="admin", route_prefix="/admin")
    bearer = lambda token: {"authorization": f"Bearer {token}"}  # noqa: E731
    yield {"url": f"{served}/admin", "read": bearer(reader), "admin": bearer(admin), "root": root, "token": reader}
    serve.delete("admin")


def test_tokens_guard_every_route_by_role(admin_served):
    """401 without or with an unknown token, 403 for a read token on an admin route, JSON each time."""
    url, read, admin, root = (admin_served[k] for k in ("url", "read", "admin", "root"))
    domains = f"{url}/v1/domains"
    for headers in ({}, {"authorization": "Bearer not-a-token"}, {"authorization": f"Basic {admin_served['token']}"}):
        for r in (
            httpx.get(domains, headers=headers),
            httpx.post(f"{domains}/fog/segment", content=png(), headers=headers),
        ):
            assert r.status_code == 401 and r.json()["error"] in ("authentication required", "unknown token")
    assert httpx.get(domains, headers=read).json()["domains"]["fog"]["aliases"] == {"production": 1, "candidate": 2}
    assert httpx.get(f"{url}/v1/whoami", headers=read).json() == {"name": "viewer", "role": "read"}
    ok = httpx.post(f"{domains}/fog/segment", content=png(), headers=read, timeout=60)
    assert ok.status_code == 200
    snap = httpx.post(f"{domains}/fog/adabn-snapshot", headers=read)
    assert snap.status_code == 403 and "has role 'read'" in snap.json()["detail"]
    stored = httpx.post(f"{domains}/fog/adabn-snapshot", headers=admin, timeout=60)
    assert stored.status_code == 200 and stored.json()["promoted"] is False, stored.text
    assert Registry(root).aliases("fog") == {"production": 1, "candidate": stored.json()["version"]}
    Registry(root).set_alias("fog", 2, "candidate")  # as the fixture made it, for the tests after this one


def test_admin_routes_need_the_admin_role_and_go_through_the_policy(admin_served):
    url, read, admin, root = (admin_served[k] for k in ("url", "read", "admin", "root"))
    for method, path in (("post", "promote"), ("post", "rollback"), ("post", "loop")):
        r = httpx.request(method, f"{url}/v1/domains/fog/{path}", headers=read)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)
        assert httpx.request(method, f"{url}/v1/domains/fog/{path}").status_code == 401
    detail = httpx.get(f"{url}/v1/domains/fog", headers=read).json()
    assert detail["production"] == 1 and detail["candidate"] == 2
    assert [v.get("method") for v in detail["versions"]][:2] == [None, "adabn"] and detail["versions"][1][
        "parent"
    ] == "fog@1"
    assert detail["shadow"] == {"candidate": 2, "production": 1, "pairs": 0}
    judged = httpx.post(f"{url}/v1/domains/fog/promote", headers=admin, timeout=60)
    assert judged.status_code == 200 and judged.json()["promoted"] is False  # no held-back images: refused
    assert "no held-back score" in judged.json()["reason"]
    assert httpx.post(f"{url}/v1/domains/fog/promote?force=true", headers=admin).status_code == 400  # no reason
    forced = httpx.post(f"{url}/v1/domains/fog/promote?version=2&force=true&reason=hotfix", headers=admin).json()
    assert forced["promoted"] and forced["forced_by"] == "ops" and forced["reason"] == "forced by ops: hotfix"
    assert httpx.get(f"{url}/v1/domains", headers=read).json()["domains"]["fog"]["production"] == 2
    back = httpx.post(f"{url}/v1/domains/fog/rollback", headers=admin).json()
    assert back == {"domain": "fog", "production": 1, "previous": 2, "by": "ops"}
    assert Registry(root).aliases("fog")["production"] == 1
    again = httpx.post(f"{url}/v1/domains/fog/rollback", headers=admin)
    assert again.status_code == 409 and again.json()["error"] == "nothing to roll back to"
    page = httpx.get(f"{url}/v1/domains/fog/history?limit=2", headers=read).json()
    assert page["total"] >= 4 and len(page["records"]) == 2 and page["records"][0]["rollback"]["by"] == "ops"
    older = httpx.get(f"{url}/v1/domains/fog/history?offset=2&limit=2", headers=read).json()
    assert older["records"][0] != page["records"][0]


def test_online_adabn_follows_the_endpoint_images_and_stores_a_version(admin_served):
    url, admin, root = f"{admin_served['url']}/v1/domains/dusk", admin_served["admin"], admin_served["root"]
    assert httpx.post(f"{url}/adabn-snapshot", headers=admin).status_code == 409  # nothing seen yet
    dark = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 40, (32, 48, 3), dtype=np.uint8)).save(dark, "PNG")
    for _ in range(5):
        assert httpx.post(f"{url}/segment", content=dark.getvalue(), headers=admin, timeout=60).status_code == 200
    typo = httpx.post(f"{url}/adabn-snapshot?promote=true", headers=admin, timeout=60)  # a parameter it does not take
    assert typo.status_code == 400 and typo.json()["error"] == "unknown query parameter", typo.text
    snap = httpx.post(f"{url}/adabn-snapshot", headers=admin, timeout=60)
    assert snap.status_code == 200, snap.text
    assert snap.json()["images"] == 5 and snap.json()["version"] == 2 and snap.json()["promoted"] is False
    more = [httpx.post(f"{url}/adabn-snapshot", headers=admin, timeout=60).json() for _ in range(2)]
    assert [m["version"] for m in more] == [3, 4] and [m["pruned"] for m in more] == [[], [2]]  # cap: 1 spare
    reg = Registry(root)
    entry = reg.get_entry("dusk", 4)
    assert entry.lineage.method == "adabn_online" and entry.lineage.target_labels == 0
    assert reg.aliases("dusk") == {"production": 1, "candidate": 4}  # a snapshot is a candidate, never production
    assert reg.versions("dusk") == [1, 3, 4]  # the oldest spare snapshot went; production never does
    assert entry.metrics == {}  # its own metrics (none measured), not its parent's
    assert reg.history("dusk")[-1].decision.reason.startswith("no held-back score")
    before, after = reg.load_state(reg.get_entry("dusk", 1)), reg.load_state(entry)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("running_" in k or "num_batches" in k for k in changed)  # statistics only
    assert entry.bytes < reg.get_entry("base", 1).bytes / 2  # stored as a small delta


@pytest.mark.parametrize(
    "path,status,error",
    [
        ("/v1/domains/fog/history?limit=0", 422, "invalid request"),
        ("/v1/domains/fog/history?offset=-1", 422, "invalid request"),
        ("/v1/domains/fog/history?limit=abc", 422, "invalid request"),
        ("/v1/domains/fog/history?page=2", 400, "unknown query parameter"),
        ("/v1/domains/snow", 404, "unknown domain or version"),
        ("/v1/domains/bad..name/history", 400, "bad domain name"),
        ("/v1/domains/fog/loop/nope", 404, "unknown loop turn"),
        ("/v1/nothing-here", 404, "not found"),
    ],
)
def test_every_query_value_is_validated(admin_served, path, status, error):
    r = httpx.get(admin_served["url"] + path, headers=admin_served["read"])
    assert r.status_code == status and r.json()["error"] == error, r.text


def test_a_loop_turn_started_over_http_reports_how_it_ended(admin_served):
    """The turn runs in its own detached actor and keeps its status in the registry's store, so a
    poll reaching either of the two gateway replicas reads it."""
    import time

    url, read, admin = (admin_served[k] for k in ("url", "read", "admin"))
    started = httpx.post(f"{url}/v1/domains/fog/loop", headers=admin)
    assert started.status_code == 202 and started.json()["state"] == "running" and started.json()["started_by"] == "ops"
    turn = started.json()["id"]
    assert httpx.post(f"{url}/v1/domains/fog/loop", headers=admin).status_code == 409  # one at a time per domain
    deadline, status, replicas = time.monotonic() + 180, started.json(), set()
    while (status["state"] == "running" or len(replicas) < 2) and time.monotonic() < deadline:  # a hang guard
        time.sleep(0.2)
        polled = httpx.get(f"{url}/v1/domains/fog/loop/{turn}", headers=read)
        status = polled.json()
        assert polled.status_code == 200 and status["id"] == turn, status
        replicas.add(polled.headers["x-gateway-replica"])
    assert len(replicas) == 2, replicas  # both gateway replicas answered for the same turn
    assert status["state"] == "succeeded" and status["exit_code"] == 0, status
    outcome = status["outcome"]  # nothing was captured: the loop refuses, and says why
    assert outcome["promoted"] is False and "captured images" in outcome["reason"], outcome
    history = httpx.get(f"{url}/v1/domains/fog/history?limit=1", headers=read).json()["records"]
    assert history[0]["loop"]["step"] == "refused"


def test_hostile_pngs_are_refused_or_read_and_the_replica_survives(served):
    """A bad row filter byte crashed libpng under torchvision (500 after the replica died); a 64 MB
    zTXt chunk made a valid image 'unreadable'."""
    import zlib

    bad = httpx.post(f"{served}/v1/domains/fog/segment", content=gray_png(400, 400, bad_filter=True), timeout=60)
    assert bad.status_code == 400 and bad.json()["error"] == "not a valid image", bad.text
    text = png_chunk(b"zTXt", b"note\x00\x00" + zlib.compress(bytes(64 * 2**20)))
    ok = httpx.post(f"{served}/v1/domains/fog/segment?format=json", content=gray_png(48, 32, extra=text), timeout=60)
    assert ok.status_code == 200 and ok.json()["width"] == 48, ok.text


def raw_request(url: str, head: str, body: bytes = b"", wait_s: float = 30.0) -> tuple[bytes, bool]:
    """Send `head` (and `body`) on a raw socket; (what came back first, whether the server closed)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        sock.sendall(head.encode() + body)
        first = sock.recv(65536)
        closed = False
        try:
            while True:
                more = sock.recv(65536)
                if not more:
                    closed = True
                    break
                first += more
        except TimeoutError:
            pass
    return first, closed


def test_expect_100_continue_over_the_limit_gets_413_before_the_body(served):
    head = (
        "POST /v1/domains/fog/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {50 * 2**20}\r\nExpect: 100-continue\r\n\r\n"
    )
    answer, _ = raw_request(served, head, wait_s=20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer


def test_a_stalled_upload_gets_408_and_loses_its_connection(served):
    head = "POST /v1/domains/fog/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    answer, closed = raw_request(served, head, body=b"\x89PNG\r\n\x1a\n00", wait_s=60)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert closed, "the connection of a stalled upload stays open"


def test_operators_find_request_rejection_and_routing_metrics_on_the_nodes(served, loop_served, ray_cluster):
    import time

    url, _ = loop_served
    for _ in range(3):
        assert httpx.post(f"{served}/v1/domains/fog/segment", content=png(), timeout=60).status_code == 200
    assert httpx.post(f"{served}/v1/domains/fog/segment", content=b"not an image").status_code == 400
    assert httpx.post(f"{url}/v1/segment", content=png(128, 64), timeout=60).status_code == 200  # unknown

    def scrape() -> str:
        return "".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in ray_cluster.metrics_ports)

    wanted = {
        "requests": lambda line: (
            line.startswith("ray_raysegment_requests_total{") and 'domain="fog"' in line and 'status="200"' in line
        ),
        "rejected": lambda line: (
            line.startswith("ray_raysegment_uploads_rejected_total{") and 'reason="not_an_image"' in line
        ),
        "latency": lambda line: line.startswith("ray_raysegment_request_latency_ms_bucket{") and 'domain="fog"' in line,
        "routing": lambda line: line.startswith("ray_raysegment_routing_decisions_total{") and 'unknown="true"' in line,
    }
    deadline, found = time.monotonic() + 120, set()
    while time.monotonic() < deadline and len(found) < len(wanted):  # metrics are exported every few seconds
        lines = scrape().splitlines()
        found = {name for name, match in wanted.items() if any(match(line) for line in lines)}
        time.sleep(2)
    assert found == set(wanted), f"missing {set(wanted) - found}"
    requests = [line for line in scrape().splitlines() if wanted["requests"](line)]
    assert any('deployment="Gateway"' in line and 'application="raysegment"' in line for line in requests), requests
