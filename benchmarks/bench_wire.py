"""What one image costs to ship from the gateway to the model replica, by how it travels.

The gateway decodes an upload to a (3,H,W) uint8 array and hands it to a model replica through
Ray. A torch tensor is pickled through `torch.save`; a numpy array goes as a pickle-5 buffer that
the receiver maps without a copy. Serialize and put+get times per image, both in one run:

    python benchmarks/bench_wire.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402


def per_call_us(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e6 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    ray.init(num_cpus=1, log_to_driver=False, include_dashboard=False)
    context = ray._private.worker.global_worker.get_serialization_context()
    print(f"{'image':>12} {'as':>6} {'serialize':>10} {'put+get':>9}  (microseconds per image)")
    for height, width in ((32, 48), (128, 256), (1024, 2048)):
        array = np.random.default_rng(0).integers(0, 255, (3, height, width), dtype=np.uint8)
        for name, image in (("torch", torch.from_numpy(array.copy())), ("numpy", array)):
            serialize = per_call_us(lambda image=image: context.serialize(image), args.repeats)
            ref = ray.put(image)
            round_trip = per_call_us(lambda ref=ref: ray.get(ref), args.repeats)
            print(f"{height:>5}x{width:<6} {name:>6} {serialize:>10.0f} {round_trip:>9.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
