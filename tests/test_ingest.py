"""Ray Data ingest (`distributed.ingest`) on the suite's two-node cluster, datasets in the loopback
S3 server: the same batches as the DataLoader, and whole runs whose data exists only in the bucket."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from conftest import processes_named

from raysegment.data import EpochSampler, RareClassSampler, open_split
from raysegment.data.dataset import read_mask
from raysegment.storage import upload_tree

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the epoch hook runs on workers: no tests/ there


def _batches(loader) -> list:
    return [tuple(t.clone() for t in batch) for batch in loader]


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_ray_data_gives_each_rank_the_dataloaders_batches(ray_cluster, odd_root, s3_bucket, tiny_config):
    from raysegment.distributed.ingest import RayDataLoader
    from raysegment.engine.method import endless, make_loader

    uri = upload_tree(odd_root, f"{s3_bucket}/odd")
    cfg = tiny_config(optim={"batch_size": 2, "epochs": 2})  # a loader streams epochs 0..1 at most
    streaming = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 4})})
    cpu = torch.device("cpu")
    cases = {
        # drive: 5 labelled 45x61 images over 2 ranks (padded to 3 each); epochs give other orders
        "drive": (open_split(odd_root, "drive", "train"), open_split(uri, "drive", "train")),
        # chase: mixed sizes and modes, labelled_limit 1 (a set smaller than one batch)
        "chase": (open_split(odd_root, "chase", "all").labelled(1), open_split(uri, "chase", "all").labelled(1)),
        # raw: no masks anywhere (an unlabelled target): all-ignore masks made in memory
        "raw": (open_split(odd_root, "raw", "all"), open_split(uri, "raw", "all")),
    }
    for name, (local, remote) in cases.items():
        for rank in (0, 1):  # one stream per rank over the run's 4 epochs, each epoch checked
            ours, theirs = EpochSampler(len(local), 7, rank, 2), EpochSampler(len(remote), 7, rank, 2)
            loader = RayDataLoader(remote, streaming, theirs, cpu)
            for epoch in range(4):
                ours.set_epoch(epoch), theirs.set_epoch(epoch)
                expected = _batches(make_loader(local, cfg, ours, cpu))
                assert len(loader) == len(expected), name
                _same(_batches(loader), expected)
    # a fresh loader at epoch 1 (a restored run), a pass left unfinished, a cycled set
    local, remote = cases["drive"]
    ours, fresh = EpochSampler(5, 7, 0, 2), EpochSampler(5, 7, 0, 2)
    ours.set_epoch(1), fresh.set_epoch(1)
    expected = _batches(make_loader(local, cfg, ours, cpu))
    cycled = RayDataLoader(remote, cfg, fresh, cpu)
    _same([tuple(t.clone() for t in next(iter(cycled)))] + _batches(cycled), [expected[0]] + expected)
    taken = [b for _, b in zip(range(5), endless(cycled))]  # 2 batches per pass: a pass and a half
    _same([tuple(t.clone() for t in b) for b in taken], expected + expected + expected[:1])
    unlabelled = EpochSampler(4, 0)
    unlabelled.set_epoch(1)
    raw = _batches(RayDataLoader(cases["raw"][1], cfg, unlabelled, cpu))
    assert all(bool((masks == 255).all()) for _, masks, _ in raw)
    # rare-class sampling: the class sets read from the bucket's masks, the same draws
    local, remote = cases["drive"]
    classes = [set(read_mask(m).unique().tolist()) - {255} for _, m in local.samples]
    assert [set(read_mask(m).unique().tolist()) - {255} for _, m in remote.samples] == classes
    rare = RareClassSampler(classes, 0.1, 3, 1, 2)
    rare.set_epoch(1)
    _same(_batches(RayDataLoader(remote, cfg, rare, cpu)), _batches(make_loader(local, cfg, rare, cpu)))


def record_deployable_checksum(runner, metrics: dict, rank: int) -> None:
    """Epoch hook (runs on every rank): the deployable model's checksum (the teacher's), one line per epoch."""
    from raysegment.distributed.train import weights_checksum

    out = Path(runner.method.cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"checksums.{rank}.jsonl", "a") as handle:
        handle.write(
            json.dumps({"epoch": metrics["epoch"], "weights_checksum": weights_checksum(runner.method.deployable)})
            + "\n"
        )


def _losses(cfg) -> list[float]:
    from raysegment.distributed.train import PROGRESS_FILE

    lines = (Path(cfg.output_dir) / PROGRESS_FILE).read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if not r["resumed"]]


def test_runs_whose_data_exists_only_in_s3_train_as_the_folder_runs(
    ray_cluster, synth_root, source_model_dir, s3_bucket, tiny_config, tmp_path, monkeypatch
):
    """A fine-tune and a label-free adaptation (mean-teacher self-training, rare-class sampling:
    labelled source and unlabelled target) on 2 ranks over 2 nodes: first from a folder (DataLoader
    in each rank), then from the bucket alone (Ray Data decode tasks), the folder gone, nothing
    shared but the S3 server (checkpoints and the source model there too). The mean teacher stays
    identical on both ranks."""
    from raysegment.distributed.train import PROGRESS_FILE, SHARED_FS_ENV, train_on_ray, weights_checksum
    from raysegment.models.rebuild import load_model

    folder = tmp_path / "data"
    shutil.copytree(synth_root, folder)
    runs = {
        "finetune": {"data": {"domain": "fog", "labelled_limit": 5}},
        "self_training": {
            "data": {"domain": "night"},
            "adapt": {
                "method": "self_training",
                "source_domain": "clear",
                "ema_alpha": 0.9,
                "rare_class_temperature": 0.5,
            },
        },
    }
    common = {
        "optim": {"epochs": 2, "batch_size": 2, "select": "last"},
        "scale": {"num_workers": 2, "cpus_per_worker": 0.5},  # 1 of the 2 CPUs left for decode tasks
    }

    def config(kind: str, root: str, source: str, where: str):
        sections = {**common, **runs[kind]}
        sections["data"] = {**sections["data"], "root": root}
        sections["model"] = {"pretrained": {"source": "checkpoint", "uri": source}}
        sections["output_dir"] = str(tmp_path / where / kind)
        return tiny_config(**sections)

    from_folder = {kind: config(kind, str(folder), str(source_model_dir), "folder") for kind in runs}
    for kind, cfg in from_folder.items():
        result = train_on_ray(cfg, name=f"folder-{kind}")
        assert result.metrics["epoch"] == 2 and result.metrics["world_size"] == 2
    model, meta = load_model(result.model_dir)  # the run's checkpoint loads as a model
    assert meta.num_classes == 7 and model(torch.rand(1, 3, 64, 128)).shape == (1, 7, 64, 128)
    again = train_on_ray(from_folder["self_training"], name="folder-self_training")  # finished, restored:
    assert again.metrics["epoch"] == 2 and again.metrics["resumed"]  # it reports its end again
    assert again.metrics["score"] == pytest.approx(result.metrics["score"])
    lines = (Path(from_folder["self_training"].output_dir) / PROGRESS_FILE).read_text().splitlines()
    assert [(r["epoch"], r["resumed"]) for r in map(json.loads, lines)] == [(1, False), (2, False), (2, True)]

    bucket_data = upload_tree(folder, f"{s3_bucket}/data")
    bucket_source = upload_tree(source_model_dir, f"{s3_bucket}/source")
    shutil.rmtree(folder)
    monkeypatch.delenv(SHARED_FS_ENV)
    for kind in runs:
        cfg = config(kind, bucket_data, bucket_source, "s3")
        cfg = cfg.model_copy(update={"scale": cfg.scale.model_copy(update={"storage_path": f"{s3_bucket}/ray"})})
        result = train_on_ray(cfg, name=f"s3-{kind}", epoch_hook=record_deployable_checksum)
        assert result.metrics["world_size"] == 2 and result.metrics["method"] == kind
        assert _losses(cfg) == pytest.approx(_losses(from_folder[kind]), rel=1e-6), kind
        assert len(_losses(cfg)) == 2
    ranks = [
        [json.loads(line) for line in (Path(cfg.output_dir) / f"checksums.{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    assert [r["epoch"] for r in ranks[0]] == [r["epoch"] for r in ranks[1]] == [1, 2]
    for a, b in zip(*ranks):
        assert a["weights_checksum"] == b["weights_checksum"], "the teachers drifted apart across ranks"
    assert result.metrics["score"] == result.metrics["proxy_consistency"]  # judged without labels
    teacher, _ = load_model(result.model_dir)  # the result is the (deployable) teacher of the last epoch
    assert weights_checksum(teacher) == pytest.approx(ranks[0][-1]["weights_checksum"], rel=1e-9)
    copies = [p for p in Path(ray_cluster.temp_dir).rglob("*.png") if p.name.startswith(("fog_", "night_"))]
    copies += [p for p in tmp_path.rglob("*.png")]
    assert not copies, f"dataset files on a node's disk: {copies[:3]}"
    # Each finished run's Train controller is gone (Ray Train's SIGINT handler held it, and with it
    # the run's placement group, which starved the next run's decode tasks of CPUs).
    deadline = time.monotonic() + 30
    while (controllers := processes_named("ray::TrainController")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not controllers, f"Train controllers outlive their runs: {controllers}"
