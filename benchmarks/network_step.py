"""Network step cost: CPU time of one 20 ms network step for many streams at once.

The streaming server steps every live stream's network by one time bin in one
call (step mode on a batch of states).  This measures that call on real speech:
the committed test clips go through the model's cochlea one after another, each
of ``--streams`` streams plays that recording from its own starting point, and
the timed steps run from a state that has already heard speech, as a live
stream's has.

It times the event-driven CPU kernels (:mod:`models.kernels`, what inference
uses) against torch's dense operations on the same inputs, alternating the two
over ``--repeat`` rounds, and reports the median CPU time of this thread
(``time.thread_time``: other jobs on the machine disturb it far less than wall
time, though they still share its caches).  It also counts the hidden spikes on
which the two differ: summing in another order can tip a membrane that sits on
the threshold.

Run from the repository root::

    python -m benchmarks.network_step                     # bundled model, 100 streams
    python -m benchmarks.network_step --model other.pt --streams 10 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from audio_frontend.cochlea import Cochlea
from audio_frontend.events import bin_events
from benchmarks.common import FIXTURES, read_audio
from models import kernels
from models.model_file import ModelBundle, load_model
from models.network import Classifier

WARM_BINS = 20  # bins heard before timing starts


def speech_bins(bundle: ModelBundle, n_streams: int) -> torch.Tensor:
    """``[streams, bins, channels]`` spike counts of the fixture clips in a row, each
    stream starting elsewhere in it."""
    cochlea = Cochlea(bundle.frontend)
    rate = bundle.frontend.sample_rate
    rasters = []
    for path in sorted(FIXTURES.glob("*.wav")):
        audio = read_audio(path, rate)
        events = cochlea.encode(audio, rate)
        n_bins = int(len(audio) / rate * 1000 / bundle.bin_ms)
        rasters.append(bin_events(events, bundle.bin_ms / 1000, n_bins).astype(np.float32))
    recording = np.concatenate(rasters)
    starts = np.arange(n_streams) * len(recording) // n_streams
    return torch.from_numpy(np.stack([np.roll(recording, -start, axis=0) for start in starts]))


def time_steps(network: Classifier, bins: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """Milliseconds of thread CPU per step after the warm-up bins, and each step's
    hidden spikes."""
    with torch.inference_mode():
        state = network.initial_state(len(bins))
        for t in range(WARM_BINS):
            _, state, _ = network.step(bins[:, t], state)
        spikes = []
        started = time.thread_time()
        for t in range(WARM_BINS, bins.shape[1]):
            _, state, activity = network.step(bins[:, t], state)
            spikes.append(torch.cat(activity, dim=-1))
        elapsed = time.thread_time() - started
    return 1000 * elapsed / (bins.shape[1] - WARM_BINS), spikes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7, help="rounds of each way")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the server's setting: one core for the event loop's steps
    bundle = load_model(args.model)
    network = bundle.network.eval()
    bins = speech_bins(bundle, args.streams)
    times: dict[str, list[float]] = {"event-driven kernels": [], "dense torch": []}
    for round_ in range(args.repeat + 1):  # the first round warms up (numba, caches)
        kernel_ms, kernel_spikes = time_steps(network, bins)
        with kernels.disabled():
            dense_ms, dense_spikes = time_steps(network, bins)
        if round_:
            times["event-driven kernels"].append(kernel_ms)
            times["dense torch"].append(dense_ms)
    differ = sum(int((a != b).sum()) for a, b in zip(kernel_spikes, dense_spikes, strict=True))
    total = sum(a.numel() for a in kernel_spikes)
    result = {
        "model": args.model or "bundled",
        "hidden": list(network.config.hidden),
        "streams": args.streams,
        "steps_timed": bins.shape[1] - WARM_BINS,
        "median_ms_per_step": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "ms_per_step": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "hidden_spike_rate": round(float(torch.stack(kernel_spikes).mean()), 4),
        "hidden_spikes_differing": differ,
        "hidden_neuron_steps": total,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"one network step, {args.streams} streams ({result['hidden']})")
    table.add_column("inference")
    table.add_column("median ms per step", justify="right")
    table.add_column("µs per stream", justify="right")
    for name, value in result["median_ms_per_step"].items():
        table.add_row(name, f"{value:.2f}", f"{1000 * value / args.streams:.1f}")
    console = Console()
    console.print(table)
    console.print(
        f"hidden spike rate {result['hidden_spike_rate']}; the two ways differ on "
        f"{differ} of {total} hidden neuron-steps"
    )


if __name__ == "__main__":
    main()
