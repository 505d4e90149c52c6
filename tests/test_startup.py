"""`raysegment serve`'s start (`serving.startup`): progress while Serve comes up, and one line, not
a traceback, when it cannot. On the session cluster, under its own app name."""

from __future__ import annotations

import pytest

from raysegment.errors import RaySegmentError
from raysegment.serving.config import SERVE_PROCESS_ENV, Replicas, ServeConfig


def test_a_deployment_that_never_comes_up_is_reported_then_one_line(ray_cluster, tmp_path):
    """The gateway's token file does not exist, so its replica fails on every start: the caller
    sees progress lines while Serve retries, then one line naming what it waited for."""
    from ray import serve

    from raysegment.serving.startup import start_serving

    cfg = ServeConfig(
        registry=str(tmp_path / "registry"),
        token_file=str(tmp_path / "no-such-tokens"),
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.05, ingress_cpus=0.05),
    )
    lines: list[str] = []
    try:
        with pytest.raises(RaySegmentError) as caught:
            start_serving(cfg, "127.0.0.1", 0, 8, lines.append, "never", "/never", progress_every_s=2)
    finally:
        # Shut Serve down, not only the app: start_serving's thread is still waiting for "never" to
        # run (the CLI exits at this point; a test session goes on), polling the controller, which
        # took CPU from every test after this one.
        serve.shutdown()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert "Serve did not" in message
    assert lines and all(line.startswith("[serve] starting") for line in lines), lines


def test_the_serve_processes_get_time_to_start_on_a_busy_machine():
    assert float(SERVE_PROCESS_ENV["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) >= 30  # Serve's own is 5 s
    assert SERVE_PROCESS_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].startswith("raysegment.serving.proxy_guard")
