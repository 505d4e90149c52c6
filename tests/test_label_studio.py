"""`raysegment label push|pull` against a real Label Studio server on 127.0.0.1 (its own virtual
environment, `.venv-ls`, set up by `make test`): the picks go up with the model's masks as
pre-annotations, a person's annotation is submitted through the API as the editor submits it, and
pull gives back, pixel for pixel, the mask that was submitted; an unfinished task is counted."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from raysegment.apps.label_studio import FROM_NAME, TO_NAME, mask_results, results_mask
from raysegment.data.brush import decode, encode
from raysegment.data.info import DatasetInfo

LS_BIN = Path(__file__).resolve().parents[1] / ".venv-ls" / "bin" / "label-studio"
INFO = DatasetInfo(classes=["background", "vessel"], palette=[(0, 0, 0), (255, 255, 255)])


def test_brush_rle_round_trips_and_reads_literal_runs():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (45, 61), (131, 97)]:
        mask = rng.random((h, w)) > 0.6
        assert (decode(encode(mask), h, w) == mask).all()
    # A literal run (flag 0), as other encoders write them: 1 pixel = 4 words [255, 255, 255, 255].
    bits = format(4, "032b") + format(7, "05b") + "".join(format(b - 1, "04b") for b in (3, 4, 8, 16))
    bits += "0" + "00" + format(3, "03b") + format(255, "08b") * 4
    bits += "0" * (-len(bits) % 8)
    assert decode([int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)], 1, 1).tolist() == [[True]]
    mask = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)  # 255: not painted
    assert (results_mask(mask_results(mask, INFO), INFO, 2, 3) == mask).all()


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    if not LS_BIN.exists():
        pytest.fail(f"no Label Studio at {LS_BIN}: `make label-studio` installs it (make test does)")
    data = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite"}
    log = data / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(LS_BIN),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data),
                "--username",
                "labeller@example.com",
                "--password",
                secrets.token_hex(8),
                "--user-token",
                token,
                "--enable-legacy-api-token",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=data,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # the first start migrates its database
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(1)
    yield url, token
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_push_annotate_pull_gives_back_the_submitted_masks(label_studio, cli, odd_root, odd_source_dir, tmp_path):
    url, token = label_studio
    photos = tmp_path / "ward photos"
    shutil.copytree(odd_root / "chase" / "images", photos)
    args = ["--label-studio", url, "--token", token, "--project", "ward"]
    pushed = cli("label", "push", *args, "--model", odd_source_dir, "--images", photos, "--budget", "3")
    assert pushed.returncode == 0, pushed.stderr
    assert "3 images uploaded" in pushed.stdout
    again = cli("label", "push", *args, "--model", odd_source_dir, "--images", photos, "--budget", "3")
    assert again.returncode == 0 and "0 images uploaded" in again.stdout and "3 already there" in again.stdout

    http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60)
    project = next(p for p in http.get("/api/projects").json()["results"] if p["title"] == "ward")
    assert "BrushLabels" in project["label_config"] and 'value="vessel"' in project["label_config"]
    tasks = http.get("/api/tasks", params={"project": project["id"], "fields": "all"}).json()["tasks"]
    assert len(tasks) == 3
    assert all(len(http.get("/api/predictions", params={"task": t["id"]}).json()) == 1 for t in tasks)

    # A person corrects two of the three pre-annotations (paints a diagonal band of vessel and leaves
    # a corner unpainted); the third task stays unfinished.
    submitted = {}
    for task in tasks[:2]:
        prediction = http.get("/api/predictions", params={"task": task["id"]}).json()[0]
        h, w = prediction["result"][0]["original_height"], prediction["result"][0]["original_width"]
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        mask[np.abs(yy - xx) < 4] = 1
        mask[:5, :5] = 255
        result = [
            {
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "brushlabels",
                "original_width": w,
                "original_height": h,
                "value": {"format": "rle", "rle": encode(mask == c), "brushlabels": [name]},
            }
            for c, name in enumerate(INFO.classes)
        ]
        r = http.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
        assert r.status_code == 201, r.text[:300]
        stem = Path(task["file_upload"].split("-", 1)[1]).stem
        submitted[stem] = mask

    out = tmp_path / "labelled" / "chase"
    pulled = cli("label", "pull", "--label-studio", url, "--token", token, "--project", "ward", "--out", out)
    assert pulled.returncode == 0, pulled.stderr
    assert "2 labelled images written" in pulled.stdout and "1 unfinished tasks skipped" in pulled.stdout
    for stem, mask in submitted.items():
        back = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert back.shape == mask.shape and (back == mask).all(), stem  # pixel for pixel
        original = np.asarray(Image.open(photos / f"{stem}.png").convert("RGB"))
        assert (np.asarray(Image.open(out / "images" / f"{stem}.png")) == original).all()
    from raysegment.data import open_split

    labelled = open_split(out.parent, "chase", "all")  # checked like any mask: sizes, label values
    assert labelled.labelled_count == 2
    missing = cli("label", "pull", "--label-studio", url, "--token", token, "--project", "nope", "--out", out)
    assert missing.returncode == 2 and "no project titled 'nope'" in missing.stderr
