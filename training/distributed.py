"""Training on several processes with ``torchrun`` and DistributedDataParallel::

    torchrun --nproc-per-node 2 -m training.distributed --features pack.npz --out model.pt \\
        --distill 0 --batch-size 64

takes the flags of ``spikeear train``.  Every process holds the whole network and, each
epoch, trains on its own share of the clips (a distributed sampler over one shuffle that
all processes draw alike); after each step's backward pass the gradients are averaged
over the processes (gloo on CPUs, nccl on GPUs with one GPU per process), so the weights
stay identical everywhere.  ``--batch-size`` is per process: N processes at batch B take
the steps of one process at batch N x B (the same steps per epoch and learning-rate
schedule), and the model card records N x B with the process count.  Batch-norm
statistics are per process (B clips x bins each).

Process 0 alone validates, prints, and writes the log, the checkpoint and the model file;
``--resume`` continues from that checkpoint.  A teacher is trained with one process first
(``spikeear train --teacher-only``) and passed with ``--teacher``, or ``--distill 0``.

With one process and no ``torchrun`` (plain ``spikeear train``) every helper here is a
no-op, and training is exactly as before.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from app.errors import CliError

COMMAND = "torchrun --nproc-per-node N -m training.distributed [spikeear train flags]"
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long a process waits for the others: process 0 may build features for a while
# before the rest read them from its cache (a feature pack avoids that wait).
WAIT = timedelta(hours=2)


def start() -> None:
    """Join the process group ``torchrun`` describes in the environment."""
    missing = [name for name in RENDEZVOUS_VARIABLES if name not in os.environ]
    if missing:
        raise CliError(
            f"not started by torchrun ({', '.join(missing)} not set): run {COMMAND}, "
            "or plain spikeear train for one process"
        )
    cuda = torch.cuda.is_available()
    if cuda:  # one GPU per process; torch.device("cuda") then means this one
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=WAIT)
    except (RuntimeError, ValueError) as error:
        raise CliError(f"cannot join the other training processes: {error}") from None


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the run's files (the only one, without torchrun)."""
    return rank() == 0


@contextmanager
def main_first() -> Iterator[None]:
    """Process 0 runs the block first (building caches), the others after it (reading them)."""
    if active() and not is_main():
        dist.barrier()
    yield
    if active() and is_main():
        dist.barrier()


def wrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module to run training steps through: one that averages gradients over the
    processes, or the network itself."""
    if not active():
        return network
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = next(network.parameters()).is_cuda
    return DistributedDataParallel(
        network, device_ids=[torch.cuda.current_device()] if on_gpu else None
    )


def augmentation_rng(seed: int) -> np.random.Generator:
    """The generator of batch shifts and masks: each process its own."""
    return np.random.default_rng(seed if not active() else [seed, rank()])


def epoch_order(indices: np.ndarray, rng: np.random.Generator, epoch: int, seed: int) -> np.ndarray:
    """This process's clips for an epoch, in order: all of them shuffled by ``rng``, or its
    share of a shuffle seeded by (seed, epoch), padded so that every share is as long."""
    if not active():
        return rng.permutation(indices)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(indices, world_size(), rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return indices[list(sampler)]


def share_size(clips: int) -> int:
    """The length of each process's share of ``clips`` (see :func:`epoch_order`)."""
    return math.ceil(clips / world_size())


def agree(value: int) -> int:
    """Process 0's ``value`` on every process (decisions that must not differ)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_processes(*values: float) -> list[float]:
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces GPU tensors only
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def average_buffers(network: torch.nn.Module) -> None:
    """Average the batch-norm running statistics over the processes: each process updates
    them from its own batches, and the checkpoint and model file should describe all."""
    if not active():
        return
    for buffer in network.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world_size()


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def rng_states(rng: np.random.Generator) -> dict:
    """A checkpoint's generator states: process 0's (which one process resumes from) and,
    under torchrun, every process's."""
    states = gather(rng.bit_generator.state)
    return {"rng": states[0], **({"rng_per_process": states} if active() else {})}


def restore_rng(rng: np.random.Generator, saved: dict) -> None:
    states = saved.get("rng_per_process")
    if not active():
        rng.bit_generator.state = saved["rng"]
    elif states and len(states) == world_size():
        rng.bit_generator.state = states[rank()]
    # else: resumed on another number of processes; each keeps its own fresh seed


def card_fields(batch_size: int) -> dict:
    """What a model card records of a run on several processes: the one-process batch
    size that it stepped like, and how it was split."""
    if not active():
        return {}
    n = world_size()
    return {"processes": n, "batch_size": n * batch_size, "batch_size_per_process": batch_size}


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m training.distributed [spikeear train flags]``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "--teacher-only" in argv:
            raise CliError("train a teacher with one process: spikeear train --teacher-only")
        start()
    except CliError as error:
        print(f"spikeear train (torchrun): error: {error}", file=sys.stderr)
        return 2
    try:
        if not is_main():  # one progress bar and one summary, from process 0
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        from app.cli import main as spikeear

        return spikeear(["train", *argv])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
