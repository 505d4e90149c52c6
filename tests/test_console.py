"""The web console (`/ui`) in a real browser: Debian's chromium driven by Playwright, against a live
Serve app on 127.0.0.1 with token auth. Screenshots go to $RAYSEGMENT_CONSOLE_SHOTS (the README's
`docs/console/` when refreshed) or the test's temp folder."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, free_port, retina_root
from conftest import constant_model as answering
from PIL import Image

from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.registry import Registry
from raysegment.serving.config import Replicas, ServeConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [  # what this machine's closed network needs (no background connections)
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
if not Path(CHROMIUM).exists():  # .ci/run installs it; say so rather than skip silently
    pytest.fail(f"no chromium at {CHROMIUM}: install Debian's chromium (`apt-get install chromium`), as .ci/run does")

META = ModelMeta(
    model=ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
    num_classes=2,
    classes=["background", "vessel"],
    palette=[(0, 0, 0), (220, 40, 40)],
)
HOSTILE_REASON = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def constant_model(cls: int) -> torch.nn.Module:
    return answering(META, cls)


RETINA = retina_root()


def picture(width=240, height=230) -> bytes:
    """A CHASE_DB1 fundus image at a small size where the data is on the machine, else noise."""
    found = sorted((RETINA / "chase" / "images").glob("chase_1*.png")) if RETINA.is_dir() else []
    if found:
        image = Image.open(found[0]).convert("RGB").resize((width, height))
    else:
        image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def console(ray_cluster, tmp_path_factory):
    """drive@1 production and drive@2 its candidate; chase@1 production; broken (torn aliases)."""
    from ray import serve

    from raysegment.serving.app import build_app
    from raysegment.serving.auth import add_token

    root = tmp_path_factory.mktemp("console-registry")
    reg = Registry(root)
    reg.register("drive", constant_model(0), META, {"val_miou": 0.745})
    reg.set_alias("drive", 1, "production")
    reg.register("drive", constant_model(1), META, {"val_miou": 0.755}, parent="drive@1", lineage={"method": "adabn"})
    reg.set_alias("drive", 2, "candidate")
    estimate = {"estimated_miou": 0.61, "estimated_miou_low": 0.55, "estimated_miou_high": 0.66}
    estimate |= {"estimated_iou.background": 0.93, "estimated_iou.vessel": 0.29}
    reg.register(
        "chase", constant_model(1), META, estimate, parent="drive@1", lineage={"method": "tent", "target_labels": 0}
    )
    reg.set_alias("chase", 1, "production")
    reg.register("broken", constant_model(0), META, parent="drive@1")
    (root / "broken" / "aliases.json").write_text("{")
    tokens = tmp_path_factory.mktemp("console-tokens") / "tokens"
    reader, admin = add_token(tokens, "viewer", "read"), add_token(tokens, "ops", "admin")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=str(root),
        token_file=str(tokens),
        resolve_ttl_s=0.0,
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.25, ingress_cpus=0.05),
    )
    serve.run(build_app(cfg.model_dump()), name="console", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "read": reader, "admin": admin, "root": root}
    serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("RAYSEGMENT_CONSOLE_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_console(browser, console, role: str | None):
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{console['url']}/ui")
    if role:
        page.fill("#token", console[role])
        page.click("#token-use")
        page.wait_for_selector("#whoami:has-text('(')")  # locators, not eval: the page's CSP forbids eval
    return page, errors


def test_the_page_is_served_with_a_strict_csp_and_no_token_in_url_or_cookie(console, browser):
    r = httpx.get(f"{console['url']}/ui")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert httpx.get(f"{console['url']}/ui/../../etc/passwd").status_code == 404
    docs = httpx.get(f"{console['url']}/docs")  # Swagger UI needs its inline script: its own policy, only there
    assert docs.status_code == 200 and "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    assert "unsafe-inline" not in httpx.get(f"{console['url']}/v1/whoami").headers["content-security-policy"]
    page, errors = open_console(browser, console, "read")
    assert page.evaluate("sessionStorage.getItem('raysegment.token')") == console["read"]
    assert console["read"] not in page.url and page.context.cookies() == []
    assert not errors, errors


def test_overview_lists_domains_with_production_and_shows_degraded(console, browser, shots):
    page, errors = open_console(browser, console, "read")
    page.wait_for_selector("#overview tr[data-domain='drive']")
    drive = page.locator("tr[data-domain='drive']")
    assert drive.locator("td.production").inner_text() == "v1" and drive.locator("td.candidate").inner_text() == "v2"
    assert page.locator("tr[data-domain='chase'] td.production").inner_text() == "v1"
    broken = page.locator("tr[data-domain='broken']")
    assert "degraded" in (broken.get_attribute("class") or "") and "degraded" in broken.inner_text()
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    assert not errors, errors


def test_without_a_token_the_page_asks_for_one(console, browser):
    page, _ = open_console(browser, console, None)
    page.wait_for_selector("text=Type a token above")
    assert page.locator("#overview").count() == 0


def test_try_an_image_shows_production_and_candidate_overlays(console, browser, tmp_path, shots):
    image = tmp_path / "fundus.png"
    image.write_bytes(picture())
    page, errors = open_console(browser, console, "read")
    page.goto(f"{console['url']}/ui#/try")
    page.wait_for_selector("#try-domain option[value='drive']", state="attached")
    page.select_option("#try-domain", "drive")
    page.set_input_files("#try-file", str(image))
    page.wait_for_selector("#overlay-candidate")
    for which in ("production", "candidate"):  # decoded PNGs of the upload's width, legend below
        size = page.eval_on_selector(
            f"#overlay-{which}", "img => img.complete && [img.naturalWidth, img.naturalHeight]"
        )
        assert size and size[0] == 240 and size[1] > 230, (which, size)
    text = page.locator("#try-result").inner_text()
    assert "production: drive v1" in text and "candidate: drive v2" in text and "vessel" in text
    page.screenshot(path=str(shots / "try.png"), full_page=True)
    assert not errors, errors


def test_a_read_token_sees_no_admin_buttons_and_a_forged_admin_call_gets_403(console, browser):
    page, _ = open_console(browser, console, "read")
    page.goto(f"{console['url']}/ui#/domain/drive")
    page.wait_for_selector("#versions tr[data-version='2']")
    assert page.locator("#act").count() == 0 and page.locator("#promote").count() == 0
    status = page.evaluate(
        """async () => (await fetch('v1/domains/drive/rollback', {method: 'POST',
             headers: {authorization: 'Bearer ' + sessionStorage.getItem('raysegment.token')}})).status"""
    )
    assert status == 403
    assert Registry(console["root"]).aliases("drive")["production"] == 1


def test_admin_promote_and_rollback_round_trip_and_hostile_reasons_render_as_text(console, browser, shots):
    page, errors = open_console(browser, console, "admin")
    page.goto(f"{console['url']}/ui#/domain/drive")
    page.wait_for_selector("#promote")
    page.click("#promote")  # judged: drive@2 has no held-back images to be scored on, so it is refused
    page.wait_for_selector("#verdict:not([hidden])")
    assert "NOT PROMOTED" in page.inner_text("#verdict") and "no held-back score" in page.inner_text("#verdict")
    assert Registry(console["root"]).aliases("drive")["production"] == 1
    page.fill("#force-reason", HOSTILE_REASON)
    page.click("#force")
    page.wait_for_selector("#verdict:has-text('(forced)')")
    listing = httpx.get(f"{console['url']}/v1/domains", headers={"authorization": f"Bearer {console['read']}"})
    assert listing.json()["domains"]["drive"]["production"] == 2  # what /v1/domains says changed
    page.reload()
    page.wait_for_selector("#timeline li")
    timeline = page.inner_text("#timeline")
    assert "forced by ops: " + HOSTILE_REASON in timeline  # the markup shows as text
    assert page.locator("#timeline img, #timeline script").count() == 0
    assert page.evaluate("window.__xss === undefined")
    page.screenshot(path=str(shots / "domain.png"), full_page=True)
    page.click("#rollback")
    page.wait_for_selector("#verdict:has-text('production is v1 again')")
    listing = httpx.get(f"{console['url']}/v1/domains", headers={"authorization": f"Bearer {console['read']}"})
    assert listing.json()["domains"]["drive"]["production"] == 1
    page.goto(f"{console['url']}/ui#/")
    page.wait_for_selector("tr[data-domain='drive'] td.decision")
    assert "rolled back from v2 by ops" in page.inner_text("tr[data-domain='drive'] td.decision")
    assert page.evaluate("window.__xss === undefined") and not errors, errors


def test_a_version_shows_its_label_free_estimate_with_a_bar_per_class(console, browser):
    from playwright.sync_api import expect

    page, errors = open_console(browser, console, "read")
    page.goto(f"{console['url']}/ui#/domain/chase")
    cell = page.wait_for_selector("#versions tr[data-version='1'] td.estimate-cell")
    assert "61.00 [55.00–66.00]" in cell.inner_text()
    bars = page.locator("#versions tr[data-version='1'] .classbar")
    expect(bars).to_have_count(2)  # auto-waiting: the page re-renders as its data arrive
    expect(bars.nth(1)).to_have_attribute("title", "vessel: 29.00")
    assert "estimated_" not in page.inner_text("#versions")  # the raw keys are not repeated as metrics
    assert not errors, errors
