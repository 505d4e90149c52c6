"""The README's path, as a newcomer walks it: its command block read from README.md (so the two
cannot drift apart) and run by bash in a fresh folder with the installed `raysegment` entry point,
an embedded Ray (no fixture cluster, no RAY_ADDRESS) and a fresh weights cache. What the user would
check is checked: the model file is there, the pick is registered, the console loads in Chromium,
the server still answers `STAYS_UP_S` after it came up (it once died 60 s after "serving"), one
byte over the image limit is refused before the body, and after Ctrl-C nothing of it is left.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import free_port, marked_processes
from PIL import Image

from raysegment.serving.config import Limits

DEFAULT_LIMITS = Limits()  # what `raysegment serve` runs with

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme-path:"
STAYS_UP_S = 90.0  # the server died 60 s after "serving" when Ray was started in a helper thread
FAST = {"raysegment train": "--epochs 2", "raysegment compare": "--epochs 1"}  # sizes only, same commands
CHROMIUM = "/usr/bin/chromium"
PATH_MARK = "RAYSEGMENT_README_PATH"


def readme_block() -> list[str]:
    """The command lines of the README's marked bash block."""
    text = README.read_text()
    assert MARK in text, "README.md lost its marked command block"
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Walk:
    """The newcomer's folder, environment and (once started) server."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mark = f"{PATH_MARK}={os.getpid()}-{time.time_ns()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYSEGMENT_"))}
        self.env = {**env, PATH_MARK: self.mark.split("=", 1)[1], "XDG_CACHE_HOME": str(folder / ".cache")}
        self.env["RAYSEGMENT_TEST_SESSION"] = os.environ["RAYSEGMENT_TEST_SESSION"]
        self.server: subprocess.Popen | None = None
        self.url = ""
        self.ready_at = 0.0
        self.log = folder / "serve.log"


def test_readme_path_trains_registers_serves_for_minutes_and_stops_clean(tmp_path):
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # `source .venv/bin/activate`, as in a clone
    walk = Walk(tmp_path)
    try:
        walk_the_readme(walk)
    finally:
        if walk.server is not None and walk.server.poll() is None:  # a failed check: stop it anyway
            os.killpg(walk.server.pid, signal.SIGKILL)
            walk.server.wait()


def walk_the_readme(walk: Walk) -> None:
    lines = readme_block()
    serve_line = next(line for line in lines if line.startswith("raysegment serve"))
    setup = "\n".join(
        f"{line} {FAST[key]}" if (key := next((k for k in FAST if line.startswith(k)), None)) else line
        for line in lines
        if line != serve_line
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", setup], cwd=walk.folder, env=walk.env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (walk.folder / "runs/source/model/model.safetensors").is_file()
    assert (walk.folder / "adapt_out/adapt_miou.png").is_file()
    registered = re.search(r"\[registry\] night_photos@1 \((\w+)\) is (production|candidate)", done.stdout)
    assert registered, done.stdout[-3000:]

    port = free_port()
    with open(walk.log, "wb") as log:
        walk.server = subprocess.Popen(
            ["bash", "-c", f"source .venv/bin/activate && exec {serve_line} --port {port}"],
            cwd=walk.folder,
            env=walk.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C below reaches it as a terminal's would
        )
    walk.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while "serving 2 domains" not in walk.log.read_text(errors="replace"):
        assert walk.server.poll() is None, walk.log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, walk.log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    walk.ready_at = time.monotonic()

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{walk.url}/ui")
            row = page.wait_for_selector("tr[data-domain='night_photos']", timeout=60_000)
            assert "night_photos" in row.inner_text()
        finally:
            browser.close()
    assert_segments(walk)
    stays_up_then_stops(walk)


def assert_segments(walk: Walk) -> None:
    image = (walk.folder / "night_photos").glob("*.png").__next__().read_bytes()
    r = httpx.post(
        f"{walk.url}/v1/domains/night_photos/segment",
        content=image,
        headers={"content-type": "image/png"},
        timeout=120,
    )
    assert r.status_code == 200, r.text[:500]
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape[:2] == (96, 160)  # the answer has the upload's size


def stays_up_then_stops(walk: Walk) -> None:
    assert walk.server is not None
    wait = STAYS_UP_S - (time.monotonic() - walk.ready_at)
    if wait > 0:
        time.sleep(wait)
    assert walk.server.poll() is None, walk.log.read_text(errors="replace")[-3000:]
    assert_segments(walk)
    # One byte over the image limit, announced with Expect: 100-continue: refused before the body.
    head = (
        "POST /v1/domains/night_photos/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {DEFAULT_LIMITS.max_image_bytes + 1}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", int(walk.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer, answer[:200]
    os.killpg(walk.server.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    assert walk.server.wait(timeout=120) == 0, walk.log.read_text(errors="replace")[-3000:]
    deadline = time.monotonic() + 30
    while (left := marked_processes(walk.mark)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left if Path(f"/proc/{pid}").exists()]
    assert "stopped" in walk.log.read_text(errors="replace")
