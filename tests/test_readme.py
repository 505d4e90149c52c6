"""The README's path, as a newcomer walks it: its command block read from README.md (so the two
cannot drift apart) and run by bash in a fresh folder with the installed `raysegment` entry point,
an embedded Ray (no fixture cluster, no RAY_ADDRESS) and a fresh weights cache. What the user would
check is checked: the model file is there, the pick is registered, the console loads in Chromium,
the README's few-labels block works against a real Label Studio, the server still answers
`STAYS_UP_S` after it was started (it once died 60 s after "serving"), one byte over the image
limit is refused before the body, and after Ctrl-C nothing of it is left. The two halves run a
minute of other tests apart, so the server's required uptime costs the suite nothing.
"""

from __future__ import annotations

import io
import json
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
import pytest
from conftest import LabelStudioServer, free_port, marked_processes
from PIL import Image

from raysegment.serving.config import Limits

DEFAULT_LIMITS = Limits()  # what `raysegment serve` runs with

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme-path:"
LABELS_MARK = "<!-- readme-labels:"
STAYS_UP_S = 90.0  # asked again this long after `raysegment serve` was started ...
AFTER_READY_S = 65.0  # ... and at least this long after it said "serving": it used to die at ready + 60 s
FAST = {"raysegment train": "--epochs 2", "raysegment compare": "--epochs 1"}  # sizes only, same commands
CHROMIUM = "/usr/bin/chromium"
PATH_MARK = "RAYSEGMENT_README_PATH"


def readme_block(mark: str = MARK) -> list[str]:
    """The command lines of the README's bash block after `mark` (comment lines left out)."""
    text = README.read_text()
    assert mark in text, f"README.md lost its marked command block {mark!r}"
    block = text.split(mark, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
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
        self.labelling: LabelStudioServer
        self.url = ""
        self.launched_at = self.ready_at = 0.0
        self.log = folder / "serve.log"


@pytest.fixture(scope="session")
def walk(tmp_path_factory):
    """The newcomer's folder and, between the two tests below, their running server. The first test
    runs first and the second ~90 s of other tests later (`conftest.pytest_collection_modifyitems`),
    so the server's required minute of staying up costs the suite nothing."""
    folder = tmp_path_factory.mktemp("newcomer")
    (folder / ".venv").symlink_to(Path(sys.prefix))  # `source .venv/bin/activate`, as in a clone
    walk = Walk(folder)
    yield walk
    if walk.server is not None and walk.server.poll() is None:  # the second test did not stop it
        os.killpg(walk.server.pid, signal.SIGKILL)
        walk.server.wait()


def test_readme_path_trains_registers_and_serves(walk):
    """The README's block, the console, a request, and the README's few-labels block against a real
    Label Studio (booted in the background from the start): annotations come back pixel for pixel."""
    walk.labelling = LabelStudioServer(walk.folder / "label-studio")
    try:
        walk_the_readme(walk)
    except BaseException:
        if walk.server is not None and walk.server.poll() is None:
            os.killpg(walk.server.pid, signal.SIGKILL)
            walk.server.wait()
        walk.server = None
        raise
    finally:
        walk.labelling.stop()


def test_readme_server_still_answers_and_stops_clean(walk):
    if walk.server is None:
        pytest.skip("the README path's first test did not leave a server running (it failed or was deselected)")
    stays_up_then_stops(walk)


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
    walk.launched_at = time.monotonic()
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

    side = start_readme_mentions(walk)  # the README's other commands, beside the browser check

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
    check_readme_mentions(walk, side)
    label_round_trip(walk)  # the README's next block, while the server must stay up


def readme_mentions() -> dict[str, str]:
    """The commands the README's text names in backticks: registry history, registry add, and the
    DRIVE line of its real-data table (placeholders bound to the walk's folder)."""
    found = [" ".join(c.split()) for c in re.findall(r"`(raysegment [^`]+)`", README.read_text())]
    history = next(c for c in found if c.startswith("raysegment registry history"))
    add = next(c for c in found if c.startswith("raysegment registry add"))
    add = add.replace("MODEL_DIR", "runs/source/model").replace("--domain D", "--domain clear")
    add = add.replace("--data ROOT", "--data data") + " --registry registry"
    drive = next(c for c in found if c.startswith("raysegment data import drive"))
    return {"history": history, "add": add, "import": drive}


def start_readme_mentions(walk: Walk) -> dict[str, tuple[str, subprocess.Popen]]:
    from test_importers import write_drive

    write_drive(walk.folder / "DRIVE")  # a small download in the publisher's layout
    return {
        name: (
            command,
            subprocess.Popen(
                ["bash", "-c", f"source .venv/bin/activate && {command}"],
                cwd=walk.folder,
                env=walk.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for name, command in readme_mentions().items()
    }


def check_readme_mentions(walk: Walk, side: dict[str, tuple[str, subprocess.Popen]]) -> None:
    out = {}
    for name, (command, proc) in side.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{command}\n{stdout[-1500:]}{stderr[-1500:]}"
        out[name] = stdout
    decisions = [json.loads(line) for line in out["history"].splitlines()]
    assert any(d.get("decision", {}).get("version") == 1 for d in decisions), out["history"]  # the pick's
    assert "clear@2 registered, now production: no model to beat" in out["add"], out["add"]
    assert "2 train, 1 val, 2 test" in out["import"]
    assert (walk.folder / "data/retina/drive/masks/drive_21.png").is_file()


def label_round_trip(walk: Walk) -> None:
    """select, push (twice: the second finds the images there), a person annotates 4 of the 5 tasks
    through Label Studio's API as its editor submits them, pull: the submitted masks come back."""
    server = walk.labelling.ready()
    lines = readme_block(LABELS_MARK)
    assert lines[0].startswith("export LABEL_STUDIO_URL=")
    env = {**walk.env, "LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_TOKEN": server.token}
    push = next(line for line in lines if line.startswith("raysegment label push"))
    pull = next(line for line in lines if line.startswith("raysegment label pull"))

    def run(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", f"source .venv/bin/activate && {line}"],
            cwd=walk.folder,
            env=env,
            capture_output=True,
            text=True,
        )

    for line in lines[1 : lines.index(push) + 1]:
        done = run(line)
        assert done.returncode == 0, line + "\n" + done.stdout[-2000:] + done.stderr[-2000:]
    assert (walk.folder / "select_out" / "contact_sheet.png").is_file()
    assert "5 images uploaded" in done.stdout, done.stdout
    again = run(push)
    assert again.returncode == 0 and "5 already there" in again.stdout, again.stdout + again.stderr

    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=60)
    project = next(p for p in http.get("/api/projects").json()["results"] if p["title"] == "night")
    tasks = http.get("/api/tasks", params={"project": project["id"], "fields": "all"}).json()["tasks"]
    assert len(tasks) == 5
    submitted = {}
    classes = json.loads((walk.folder / "runs/source/model/model.json").read_text())["classes"]
    for task in tasks[:4]:
        (prediction,) = http.get("/api/predictions", params={"task": task["id"]}).json()  # the pre-annotation
        first = prediction["result"][0]
        h, w = first["original_height"], first["original_width"]
        corrected = np.asarray(Image.open(walk.folder / "select_out" / "prelabels" / f"{stem_of(task)}.png")).copy()
        yy, xx = np.mgrid[0:h, 0:w]
        corrected[np.abs(yy - xx) < 3] = len(classes) - 1  # the person paints a thin stroke of a class ...
        corrected[:4, :4] = 255  # ... and erases a corner (unpainted: ignored)
        keep = ("from_name", "to_name", "type", "original_width", "original_height")
        result = [{**{k: first[k] for k in keep}, "value": v} for v in brush_values(corrected, classes)]
        r = http.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
        assert r.status_code == 201, r.text[:300]
        submitted[stem_of(task)] = corrected
    pulled = run(pull)
    assert pulled.returncode == 0, pulled.stderr
    assert "4 labelled images written" in pulled.stdout and "1 unfinished tasks skipped" in pulled.stdout
    out = walk.folder / pull.split("--out", 1)[1].split()[0]
    for stem, mask in submitted.items():
        assert (np.asarray(Image.open(out / "masks" / f"{stem}.png")) == mask).all(), stem  # pixel for pixel
    missing = run(pull.replace("--project night", "--project nowhere"))
    assert missing.returncode == 2 and "no project titled 'nowhere'" in missing.stderr


def stem_of(task: dict) -> str:
    return Path(task["file_upload"].split("-", 1)[1]).stem


def brush_values(mask: np.ndarray, classes: list[str]) -> list[dict]:
    """A class-id mask as the brush values Label Studio's editor submits, one per class painted."""
    from raysegment.data.brush import encode

    return [
        {"format": "rle", "rle": encode(mask == c), "brushlabels": [name]}
        for c, name in enumerate(classes)
        if (mask == c).any()
    ]


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
    wait = max(walk.launched_at + STAYS_UP_S, walk.ready_at + AFTER_READY_S) - time.monotonic()
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
