"""How long the console's overview takes to show a large registry: 50 domains x 10 versions (each
version a delta on its domain's first, the models timm's 82k-parameter test net), served by Ray
Serve on this machine (local Ray, token auth), loaded in Debian's chromium by Playwright.

Times, per load: the `GET /v1/domains` call alone, and the page from navigation until its table
shows every domain (cold: right after start, then warm within the gateway's cache). Writes a JSON
summary next to a screenshot of the overview.

    python benchmarks/bench_console.py [--domains 50] [--versions 10] [--loads 5] [--out bench_out/console]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from ray import serve  # noqa: E402

from raysegment.config import ModelConfig  # noqa: E402
from raysegment.models.io import ModelMeta  # noqa: E402
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry  # noqa: E402
from raysegment.serving.app import build_app  # noqa: E402
from raysegment.serving.auth import add_token  # noqa: E402
from raysegment.serving.config import Replicas, ServeConfig, use_serve_process_env  # noqa: E402

META = ModelMeta(
    model=ModelConfig(backbone="test_efficientnet", decoder_channels=8),
    num_classes=2,
    classes=["background", "vessel"],
    palette=[(0, 0, 0), (220, 40, 40)],
)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def build_registry(root: Path, domains: int, versions: int) -> float:
    start = time.perf_counter()
    reg = Registry(root)
    torch.manual_seed(0)
    model = build_segmenter(META.model, 2)
    for d in range(domains):
        name = f"site-{d:02d}"
        for v in range(1, versions + 1):
            with torch.no_grad():
                model.head.bias.add_(0.01)  # type: ignore[union-attr]  # the head's conv has a bias
            parent = f"{name}@1" if v > 1 else None
            reg.register(name, model, META, {"val_miou": 0.6 + v / 100}, parent=parent, lineage={"method": "adabn"})
            reg.set_alias(name, v, "production" if v <= versions - 1 else "candidate")
    return time.perf_counter() - start


def time_loads(url: str, token: str, args: argparse.Namespace, out: Path) -> tuple[list[float], list[float]]:
    """`args.loads` times: the overview's API call, then the page in Chromium until its last row
    is drawn; (API seconds, page seconds), and a screenshot of the last load."""
    api, page_times = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(f"{url}/ui")
        page.evaluate(f"sessionStorage.setItem('raysegment.token', {json.dumps(token)})")
        for k in range(args.loads):
            if k:
                time.sleep(1.5)  # past the gateway's 1 s cache: every load reads the registry again
            t = time.perf_counter()
            r = httpx.get(f"{url}/v1/domains", headers={"authorization": f"Bearer {token}"}, timeout=120)
            api.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["domains"]) == args.domains
            time.sleep(1.5)
            t = time.perf_counter()
            page.goto(f"{url}/ui#/")
            page.reload()
            last = f"site-{args.domains - 1:02d}"  # a locator, not eval: the page's CSP forbids eval
            page.wait_for_selector(f"#overview tr[data-domain='{last}'] td.production", timeout=120_000)
            assert page.locator("#overview tbody tr").count() == args.domains
            page_times.append(time.perf_counter() - t)
            print(f"load {k + 1}: API {api[-1]:.2f} s, page {page_times[-1]:.2f} s", flush=True)
        page.screenshot(path=str(out / "overview-50x10.png"), full_page=False)
        browser.close()
    return api, page_times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", type=int, default=50)
    p.add_argument("--versions", type=int, default=10)
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--out", default="bench_out/console")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_serve_process_env()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "registry"
        built = build_registry(root, args.domains, args.versions)
        print(f"registry: {args.domains} domains x {args.versions} versions in {built:.0f} s", flush=True)
        token = add_token(Path(tmp) / "tokens", "bench", "read")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(registry=str(root), token_file=str(Path(tmp) / "tokens"), replicas=Replicas(max_replicas=1))
        serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
        api, page_times = time_loads(f"http://127.0.0.1:{port}", token, args, out)
        serve.shutdown()
        ray.shutdown()
    summary = {
        "domains": args.domains,
        "versions": args.versions,
        "api_s": [round(x, 3) for x in api],
        "page_s": [round(x, 3) for x in page_times],
        "api_median_s": round(statistics.median(api), 3),
        "page_median_s": round(statistics.median(page_times), 3),
        "machine": "2 CPU cores, no GPU; local Ray (2 CPUs), one Gateway and one SegmentModels replica",
    }
    (out / "console.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
