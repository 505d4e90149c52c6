"""Shared fixtures: one small synthetic dataset, tiny timm backbones, the bundled ImageNet weights."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub from tests

import pytest
import torch

from raysegment.config import parse_config
from raysegment.data import synth

torch.set_num_threads(2)

# Every process this session starts (Ray daemons and workers, servers, CLI subprocesses, the browser)
# inherits this mark; at the end, one still alive fails the run by name (`pytest_sessionfinish`).
SESSION_MARK = "RAYSEGMENT_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{time.time_ns()}"
LINGER_S = 30.0  # how long processes get to exit after the last teardown (Ray stops asynchronously)


def live_processes(reads: str, holds: bytes) -> list[int]:
    """Live (not zombie) processes other than this one whose /proc/PID/`reads` file holds `holds`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if holds in b"\0" + (entry / reads).read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def marked_processes(marker: str, prefix: bool = False) -> list[int]:
    """Processes whose environment holds `marker` (KEY=VALUE; with `prefix`, a value starting so)."""
    return live_processes("environ", b"\0" + marker.encode() + (b"" if prefix else b"\0"))


def processes_named(prefix: str) -> list[int]:
    """Processes whose command line starts with `prefix` (Ray names its workers `ray::Class`)."""
    return live_processes("cmdline", b"\0" + prefix.encode())


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return f"pid {pid} (gone)"
    return f"pid {pid}: {cmd[:160]} (cwd {cwd})"


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def pytest_sessionfinish(session, exitstatus):
    """The suite ends with nothing of its own running: after the last teardown, any process it
    started that is still alive (past a grace period) is named, killed, and fails the run."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    multiprocessing.forkserver._forkserver._stop()  # the registry writers' warm forkserver (tests' own) ...
    multiprocessing.resource_tracker._resource_tracker._stop()  # ... and the resource tracker it started
    marker = f"{SESSION_MARK}={os.environ[SESSION_MARK]}"
    deadline = time.monotonic() + LINGER_S
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = marked_processes(marker)
    if left:
        names = [describe(pid) for pid in left]
        kill_all(left)
        sys.stderr.write(
            "\nprocesses the test session started are still running (now killed):\n  " + "\n  ".join(names) + "\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


TINY_BACKBONE = "test_efficientnet"  # timm's 82k-parameter test net: 5 stages, dotted module names


README_STARTS = "test_readme_path_trains_registers_and_serves"  # first: it leaves the README's server up ...
README_ENDS = "test_readme_server_still_answers_and_stops_clean"  # ... asked again and stopped here,
README_ENDS_BEFORE = "tests/test_console.py"  # ... placed before these: >= 90 s of other tests later


def pytest_collection_modifyitems(config, items):
    """The README test's idle minute (its server must stay up 90 s) is spent running other tests."""
    starts = [i for i in items if i.name == README_STARTS]
    ends = [i for i in items if i.name == README_ENDS]
    if starts and ends:
        rest = [i for i in items if i not in starts and i not in ends]
        at = next((n for n, i in enumerate(rest) if i.nodeid.startswith(README_ENDS_BEFORE)), len(rest))
        items[:] = starts + rest[:at] + ends + rest[at:]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (AMP/channels-last paths); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def retina_root() -> Path:
    """The real DRIVE -> CHASE_DB1 set: $RAYSEGMENT_RETINA, else data/retina in the checkout, as
    `raysegment data import drive|chase` lays them out (the README says where to download them)."""
    return Path(os.environ.get("RAYSEGMENT_RETINA") or Path(__file__).resolve().parents[1] / "data" / "retina")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Three 64x128 domains, 12 images each (train 7 / val 2 / test 3)."""
    return synth.generate(
        tmp_path_factory.mktemp("synth"),
        domains=("clear", "fog", "night"),
        images_per_domain=12,
        height=64,
        width=128,
        seed=0,
    )


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory):
    from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights

    path, _, _ = import_weights(
        bundled_efficientnet_lite0(), "efficientnet_lite0", tmp_path_factory.mktemp("weights") / "effl0.safetensors"
    )
    return path


def train_source(root, domain: str, out, epochs: int, batch_size: int, channels: int):
    """Fit a tiny FPN segmenter on `domain` in this process and save it as a model folder."""
    from raysegment.data import open_split
    from raysegment.engine.epochs import fit
    from raysegment.models.io import save_model

    cfg = parse_config(
        {
            "data": {"root": str(root), "domain": domain},
            "model": {"backbone": TINY_BACKBONE, "decoder": "fpn", "decoder_channels": channels},
            "optim": {"epochs": epochs, "batch_size": batch_size, "lr": 5e-3},
            "output_dir": str(out / "run"),
        }
    )
    learner = fit(cfg, open_split(root, domain, "train"), resume=False, log=lambda line: None)
    return save_model(out / "model", learner.method.model, learner.meta)


@pytest.fixture(scope="session")
def source_model_dir(synth_root, tmp_path_factory):
    """A tiny segmenter trained on `clear` (the source) and saved as a model folder."""
    return train_source(synth_root, "clear", tmp_path_factory.mktemp("source"), epochs=20, batch_size=4, channels=16)


@pytest.fixture
def tiny_config(synth_root, tmp_path):
    """A RunConfig on the synthetic data with a tiny backbone; override with `.model_copy`."""

    def make(**sections):
        base = {
            "data": {"root": str(synth_root), "domain": "clear"},
            "model": {"backbone": TINY_BACKBONE, "decoder": "fpn", "decoder_channels": 16},
            "optim": {"epochs": 2, "batch_size": 4, "lr": 3e-3},
            "augment": {"jitter": 0.1},
            "output_dir": str(tmp_path / "run"),
        }
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return parse_config(base, "test")

    return make


# ----------------------------------------------------------------------------------------------
# One real Ray cluster per test session: a head and a worker node started with `ray start` on
# 127.0.0.1, 1 CPU each (the machine has 2), own ports and a short temp dir, stopped by pid.
# Never `ray stop`: it would kill every Ray process on the host.

os.environ["RAY_AUTH_MODE"] = "disabled"  # same behaviour with or without ~/.ray/auth_token
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    address: str
    dashboard_url: str
    temp_dir: str
    processes: list
    metrics_ports: list[int]  # each node's Prometheus endpoint (`--metrics-export-port`)


def _worker_port_range(slot: int) -> list[str]:
    """Worker ports below the kernel's ephemeral range (32768+), where `free_port()` never lands:
    Ray refuses to start a node whose component port falls inside its worker-port range."""
    base = 10000 + (os.getpid() % 50) * 400 + slot * 200
    return [f"--min-worker-port={base}", f"--max-worker-port={base + 199}"]


def _node_ports(slot: int, metrics_port: int) -> list[str]:
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={metrics_port}",
        *_worker_port_range(slot),
    ]


def _wait(predicate, timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.5)
    tails = "".join(
        f"\n--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        for log in logs
        if log.is_file()
    )
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s{tails}")


def _start_node(args: list[str], log: Path, env: dict, private: Path) -> subprocess.Popen:
    """`ray start --block` in its own session, its output kept in `log` for failure reports, in a
    working folder and temp dir (TMPDIR) of its own: what one node's processes write there is not
    where another node's processes look."""
    bin_dir = Path(sys.executable).parent
    private.mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(private)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                str(bin_dir / "ray"),
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                "--num-gpus=0",
                "--disable-usage-stats",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=private,
        )


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """Two Ray nodes on 127.0.0.1. Their processes get the S3 server's endpoint and credentials in
    their environment (as cluster nodes get them from their instance role or a Secret). Both nodes
    see this host's disk, and RAYSEGMENT_SHARED_FS=1 says so; a test that must prove nothing relies
    on it unsets it and keeps every durable file in S3."""
    import httpx
    import ray

    bin_dir = Path(sys.executable).parent
    from raysegment.distributed.train import SHARED_FS_ENV
    from raysegment.serving.config import SERVE_PROCESS_ENV

    os.environ[SHARED_FS_ENV] = "1"
    gcs, dash = free_port(), free_port()
    env = {
        **os.environ,
        **SERVE_PROCESS_ENV,
        "RAY_metrics_report_interval_ms": "2000",  # the metrics test sees its counters within seconds
        # Ray Train's controller polls its workers every 2 s, so each run ends up to 2 s after its last
        # epoch; the suite runs ~20 of them (a test speed-up only: deployments keep Ray's default).
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        # No preemption watcher actor per Ray Train run (one more Python process each, ~20 runs): the
        # loopback nodes are never drained. Deployments keep Ray's default (on).
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        # Where this cluster's own processes find it. Ray Train's placement-group cleaner asks the State
        # API with no address: with another Ray on the host (the README test's server) it found two,
        # failed, and never freed a finished run's CPUs, so the next run's decode tasks waited forever.
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
    }
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    logs = [Path(temp_dir) / "head.out", Path(temp_dir) / "worker.out"]
    metrics_ports = [free_port(), free_port()]
    procs = [
        _start_node(
            [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={temp_dir}",
                *_node_ports(0, metrics_ports[0]),
            ],
            logs[0],
            env,
            Path(temp_dir) / "head-private",
        )
    ]
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", temp_dir, procs, metrics_ports)
    try:
        _wait(
            lambda: httpx.get(f"{cluster.dashboard_url}/api/version", timeout=2).status_code == 200,
            240,  # a ceiling: a fresh venv's first start compiles the dashboard's modules (~90 s seen)
            "Ray head dashboard",
            logs,
        )
        ray.init(address=cluster.address, log_to_driver=False)
        # This process's own State API calls (and its subprocesses') name this cluster: another Ray on
        # the host (the README test's server) makes address auto-detection fail.
        os.environ["RAY_ADDRESS"] = cluster.address
        for attempt in range(2):  # a worker node that fails to join is replaced once, on fresh ports
            private = Path(temp_dir) / f"worker-private-{attempt}"
            metrics_ports[1] = free_port()
            worker = _start_node(
                [f"--address={cluster.address}", *_node_ports(1, metrics_ports[1])], logs[1], env, private
            )
            procs.append(worker)
            try:
                _wait(
                    lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2,
                    60,
                    "Ray worker node",
                    logs + sorted(Path(temp_dir).glob("session_latest/logs/raylet*.out")),
                )
                break
            except TimeoutError:
                if attempt == 1:
                    raise
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
                logs[1].rename(logs[1].with_suffix(".first"))
                logs.append(logs[1].with_suffix(".first"))
        yield cluster
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=3)  # then SIGKILL: nothing of the test cluster needs keeping
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # Ray workers that outlive their raylet (a Train controller was once found 20 minutes later)
        # are in no node's process group; each carries its node's private TMPDIR in its environment.
        deadline = time.monotonic() + 10
        while (left := marked_processes(f"TMPDIR={temp_dir}/", prefix=True)) and time.monotonic() < deadline:
            time.sleep(0.5)
        kill_all(left)


# ----------------------------------------------------------------------------------------------
# Real-world shapes (what broke on real data): 2 classes with one dominant, sizes not divisible by
# the backbone stride, other sizes between and within domains, a target smaller than one batch,
# grayscale / RGBA / palette files, and a target domain with no masks folder at all.
def _write_scene(path_image, path_mask, height: int, width: int, seed: int, mode: str, bright: float) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    vessel = np.zeros((height, width), bool)
    for _ in range(3):  # thin bright curves on a dark disc: a dominant background, a rare foreground
        a, b, c = rng.uniform(-1, 1), rng.uniform(0, height), rng.uniform(0.02, 0.08)
        vessel |= np.abs(yy - (b + a * xx + c * (xx - width / 2) ** 2 / max(width, 1))) < 1.5
    image = np.stack([0.3 + 0.1 * rng.random((height, width))] * 3, -1) * bright
    image[vessel] = (0.9 * bright, 0.5 * bright, 0.4 * bright)
    rgb = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    {"L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"), "P": rgb.convert("P"), "RGB": rgb}[mode].save(path_image)
    if path_mask is not None:
        Image.fromarray(vessel.astype(np.uint8)).save(path_mask)


@pytest.fixture(scope="session")
def odd_root(tmp_path_factory):
    """`drive`: 7 labelled images of 45x61 (train 5 / val 1 / test 1); `chase`: 5 images of 71x53 and
    67x50 in grayscale, RGBA and palette PNGs (train 2, smaller than one batch / val 2 / test 1);
    `raw`: 4 unlabelled images, no masks folder. 2 classes, background dominant."""
    import json

    root = tmp_path_factory.mktemp("odd")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "odd",
                "classes": ["background", "vessel"],
                "ignore_index": 255,
                "palette": [[0, 0, 0], [255, 255, 255]],
            }
        )
    )
    domains = {
        "drive": ([(45, 61)] * 7, ["RGB"] * 7, 1.0, (5, 1)),
        "chase": ([(71, 53), (67, 50), (71, 53), (67, 50), (71, 53)], ["L", "RGBA", "P", "RGB", "L"], 0.6, (2, 2)),
        "raw": ([(50, 40)] * 4, ["RGB"] * 4, 0.6, (2, 1)),
    }
    for d, (sizes, modes, bright, (n_train, n_val)) in domains.items():
        (root / d / "images").mkdir(parents=True)
        if d != "raw":
            (root / d / "masks").mkdir()
        stems = []
        for i, ((h, w), mode) in enumerate(zip(sizes, modes)):
            stem = f"{d}_{i:02d}"
            _write_scene(
                root / d / "images" / f"{stem}.png",
                None if d == "raw" else root / d / "masks" / f"{stem}.png",
                h,
                w,
                seed=sum(map(ord, d)) * 100 + i,
                mode=mode,
                bright=bright,
            )
            stems.append(stem)
        (root / d / "splits.json").write_text(
            json.dumps(
                {"train": stems[:n_train], "val": stems[n_train : n_train + n_val], "test": stems[n_train + n_val :]}
            )
        )
    return root


@pytest.fixture(scope="session")
def odd_source_dir(odd_root, tmp_path_factory):
    """A tiny 2-class segmenter trained on `drive` of `odd_root`."""
    return train_source(odd_root, "drive", tmp_path_factory.mktemp("odd_source"), epochs=3, batch_size=2, channels=8)


def many_scan_jpeg(size: tuple[int, int], repeats: int) -> bytes:
    """A progressive JPEG whose smallest scan is repeated `repeats` times: small on the wire, and
    libjpeg walks every block of the image once per scan (a 357 KB 2048x2048 file with 20,000
    scans takes over a minute of CPU to decode)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 40)).save(buf, "JPEG", progressive=True, quality=90)
    body = buf.getvalue()
    starts = [i for i in range(len(body) - 1) if body[i : i + 2] == b"\xff\xda"] + [len(body) - 2]
    smallest = min((body[a:b] for a, b in zip(starts, starts[1:])), key=len)
    return body[:-2] + smallest * repeats + b"\xff\xd9"


# ----------------------------------------------------------------------------------------------
# Label Studio, a real server from its own virtual environment (`make label-studio`; make test does it).
LABEL_STUDIO_BIN = Path(__file__).resolve().parents[1] / ".venv-ls" / "bin" / "label-studio"


class LabelStudioServer:
    """`label-studio start` on 127.0.0.1 with its own data folder, a user and a legacy API token. It
    boots in the background (its first start migrates a database: tens of seconds); `ready()` waits."""

    def __init__(self, folder: Path) -> None:
        import secrets

        if not LABEL_STUDIO_BIN.exists():
            pytest.fail(f"no Label Studio at {LABEL_STUDIO_BIN}: `make label-studio` installs it (make test does)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.token = free_port(), secrets.token_hex(20)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "label-studio.log"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(folder),
            "DJANGO_DB": "sqlite",
            # No error reporting to sentry.io (no network here, and nothing of a test run to report).
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
        args = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(folder), "--username", "labeller@example.com", "--password", secrets.token_hex(8)]
        args += ["--user-token", self.token, "--enable-legacy-api-token"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(LABEL_STUDIO_BIN), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=folder,
            )

    def ready(self, timeout_s: float = 300) -> LabelStudioServer:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, self.log.read_text(errors="replace")[-3000:]
            time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def cli(capsys):
    """`raysegment ARGS` run in this process through `raysegment.cli.main`, the function the entry
    point calls: (returncode, stdout, stderr). It saves the ~8 s a fresh Python pays to import
    torch, timm and Ray; the entry point itself is run as a subprocess in test_cli."""
    from types import SimpleNamespace

    from raysegment.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


# moto's standalone S3 server, run single-threaded: each request's precondition check and write
# then happen as one step, as on S3 itself (moto's threaded server checks and writes in two steps,
# so two racing `If-None-Match: *` puts could both pass there, which real S3 never allows).
S3_SERVER = """
import sys
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server
app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=False, request_handler=MotoRequestHandler)
print("ready", flush=True)
server.serve_forever()
"""
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server on 127.0.0.1 for the session; credentials and endpoint reach
    boto3 (and every subprocess) the standard way, through the environment."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", S3_SERVER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket per test: `s3://<bucket>`."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(params=["folder", "s3"])
def registry_uri(request, tmp_path):
    """The same tests on a local folder and on a bucket of the loopback S3 server."""
    if request.param == "folder":
        return str(tmp_path / "registry")
    return request.getfixturevalue("s3_bucket") + "/registry"


def miscalibrated(model):
    """BatchNorm statistics that no longer fit the images (what a sensor change does): the model's
    predictions fall apart, and re-estimating the statistics (AdaBN) fixes them."""
    from raysegment.models.freeze import is_batchnorm

    with torch.no_grad():
        for module in model.modules():
            if is_batchnorm(module) and module.running_var is not None:
                module.running_var.mul_(40.0)
                module.running_mean.add_(1.5)
    return model


def constant_model(meta, cls: int) -> torch.nn.Module:
    """A segmenter whose head makes it answer `cls` everywhere: responses reveal which model ran."""
    from raysegment.models.segmenter import build_segmenter

    model = build_segmenter(meta.model, meta.num_classes)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), meta.num_classes).float() * 10)
    return model


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray_png(width: int, height: int, extra: bytes = b"", bad_filter: bool = False) -> bytes:
    """An 8-bit grayscale PNG written by hand: `extra` chunks before the image data, and with
    `bad_filter` a last row whose filter byte (7) no PNG decoder knows."""
    import struct
    import zlib

    rows = b"".join(bytes([7 if bad_filter and y == height - 1 else 0]) + bytes(width) for y in range(height))
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + extra + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
