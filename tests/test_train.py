"""Ray Train on a real two-node cluster (head + worker started with `ray start` on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import torch
from conftest import TINY_BACKBONE
from safetensors.torch import load_file, save_file

from raysegment.config import ModelConfig
from raysegment.distributed.train import PROGRESS_FILE, SHARED_FS_ENV, train_on_ray
from raysegment.engine.loss import segmentation_loss
from raysegment.errors import RaySegmentError
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 64, 64, generator=g), torch.randint(0, 4, (4, 64, 64), generator=g)


MODELS = {  # raysegment's own, and one another library builds (bring your own model)
    "raysegment": ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
    "smp": ModelConfig(library="smp", arch="Unet", backbone=f"tu-{TINY_BACKBONE}"),
}


def _model(name: str = "raysegment"):
    torch.manual_seed(0)
    # BN statistics held fixed (eval mode): torch's SyncBatchNorm is GPU-only, so on CPU ranks
    # would otherwise normalise with their own half-batch statistics.
    return build_segmenter(MODELS[name], 4).eval()


def ddp_one_step(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    out = Path(config["out"])
    for name in MODELS:
        model = _model(name)
        ddp = ray.train.torch.prepare_model(model)
        images, masks = _batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = segmentation_loss(ddp(images[rank::world]), masks[rank::world], 255)
        loss.backward()
        opt.step()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"rank{rank}-{name}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"node": ray.get_runtime_context().get_node_id()}))
    ray.train.report({"loss": float(loss)})


def test_ddp_step_on_two_nodes_matches_a_single_process_step(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        ddp_one_step,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(
            num_workers=2, resources_per_worker={"CPU": 1}, placement_strategy="STRICT_SPREAD"
        ),
        run_config=RunConfig(name="ddp-step", storage_path=str(tmp_path / "ray")),
    )
    assert trainer.fit().error is None
    nodes = {json.loads((tmp_path / f"rank{r}.json").read_text())["node"] for r in range(2)}
    assert len(nodes) == 2, "the two ranks must run on different nodes"
    for name in MODELS:
        rank0, rank1 = (load_file(str(tmp_path / f"rank{r}-{name}.safetensors")) for r in range(2))
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{name}: {key} differs between ranks"
        single = _model(name)
        images, masks = _batch()
        opt = torch.optim.SGD(single.parameters(), lr=0.5)
        segmentation_loss(single(images), masks, 255).backward()
        opt.step()
        moved = 0
        for key, value in single.state_dict().items():
            assert torch.allclose(rank0[key], value, atol=1e-5, rtol=1e-4), f"{name}: {key}"
            moved += not torch.equal(value, _model(name).state_dict()[key])
        assert moved > 10, name  # the step really changed the weights


def test_impossible_resources_fail_fast_with_a_message(ray_cluster, tiny_config):
    cfg = tiny_config(scale={"num_workers": 3})
    with pytest.raises(RaySegmentError, match=r"3 workers x 1.0 CPU = 3.0 CPU but the cluster has 2.0"):
        train_on_ray(cfg)
    with pytest.raises(RaySegmentError, match="largest node has 1.0"):
        train_on_ray(tiny_config(scale={"num_workers": 1, "cpus_per_worker": 2}))
    with pytest.raises(RaySegmentError, match="GPU"):
        train_on_ray(tiny_config(scale={"use_gpu": True}))
    with pytest.raises(RaySegmentError, match=r"leaving less than the data.decode_cpus=0.5 a Ray Data decode task"):
        train_on_ray(tiny_config(scale={"num_workers": 2}, data={"ingest": "ray_data"}))  # 2 of 2 CPUs: none to decode


def test_a_local_storage_path_is_refused_on_nodes_that_share_no_disk(ray_cluster, tiny_config, monkeypatch):
    monkeypatch.delenv(SHARED_FS_ENV)
    with pytest.raises(RaySegmentError, match=r"local path but this cluster has 2 nodes that share no disk"):
        train_on_ray(tiny_config())


def _worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


@pytest.mark.slow
def test_killed_worker_restarts_from_latest_checkpoint(ray_cluster, tiny_config, tmp_path):
    from raysegment.data import synth

    epochs = 4  # epochs last ~2 s here: the kill lands in the third, with epochs left to run after it
    root = synth.generate(tmp_path / "data", domains=("clear",), images_per_domain=60, height=64, width=128)
    cfg = tiny_config(
        data={"root": str(root)},
        model={"backbone": "efficientnet_lite0", "decoder_channels": 32},
        optim={"epochs": epochs, "batch_size": 1},
        scale={"num_workers": 2, "max_failures": 2},
    )
    progress = Path(cfg.output_dir) / PROGRESS_FILE
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=train_on_ray(cfg, name="fault")), daemon=True)
    runner.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not progress.exists() or len(progress.read_text().splitlines()) < 2):
        time.sleep(0.2)
    assert progress.exists(), "no epoch finished before the kill"
    # Land inside the next epoch, after Ray Train's controller has polled the last report (every 0.5 s
    # in the suite's cluster, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): a checkpoint reported less than one
    # poll before a crash is not yet known to the controller.
    time.sleep(1.0)
    pids = _worker_pids()
    assert len(pids) == 2
    killed_at = time.time()
    os.kill(pids[1], signal.SIGKILL)
    runner.join(timeout=300)
    assert "result" in outcome, "the run did not finish after the worker was killed"
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    epochs_seen = [r["epoch"] for r in records]
    assert epochs_seen[-1] == epochs
    assert len(records) <= epochs + 1, (
        f"lost more than one epoch: {[(r['epoch'], r['resumed'], r['time'] - killed_at) for r in records]}"
    )
    assert [r["epoch"] for r in records if not r["resumed"]][-1] < epochs, "the kill landed after the last epoch"
    resumed = [r for r in records if r["resumed"]]
    assert resumed, "no epoch ran after a restart"
    recovery_s = resumed[0]["time"] - killed_at
    timeline = [(r["epoch"], r["resumed"], round(r["time"] - killed_at, 1)) for r in records]
    print(f"recovery: first epoch after the kill finished {recovery_s:.1f} s after it; (epoch, resumed, s) {timeline}")
    model, _ = load_model(outcome["result"].checkpoint_dir)
    assert torch.isfinite(model(torch.rand(1, 3, 64, 128))).all()
