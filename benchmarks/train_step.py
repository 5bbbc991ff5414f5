"""Cost of one training step of the classifier: hand-written BPTT versus autograd.

Forward and backward of the default network (2 x 256 recurrent adLIF, 1 s clips
of 20 ms bins) on a batch of random spike counts, in process CPU seconds (less
disturbed by other work on the machine than wall time); the best 3 of ``--repeats``
per path.  Run from the repository root::

    python -m benchmarks.train_step [--batch 128] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from models.network import Classifier, NetworkConfig
from training.train import clip_loss, rate_penalty, time_constants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network = Classifier(NetworkConfig(**time_constants(20.0))).to(device).train()
    x = torch.poisson(torch.rand(args.batch, args.bins, 64, device=device) * 2)
    labels = torch.arange(args.batch, device=device) % network.config.n_classes
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best: dict[str, list[tuple[float, float]]] = {"hand-written BPTT": [], "autograd": []}
    for _ in range(args.repeats):
        for name in best:
            network.fused = name == "hand-written BPTT"
            start = clock()
            evidence, _, activity = network(x)
            loss = clip_loss(evidence, labels) + rate_penalty(activity)
            if device.type == "cuda":
                torch.cuda.synchronize()
            middle = clock()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name].append((middle - start, clock() - middle))
    for name, runs in best.items():
        runs = sorted(runs, key=sum)[:3]
        forward = sum(r[0] for r in runs) / len(runs)
        backward = sum(r[1] for r in runs) / len(runs)
        print(
            f"{name:17s} forward {forward * 1000:6.1f} ms  backward {backward * 1000:6.1f} ms  "
            f"step {(forward + backward) * 1000:6.1f} ms  (batch {args.batch}, {args.bins} bins)"
        )


if __name__ == "__main__":
    main()
