"""Traffic capture: the reservoir's bounds, its age limit, purge, concurrent writers, shadow pairs;
on a folder and on the loopback S3 server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from raysegment.registry import Registry, RegistryError
from raysegment.registry.store import open_store
from raysegment.registry.traffic import TrafficStore


def stored_images(uri: str, domain: str) -> list[str]:
    return open_store(uri).children(f"traffic/{domain}/images")


def test_the_reservoir_never_holds_more_than_its_bound(registry_uri):
    store = TrafficStore(registry_uri, max_images=5, seed=0)
    kept = [store.capture("fog", f"image {i}".encode(), "png", now=1000.0 + i) for i in range(40)]
    assert store.seen("fog") == 40
    items = store.items("fog", now=1040.0)
    assert len(items) == 5 and len(stored_images(registry_uri, "fog")) == 5  # replaced images are deleted
    assert sum(k is not None for k in kept) > 5  # later images still get in (each with probability 5/n)
    assert any(item.time > 1004.0 for item in items)
    assert {store.read(item.key) for item in items} <= {f"image {i}".encode() for i in range(40)}


def test_images_past_the_age_limit_leave_the_sample(registry_uri):
    store = TrafficStore(registry_uri, max_images=10, max_age_s=100, seed=0)
    for i in range(4):
        store.capture("night", b"old", "png", now=1000.0 + i)
    assert len(store.items("night", now=1050.0)) == 4
    assert store.items("night", now=1200.0) == []  # too old to count, even before anything is written
    store.capture("night", b"new", "jpg", now=1200.0)  # the next capture drops them from storage
    assert [store.read(i.key) for i in store.items("night", now=1200.0)] == [b"new"]
    assert len(stored_images(registry_uri, "night")) == 1


def test_purge_removes_old_or_all_images_and_stray_files(registry_uri):
    store = TrafficStore(registry_uri, max_images=10, seed=0)
    for i in range(6):
        store.capture("rain", b"x", "png", now=1000.0 + 100 * i)
    open_store(registry_uri).put("traffic/rain/images/stray.png", b"left by a crash")
    assert store.purge("rain", older_than_s=250, now=1500.0) == 3  # captured at 1000, 1100, 1200
    assert len(store.items("rain", now=1500.0)) == 3 and len(stored_images(registry_uri, "rain")) == 3
    assert store.purge("rain") == 3
    assert store.items("rain") == [] and stored_images(registry_uri, "rain") == [] and store.seen("rain") == 0


def test_concurrent_gateways_lose_no_count_and_keep_the_bound(registry_uri):
    store = TrafficStore(registry_uri, max_images=6)

    def capture(worker: int) -> None:
        writer = TrafficStore(registry_uri, max_images=6, seed=worker)
        for i in range(10):
            writer.capture("fog", f"{worker}-{i}".encode(), "png")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(capture, range(4)))
    assert store.seen("fog") == 40
    assert len(store.items("fog")) == 6 and len(stored_images(registry_uri, "fog")) == 6


def test_shadow_pairs_belong_to_one_candidate_and_production(tmp_path):
    store = TrafficStore(str(tmp_path))
    assert store.record_shadow("fog", 3, 1, [(0.6, 0.5)]) == 1
    assert store.record_shadow("fog", 3, 1, [(0.7, 0.4), (0.5, 0.5)]) == 3
    assert store.shadow("fog", 3, 1) == [(0.6, 0.5), (0.7, 0.4), (0.5, 0.5)]
    assert store.shadow("fog", 4, 1) == []  # another candidate's evidence is not this one's
    assert store.record_shadow("fog", 4, 1, [(0.1, 0.2)]) == 1  # a new candidate starts afresh


def test_traffic_is_no_domain_and_bad_names_are_refused(tmp_path):
    with pytest.raises(RegistryError, match="reserved"):
        Registry(tmp_path).get_entry("traffic")
    with pytest.raises(RegistryError):
        TrafficStore(str(tmp_path)).capture("../x", b"x", "png")
