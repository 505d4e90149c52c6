"""Ray Data ingest (`distributed.ingest`) on the suite's two-node cluster, datasets in the loopback
S3 server: the same batches as the DataLoader, and whole runs whose data exists only in the bucket."""

from __future__ import annotations

import pytest
import torch

from raysegment.data import EpochSampler, RareClassSampler, open_split
from raysegment.data.dataset import read_mask
from raysegment.storage import upload_tree

pytestmark = pytest.mark.slow


def _batches(loader) -> list:
    return [tuple(t.clone() for t in batch) for batch in loader]


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_ray_data_gives_each_rank_the_dataloaders_batches(ray_cluster, odd_root, s3_bucket, tiny_config):
    from raysegment.distributed.ingest import RayDataLoader
    from raysegment.engine.method import make_loader

    uri = upload_tree(odd_root, f"{s3_bucket}/odd")
    cfg = tiny_config(optim={"batch_size": 2})
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
        for epoch in (0, 3):
            for rank in (0, 1):
                ours, theirs = EpochSampler(len(local), 7, rank, 2), EpochSampler(len(remote), 7, rank, 2)
                ours.set_epoch(epoch), theirs.set_epoch(epoch)
                expected = _batches(make_loader(local, cfg, ours, cpu))
                loader = RayDataLoader(remote, cfg, theirs, cpu)
                assert len(loader) == len(expected), name
                _same(_batches(loader), expected)
    raw = _batches(RayDataLoader(cases["raw"][1], cfg, EpochSampler(4, 0), cpu))
    assert all(bool((masks == 255).all()) for _, masks, _ in raw)
    # rare-class sampling: the class sets read from the bucket's masks, the same draws
    local, remote = cases["drive"]
    classes = [set(read_mask(m).unique().tolist()) - {255} for _, m in local.samples]
    assert [set(read_mask(m).unique().tolist()) - {255} for _, m in remote.samples] == classes
    rare = RareClassSampler(classes, 0.1, 3, 1, 2)
    _same(_batches(RayDataLoader(remote, cfg, rare, cpu)), _batches(make_loader(local, cfg, rare, cpu)))
