"""`raysegment compare`: the per-domain comparison table, its files and its CLI."""

import json
import math
import re

import pytest
from conftest import TINY_BACKBONE, retina_root
from PIL import Image
from pydantic import ValidationError

from raysegment.apps.study import run_study
from raysegment.apps.study_config import StudyConfig
from raysegment.apps.study_report import TargetReport, format_table
from raysegment.config import CRITERIA
from raysegment.data import open_split
from raysegment.engine.policy import pick


def compare(source, root, source_domain: str, targets: list[str], log=lambda line: None, **settings):
    """`run_study` on a StudyConfig built from these, as the CLI builds it."""
    settings = {k: str(v) if k == "out" else v for k, v in settings.items()}
    cfg = StudyConfig(source=str(source), data_root=str(root), source_domain=source_domain, targets=targets, **settings)
    return run_study(cfg, log=log)


def test_gap_closed_is_the_share_of_source_to_oracle():
    report = TargetReport("fog", True, test_miou={"source-only": 0.4, "oracle": 0.8, "adabn": 0.6, "tent": 0.3})
    assert math.isclose(report.gap_closed("adabn"), 0.5) and math.isclose(report.gap_closed("tent"), -0.25)
    assert math.isnan(TargetReport("x", True, test_miou={"source-only": 0.5, "adabn": 0.6}).gap_closed("adabn"))
    assert math.isnan(TargetReport("x", True, test_miou={"source-only": 0.5, "oracle": 0.5}).gap_closed("oracle"))


def test_the_proxy_keeps_the_source_unless_a_result_beats_it():
    report = TargetReport(
        "x", False, proxy={"source-only": {"score": 0.7}, "adabn": {"score": 0.7}, "tent": {"score": 0.6}}
    )
    assert report.proxy_choice == "source-only" and "source model stays" in report.proxy_reason
    report.proxy["self_training"] = {"score": 0.75}
    assert report.proxy_choice == "self_training" and "75.0 against the source model's 70.0" in report.proxy_reason


def test_study_writes_table_results_and_chart(synth_root, source_model_dir, tmp_path):
    lines = []
    reports = compare(
        source_model_dir,
        synth_root,
        "clear",
        ["night"],
        methods=("adabn",),
        shots=(2,),
        out=tmp_path,
        epochs={"finetune": 2, "oracle": 2},
        log=lines.append,
    )
    (night,) = reports
    assert list(night.test_miou) == ["source-only", "adabn", "2-shot", "oracle"]
    assert set(night.proxy) == set(night.val_miou) == {"source-only", "adabn"}
    assert night.labels_used == {"source-only": 0, "adabn": 0, "2-shot": 2, "oracle": 7}
    assert night.test_miou["adabn"] > night.test_miou["source-only"]  # night is a photometric shift
    results = json.loads((tmp_path / "results.json").read_text())
    if "adabn" in night.above_oracle:  # a two-epoch oracle: no upper reference, so no share is given
        assert results[0]["above_oracle"] == night.above_oracle and "adabn" not in results[0]["gap_closed"]
    else:
        assert results[0]["gap_closed"]["adabn"] == night.gap_closed("adabn")
    assert set(results[0]["estimate"]) == set(night.test_miou)  # every candidate is estimated without labels
    assert results[0]["proxy_choice"] in ("source-only", "adabn") and results[0]["proxy_reason"]
    assert Image.open(tmp_path / "adapt_miou.png").format == "PNG"
    table = format_table(reports)
    assert "gap closed" in table and "judge pick:" in table and "val labels would pick" in table
    assert any("adabn" in line for line in lines)


def test_study_judges_by_every_criterion_a_canary_and_a_picked_scale(odd_root, odd_source_dir, tmp_path):
    """Real-world shapes (2 classes, odd sizes, 2 target train images): a variant, a canary of one
    labelled val image and a target scale picked without labels; every criterion scores every
    label-free candidate, and the table says how each ranks them against the test labels."""
    lines = []
    (chase,) = compare(
        odd_source_dir,
        odd_root,
        "drive",
        ["chase"],
        methods=("adabn", "tent"),
        shots=(),
        oracle=False,
        out=tmp_path,
        epochs={"tent": 1},
        variants=("adabn-half",),
        canary=1,
        target_short_sides=[25, 50],
        log=lines.append,
    )
    label_free = {"source-only", "source-rescaled", "adabn", "tent", "adabn-half"}
    assert set(chase.proxy) == set(chase.canary_miou) == label_free
    assert all(set(chase.proxy[c]) == {*CRITERIA, "score"} for c in label_free)
    assert chase.scale["short_side"] in (25, 50) and chase.labels_used["canary"] == 1
    assert chase.proxy_choice == pick(chase.canary_miou, "source-only", "labels")
    assert "canary" in chase.proxy_reason
    table = format_table([chase])
    assert all(c in table for c in CRITERIA) and "spearman" in table and "target scale picked" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results[0]["criteria_quality"]) == set(CRITERIA)
    assert len(results) == 1 and set(json.loads((tmp_path / "criteria.json").read_text())) == set(CRITERIA)


def test_study_refuses_an_unknown_variant(odd_root, odd_source_dir, tmp_path):
    with pytest.raises(ValidationError, match="adabn-half"):
        compare(odd_source_dir, odd_root, "drive", ["chase"], variants=("nope",), out=tmp_path)


RETINA = retina_root()


@pytest.mark.slow
@pytest.mark.skipif(
    not RETINA.is_dir(),
    reason=f"no real retina data at {RETINA}: download DRIVE and CHASE_DB1 and lay them out with "
    "`raysegment data import` (README, Real data), or set RAYSEGMENT_RETINA",
)
def test_adapt_study_runs_on_real_retina_drive_to_chase(cli, tmp_path):
    """The real cross-scanner shift, end to end through the CLI at a small working scale: a source
    trained on DRIVE (565x584), every label-free method, 2-shot and the oracle on CHASE (999x960)."""
    cfg = tmp_path / "source.yaml"
    cfg.write_text(
        f"data: {{root: {RETINA}, domain: drive, resize: {{short_side: 48}}}}\n"
        f"model: {{backbone: {TINY_BACKBONE}, decoder: fpn, decoder_channels: 8}}\n"
        f"optim: {{epochs: 2, batch_size: 8, lr: 0.005}}\noutput_dir: {tmp_path / 'source'}\n"
    )
    train = cli("train", "--config", cfg)
    assert train.returncode == 0, train.stderr
    study = cli(
        "compare",
        "--source",
        tmp_path / "source" / "model",
        "--data",
        RETINA,
        "--source-domain",
        "drive",
        "--targets",
        "chase",
        "--short-side",
        "48",
        "--epochs",
        "1",
        "--shots",
        "2",
        "--variants",
        "adabn-half",
        "--out",
        tmp_path / "study",
    )
    assert study.returncode == 0, study.stderr
    (chase,) = json.loads((tmp_path / "study" / "results.json").read_text())
    assert list(chase["test_miou"]) == [
        "source-only",
        "adabn",
        "tent",
        "self_training",
        "adabn-half",
        "2-shot",
        "2-shot self-training",
        "oracle",
    ]
    assert set(chase["test_iou"]["oracle"]) == {"background", "vessel"}
    assert set(chase["estimate"]) == set(chase["test_miou"])  # each estimated without the test labels
    assert chase["labels_used"]["oracle"] == 14 and chase["proxy_choice"] in chase["proxy"]
    assert "judge pick:" in study.stdout and "vessel" in study.stdout and "spearman" in study.stdout


def test_compare_cli_reports_a_missing_source_in_one_line(cli, tmp_path, synth_root):
    result = cli(
        "compare", "--source", tmp_path / "nope", "--data", synth_root, "--source-domain", "clear", "--targets", "fog"
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nope" in result.stderr


def test_compare_reads_a_domains_captured_traffic_in_place(cli, synth_root, source_model_dir, s3_bucket, tmp_path):
    """`--targets traffic:night`: the images the service captured for night, read from a snapshot
    inside the (S3) registry's store, unlabelled; self-training's labelled source stays in --data."""
    from raysegment.registry.traffic import TrafficStore

    registry = f"{s3_bucket}/registry"
    traffic = TrafficStore(registry)
    for path, _ in open_split(synth_root, "night", "all").samples:
        traffic.capture("night", path.read_bytes(), "png")
    common = ["compare", "--source", source_model_dir, "--data", synth_root, "--source-domain", "clear"]
    result = cli(
        *common,
        *["--targets", "traffic:night", "--methods", "adabn", "self_training", "--shots", "--no-oracle"],
        *["--epochs", "1", "--registry", registry, "--out", tmp_path],
    )
    assert result.returncode == 0, result.stderr
    (report,) = json.loads((tmp_path / "results.json").read_text())
    assert report["domain"] == "traffic:night" and not report["labelled"]
    assert set(report["proxy"]) == {"source-only", "adabn", "self_training"}
    assert report["labels_used"] == {"source-only": 0, "adabn": 0, "self_training": 0}
    assert traffic.store.children("traffic/night/snapshots") == []
    assert not list(tmp_path.rglob("night_*.png")) and not list(tmp_path.rglob("0000*.png"))
    empty = cli(*common, "--targets", "traffic:fog", "--registry", registry, "--out", tmp_path / "x")
    assert empty.returncode == 2 and "traffic:fog: 0 captured images" in empty.stderr


def test_a_candidate_above_the_oracle_gets_no_gap_share():
    report = TargetReport(
        "night",
        True,
        test_miou={"source-only": 0.4, "adabn": 0.79, "oracle": 0.66},
        test_iou={c: {"a": 0.5, "b": 0.5} for c in ("source-only", "adabn", "oracle")},
        proxy={
            "source-only": {"score": 0.5, **dict.fromkeys(CRITERIA, 0.5)},
            "adabn": {"score": 0.6, **dict.fromkeys(CRITERIA, 0.6)},
        },
        labels_used={"source-only": 0, "adabn": 0, "oracle": 28},
    )
    assert report.above_oracle == ["adabn"]
    table = format_table([report])
    assert "> oracle" in table and "no upper reference" in table
    assert not re.search(r"\b(10[1-9]|1[1-9]\d|[2-9]\d\d)%", table), table  # no share above 100%


def test_compare_registers_the_judges_pick_and_a_second_pick_must_beat_production(
    cli, odd_root, odd_source_dir, tmp_path
):
    """A plain folder of images (any names, no masks) is the target; the pick is registered as a
    delta on the source (registered once) and judged: against the source for a new domain, against
    production the second time."""
    import shutil

    from raysegment.registry import Registry

    photos = tmp_path / "ward 7 photos"
    photos.mkdir()
    for i, image in enumerate(sorted((odd_root / "chase" / "images").glob("*.png"))):
        shutil.copy(image, photos / f"scan {i}.PNG")
    registry = tmp_path / "registry"
    args = ["compare", "--source", odd_source_dir, "--data", odd_root, "--source-domain", "drive"]
    args += ["--targets", photos, "--methods", "adabn", "tent", "--epochs", "1", "--registry", registry]
    first = cli(*args, "--out", tmp_path / "one")
    assert first.returncode == 0, first.stderr
    reg = Registry(registry)
    assert sorted(reg.domains()) == ["drive", "ward-7-photos"]  # the folder's name, made a domain name
    pick = reg.resolve("ward-7-photos@1")
    assert pick.base.domain == "drive" and pick.lineage.target_labels == 0
    assert pick.lineage.fact("study_candidate") in ("source-only", "adabn", "tent")
    decision = next(r.decision for r in reg.history("ward-7-photos") if r.decision)
    assert decision.incumbent == "drive@1" and "study" in decision.evidence
    assert (tmp_path / "one" / "targets" / "ward-7-photos" / "splits.json").is_file()
    assert not (tmp_path / "one" / "targets" / "ward-7-photos" / "masks").exists()

    second = cli(*args, "--out", tmp_path / "two")
    assert second.returncode == 0, second.stderr
    assert reg.versions("drive") == [1]  # the source is registered once
    decisions = [r.decision for r in reg.history("ward-7-photos") if r.decision]
    if decisions[0].promoted:  # the second pick faced production, scored on its held-back images
        assert decisions[1].incumbent == "ward-7-photos@1"


def test_k_shot_rows_label_the_selected_images_and_self_train_with_them(odd_root, odd_source_dir, tmp_path):
    """`--select active`: the k-shot rows label the images the source model ranks first (recorded),
    and with self-training among the methods each k also gets a row that self-trains with those k
    labels beside the pseudo-labelled rest."""
    (chase,) = compare(
        odd_source_dir,
        odd_root,
        "drive",
        ["chase"],
        methods=("self_training",),
        shots=(1,),
        oracle=False,
        out=tmp_path,
        epochs={"self_training": 1, "finetune": 1},
        select="active",
        log=lambda line: None,
    )
    assert sorted(chase.selected) == ["chase_00", "chase_01"]  # every labelled train image, ranked
    assert {"1-shot", "1-shot self-training"} <= set(chase.test_miou)
    assert chase.labels_used["1-shot self-training"] == 1 and chase.labels_used["self_training"] == 0
