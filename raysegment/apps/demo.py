"""The main job, end to end on the embedded default (local Ray): what `make demo` runs.

generated domains -> source fine-tune on Ray Train (ImageNet EfficientNet-Lite0) -> per-domain
Tune search with a few target labels -> winners into the registry -> Serve app up -> one real
HTTP request per domain, overlay written -> the closed loop: a request without a domain routed by
signature, one domain's traffic captured, its drift shown, one `raysegment loop` turn with shadow
evaluation on mirrored requests (promoted, or refused with the reason) -> clean shutdown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysegment.distributed.tune import DomainOutcome

from raysegment.apps.demo_service import request_each_target, serve_registry, show_closed_loop
from raysegment.apps.study import run_study
from raysegment.apps.study_config import StudyConfig, epochs_per_method
from raysegment.apps.study_report import format_table as format_study
from raysegment.config import (
    LABEL_FREE_METHODS,
    SYNTH_DOMAINS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PretrainedConfig,
    RunConfig,
    ScaleConfig,
    SearchConfig,
)
from raysegment.data import open_split, synth
from raysegment.distributed.spec import TuneJob
from raysegment.engine.evaluate import evaluate
from raysegment.errors import RaySegmentError
from raysegment.models.io import save_model
from raysegment.models.rebuild import load_model
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights
from raysegment.registry import Registry
from raysegment.storage import join
from raysegment.viz import bar_chart_png

RAY_LOGGERS = ("ray", "ray.serve", "ray.train", "ray.tune", "ray.data")


@contextlib.contextmanager
def ray_console_to(path: Path) -> Iterator[Callable[[str], None]]:
    """Send what Ray writes to the console (start-up banners, Tune's tables and TensorBoard hint,
    raylet warnings, Serve's messages) to `path`; yields a `log` that still prints to the console,
    so a newcomer reads the demo's own progress and tables."""
    console = sys.stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        handler = logging.StreamHandler(sink)
        saved = {name: logging.getLogger(name).handlers[:] for name in RAY_LOGGERS}
        for name, handlers in saved.items():
            if handlers or name == "ray":
                logging.getLogger(name).handlers = [handler]
        try:
            yield lambda line: print(line, file=console, flush=True)
        finally:
            for name, handlers in saved.items():
                logging.getLogger(name).handlers = handlers


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is. `backbone` other than efficientnet_lite0 starts from random weights (the
    ImageNet file is Lite0's). The method comparison runs on `study_targets` (None: every target);
    on 2 CPU cores each target costs minutes, so the default keeps `make demo` under 15 minutes
    with one photometric shift; `raysegment compare` runs it on any set."""

    images_per_domain: int = 48
    height: int = 128
    width: int = 256
    source_epochs: int = 8
    trials: int = 2
    trial_epochs: int = 3
    shots: int = 10
    targets: tuple[str, ...] = SYNTH_DOMAINS[1:]
    study_methods: tuple[str, ...] = LABEL_FREE_METHODS
    study_shots: tuple[int, ...] = (1, 5)
    study_epochs: int = 3
    study_targets: tuple[str, ...] | None = ("night",)
    backbone: str = "efficientnet_lite0"

    @classmethod
    def quick(cls) -> DemoSettings:
        """`raysegment demo --quick`: every stage, in a few minutes."""
        return cls(
            images_per_domain=16,
            height=64,
            width=128,
            source_epochs=2,
            trial_epochs=2,
            shots=4,
            targets=("fog", "night"),
            study_methods=("adabn", "tent"),
            study_shots=(2,),
            study_epochs=1,
        )

    @property
    def loop_domain(self) -> str:
        return "night" if "night" in self.targets else self.targets[-1]


def pretrained_init(settings: DemoSettings, out: Path) -> PretrainedConfig:
    """Lite0's bundled ImageNet weights, imported once into a safetensors file; else random weights."""
    if settings.backbone != "efficientnet_lite0":
        return PretrainedConfig(source="none")
    weights, _, _ = import_weights(
        bundled_efficientnet_lite0(), "efficientnet_lite0", out / "weights" / "efficientnet_lite0_imagenet.safetensors"
    )
    return PretrainedConfig(source="file", uri=str(weights))


def train_source(settings: DemoSettings, data: Path, out: Path, ray_storage: str | None) -> tuple[RunConfig, Path]:
    """Fine-tune the source model on clear under Ray Train; returns its config and a local model folder."""
    from raysegment.distributed.train import largest_node_cpus, train_on_ray

    cfg = RunConfig(
        data=DataConfig(root=str(data), domain="clear"),
        model=ModelConfig(backbone=settings.backbone, decoder="fpn", pretrained=pretrained_init(settings, out)),
        optim=OptimConfig(epochs=settings.source_epochs, batch_size=8, lr=2e-3, decay=0.9),
        scale=ScaleConfig(num_workers=1, cpus_per_worker=min(2.0, largest_node_cpus()), storage_path=ray_storage),
        output_dir=str(out / "runs" / "source"),
    )
    result = train_on_ray(cfg, name="source")
    if result.model_dir is None:
        raise RaySegmentError(f"the source fine-tune left no model in {result.storage_dir}")
    model, meta = load_model(result.model_dir)
    return cfg, save_model(out / "runs" / "source" / "model", model, meta)


def search_targets(
    settings: DemoSettings, source_cfg: RunConfig, source_dir: Path, registry_uri: str, out: Path, log
) -> list[DomainOutcome]:
    """The per-domain Tune search from the source, its winners registered and judged."""
    from raysegment.distributed.tune import format_table, run_search

    spec = TuneJob(
        job="tune",
        name="demo",
        targets=list(settings.targets),
        registry=registry_uri,
        source=str(source_dir),
        search=SearchConfig(
            num_samples=settings.trials,
            max_epochs=settings.trial_epochs,
            grace_period=1,
            freeze_depth=[0, 1, 2, 3],
            lr=(3e-4, 3e-3),
            jitter=[0.0, 0.2],
        ),
        run=source_cfg.model_copy(
            update={
                "data": source_cfg.data.model_copy(update={"labelled_limit": settings.shots}),
                "optim": source_cfg.optim.model_copy(update={"batch_size": 5}),
                "scale": source_cfg.scale.model_copy(update={"num_workers": 1, "cpus_per_worker": 1}),
                "output_dir": str(out / "runs" / "tune"),
            }
        ),
    )
    outcomes = run_search(spec, log=log)
    log(format_table(outcomes))
    return outcomes


def score_winners(
    settings: DemoSettings, data: Path, source_dir: Path, outcomes: list[DomainOutcome], registry_uri: str, out: Path
) -> tuple[dict[str, dict[str, float]], Path, str]:
    """Test-split mIoU of the source and of each registered winner; the table, its PNG chart and text."""
    registry, eval_cfg = Registry(registry_uri), EvalConfig()
    source_model, _ = load_model(source_dir)
    table: dict[str, dict[str, float]] = {}
    for domain in ("clear", *settings.targets):
        test = open_split(data, domain, "test")
        row = {"source_only": evaluate(source_model, test, eval_cfg).miou}
        if domain != "clear":
            winner, _, entry = registry.load(f"{domain}@{next(o.version for o in outcomes if o.domain == domain)}")
            row["tuned"] = evaluate(winner, test, eval_cfg).miou
            row["version"] = entry.version
        table[domain] = row
    lines = [f"{'domain':<9} {'source-only':>11} {'tuned':>7} {'gain':>6}"]
    for domain, row in table.items():
        tuned = row.get("tuned", row["source_only"])
        lines.append(
            f"{domain:<9} {100 * row['source_only']:>10.1f}% {100 * tuned:>6.1f}% "
            f"{100 * (tuned - row['source_only']):>+6.1f}"
        )
    chart = bar_chart_png(
        out / "miou_per_domain.png",
        {
            "source-only": {d: 100 * r["source_only"] for d, r in table.items()},
            f"tuned winner ({settings.shots} labels)": {
                d: 100 * r.get("tuned", r["source_only"]) for d, r in table.items()
            },
        },
        title="test mIoU per domain",
    )
    return table, chart, "\n".join(lines)


def write_summary(summary: dict, out: Path, data: Path, registry_uri: str, settings: DemoSettings, log) -> None:
    """`results.json`, and how to serve the demo's registry again."""
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    log(f"[demo] done in {summary['seconds']:.0f} s: {summary['chart']}, {out / 'overlays'}/, registry {registry_uri}")
    last = settings.targets[-1]
    log(
        "[demo] the demo's server is shut down; to serve its registry yourself:\n"
        f"  raysegment serve --registry {registry_uri} --port 8000 &   # then open http://127.0.0.1:8000/ui\n"
        f"  curl --data-binary @{data / last / 'images' / summary['served'][last]['image']} "
        f"'http://127.0.0.1:8000/v1/domains/{last}/segment?format=json'"
    )


def demo_data(s: DemoSettings, out: Path, log: Callable[[str], Any]) -> Path:
    """The demo's synthetic domains: the source `clear` and every target."""
    data = synth.generate(
        out / "data",
        domains=("clear", *s.targets),
        images_per_domain=s.images_per_domain,
        height=s.height,
        width=s.width,
    )
    size = f"{s.height}x{s.width}"
    log(f"[demo] 1/6 synthesised clear + {', '.join(s.targets)}: {s.images_per_domain} images each at {size}")
    return data


def demo_study(s: DemoSettings, source_dir: Path, data: Path, out: Path) -> StudyConfig:
    """The demo's comparison: the registered source against every method on the study's targets."""
    return StudyConfig(
        source=str(source_dir),
        data_root=str(data),
        source_domain="clear",
        targets=[t for t in s.targets if s.study_targets is None or t in s.study_targets],
        methods=tuple(s.study_methods),
        shots=tuple(s.study_shots),
        out=str(out / "adapt"),
        epochs=epochs_per_method(s.study_epochs),
    )


def compare_methods(study: StudyConfig, stage: Callable[[str], None], log: Callable[[str], Any]) -> None:
    """The method comparison's stage: its table, on the console."""
    stage(
        f"[demo] 4b/6 adaptation without labels ({', '.join(study.methods)}), with "
        f"{list(study.shots)} labels and with all labels (oracle), on {', '.join(study.targets)}"
    )
    log(format_study(run_study(study, log=log)))


def run_demo(
    out: str | Path = "demo_out",
    settings: DemoSettings = DemoSettings(),
    storage: str | None = None,
    log=print,
) -> dict:
    """Every stage on the connected (or an embedded) Ray cluster: synthesise, train the source, search
    each target, score, compare label-free methods, serve, run the closed loop; returns the summary
    also written to `results.json`. `storage` (e.g. s3://bucket/demo) puts the registry and every
    Ray Train/Tune checkpoint in object storage, as on a cluster whose nodes share no disk; by
    default they are folders under `out`."""
    import ray
    from ray import serve

    from raysegment.distributed.train import ensure_ray
    from raysegment.serving.config import use_serve_process_env

    s, out = settings, Path(out).resolve()
    registry_uri = join(storage, "registry") if storage else str(out / "registry")
    start = time.perf_counter()

    def stage(line: str) -> None:
        log(f"{line}  [{time.perf_counter() - start:.0f} s]")

    data = demo_data(s, out, log)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_serve_process_env()  # the demo's local Ray serves at the end
    started_ray, serving = ensure_ray(), False
    try:
        stage(f"[demo] 2/6 fine-tuning the source on Ray Train ({s.source_epochs} epochs)")
        source_cfg, source_dir = train_source(s, data, out, join(storage, "ray") if storage else None)
        stage(f"[demo] 3/6 per-domain Tune search: {s.trials} trials x <= {s.trial_epochs} epochs, {s.shots} labels")
        outcomes = search_targets(s, source_cfg, source_dir, registry_uri, out, log)
        stage("[demo] 4/6 test-split mIoU: source-only vs registered winner")
        table, chart, text = score_winners(s, data, source_dir, outcomes, registry_uri, out)
        log(text)
        compare_methods(demo_study(s, source_dir, data, out), stage, log)
        stage("[demo] 5/6 Serve app up; one HTTP request per domain")
        url, serving = serve_registry(registry_uri, s.targets, s.loop_domain), True
        served = request_each_target(s.targets, url, data, out, log)
        stage(f"[demo] 5b/6 closed loop: routing without a domain; {s.loop_domain}'s traffic -> loop -> shadow")
        closed_loop = show_closed_loop(url, registry_uri, data, s.loop_domain, s.targets[0], log)
    finally:
        stage("[demo] 6/6 shutting down" + (" Serve" if serving else "") + (" and Ray" if started_ray else ""))
        if serving:
            serve.shutdown()
        if started_ray:
            ray.shutdown()
    summary = {
        "table": table,
        "served": served,
        "seconds": time.perf_counter() - start,
        "chart": str(chart),
        "adapt": json.loads((out / "adapt" / "results.json").read_text()),
        "closed_loop": closed_loop,
    }
    write_summary(summary, out, data, registry_uri, s, log)
    return summary
