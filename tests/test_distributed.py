"""Training on 2 CPU processes with torchrun: identical weights on both, one set of files
from the first, --resume, the steps of one process at twice the batch, and a clear
refusal without torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main as spikeear
from audio_frontend.cochlea import CochleaConfig
from models.model_file import load_model
from models.vocabulary import DEFAULT_VOCABULARY
from training.augment import AugmentConfig
from training.distributed import RENDEZVOUS_VARIABLES
from training.distributed import main as distributed_main
from training.features import FeatureSet, FeatureSpec, save_pack
from training.train import weights_digest

REPO = Path(__file__).resolve().parents[1]
# A small network on a pack of random spike counts: seconds per epoch, not minutes.
TINY = ["--distill", "0", "--hidden", "16", "--threads", "1"]


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """13 training clips (an odd count: one process's share gets a repeated clip) and 4
    validation clips, 1 s of 20 ms bins."""
    spec = FeatureSpec(CochleaConfig(), 20.0, 0, AugmentConfig())
    rng = np.random.default_rng(0)

    def part(clips: int) -> FeatureSet:
        counts = rng.integers(0, 5, (clips, 1, spec.n_bins, 64)).astype(np.uint8)
        return FeatureSet(counts, np.arange(clips) % 4, np.ones(clips, bool))

    path = tmp_path / "pack.npz"
    save_pack(path, spec, DEFAULT_VOCABULARY, part(13), part(4), {})
    return path


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "training.distributed", *argv]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def log(model: Path) -> list[dict]:
    return [json.loads(line) for line in model.with_suffix(".log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_keep_one_set_of_weights_and_resume(pack: Path, tmp_path: Path):
    model = tmp_path / "ddp.pt"
    argv = ["--features", str(pack), "--out", str(model), "--cache-dir", str(tmp_path), *TINY]
    run = torchrun(*argv, "--epochs", "2", "--batch-size", "3")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(f"{model}: ") == 1  # one summary: the second process is quiet
    records = log(model)
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:  # each process's own weights, gathered after every epoch
        first, second = record["weights_sha1_per_process"]
        assert first == second
    bundle = load_model(model)
    assert weights_digest(bundle.network) == records[-1]["weights_sha1_per_process"][0]
    training = bundle.card["training"]
    assert (training["processes"], training["batch_size"]) == (2, 6)
    assert training["batch_size_per_process"] == 3

    # One process at batch 6 takes the same steps: the same learning rate after each epoch.
    single = tmp_path / "single.pt"
    one = ["--features", str(pack), "--out", str(single), "--cache-dir", str(tmp_path), *TINY]
    assert spikeear(["train", *one, "--epochs", "2", "--batch-size", "6"]) == 0
    assert [r["lr"] for r in log(single)] == [r["lr"] for r in records]

    # As if a run of 3 epochs had stopped after its second: --resume runs the third.
    checkpoint = model.with_suffix(".ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    assert len(saved["rng_per_process"]) == 2
    torch.save({**saved, "epochs": 3}, checkpoint)
    resumed = torchrun(*argv, "--epochs", "3", "--batch-size", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    records = log(model)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert len(set(records[-1]["weights_sha1_per_process"])) == 1
    assert weights_digest(load_model(model).network) == records[-1]["weights_sha1_per_process"][0]
    assert load_model(model).card["training"]["epochs"] == 3


def test_without_torchrun_it_says_how_to_start(
    pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    for name in RENDEZVOUS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model = tmp_path / "m.pt"
    assert distributed_main(["--features", str(pack), "--out", str(model), *TINY]) == 2
    err = capsys.readouterr().err
    assert "not started by torchrun" in err and "torchrun --nproc-per-node N" in err
    assert len(err.strip().splitlines()) == 1
    assert not model.exists()
