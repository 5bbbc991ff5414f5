"""Training end to end on a tiny folder: features, feature packs, a distilled student."""

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from audio_frontend.audio_io import load_audio
from audio_frontend.cochlea import CochleaConfig
from models.model_file import DEFAULT_MODEL_PATH, ModelBundle, load_model
from models.network import Classifier, NetworkConfig
from models.vocabulary import DEFAULT_VOCABULARY
from tests.conftest import FIXTURES
from training.augment import AugmentConfig, active_level_dbfs, augment
from training.config import (
    DEFAULT_SPEECH_LEVEL_DBFS,
    TRAIN_FLAGS,
    TrainConfig,
    features_command,
    train_command,
)
from training.evaluate import card_markdown
from training.features import FeatureSet, FeatureSpec, load_pack, save_pack
from training.teacher import ARCHITECTURES, ConvTeacher, TeacherEnsemble
from training.train import cached_teacher_targets, teacher_logits


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory):
    """The fixture clips in the Speech Commands layout (two speakers), plus one unreadable clip."""
    root = tmp_path_factory.mktemp("data") / "speech_commands"
    for path in FIXTURES.glob("*_nohash_*.wav"):
        word, rest = path.name.split("_", 1)
        (root / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / word / rest)
    (root / "_silence_").mkdir()
    shutil.copy(FIXTURES / "noise_1037.wav", root / "_silence_" / "noise_1037.wav")
    (root / "yes" / "0cb74144_nohash_9.wav").write_text("not audio")
    return root


@pytest.mark.slow
def test_features_pack_then_distilled_training(speech_folder, tmp_path, capsys):
    pack = tmp_path / "pack.npz"
    cache = str(tmp_path / "cache")
    argv = ["--data", str(speech_folder), "--variants", "1", "--cache-dir", cache]
    assert main(["features", *argv, "--out", str(pack)]) == 0
    meta, train, val = load_pack(pack)
    assert train.rasters.shape[1:] == (2, 50, 64)  # clean + 1 variant, 1 s of 20 ms bins
    assert val.rasters.shape[1:] == (1, 50, 64)
    assert len(train.labels) + len(val.labels) == 7
    assert int((~train.ok).sum() + (~val.ok).sum()) == 1  # the unreadable clip, skipped
    assert train.rasters[train.ok].sum() > 0
    assert meta["summaries"]["train"]["speech_commands"]["speakers"] >= 1
    # Absolute speech levels unless asked otherwise; the card's commands say which.
    assert tuple(meta["augmentation"]["speech_level_dbfs"]) == DEFAULT_SPEECH_LEVEL_DBFS

    model = tmp_path / "student.pt"
    train_args = ["--features", str(pack), "--out", str(model), "--epochs", "2"]
    train_args += ["--cache-dir", cache]
    train_args += ["--batch-size", "2", "--distill", "0.5", "--teacher-epochs", "1"]
    assert main(["train", *train_args]) == 0
    assert "skipped 1 unreadable clips" in capsys.readouterr().out
    bundle = load_model(model)
    assert bundle.vocabulary == DEFAULT_VOCABULARY
    assert 0 <= bundle.card["training"]["teacher_validation_accuracy"] <= 1
    assert bundle.card["data"] == meta["summaries"]
    log = [line for line in model.with_suffix(".log.jsonl").read_text().splitlines() if line]
    assert len(log) == 2
    assert model.with_suffix(".teacher.pt").exists()
    arch = bundle.card["training"]["teacher_arch"]
    assert f"--teacher-epochs 1 --teacher-width 32 --teacher-arch {arch}" in train_command(
        bundle.card["training"]
    )

    # A second teacher on its own (the full-resolution kind), then a student with a
    # delay line distilled from both teachers as an ensemble, reusing them instead of
    # training one.
    second = tmp_path / "second.pt"
    args = ["--features", str(pack), "--out", str(second), "--batch-size", "2", "--seed", "1"]
    args += ["--teacher-arch", "vgg"]
    assert main(["train", *args, "--teacher-only", "--teacher-epochs", "1"]) == 0
    assert "teacher, validation accuracy" in capsys.readouterr().out
    assert second.with_suffix(".teacher.pt").exists() and not second.exists()
    reused = tmp_path / "reused.pt"
    args = ["--features", str(pack), "--out", str(reused), "--epochs", "1", "--batch-size", "2"]
    args += ["--distill", "0.5", "--delays", "0", "3", "--teacher-targets", "cached"]
    args += ["--cache-dir", cache, "--input-conv", "8", "5", "2", "--dropout", "0.2"]
    args += ["--hidden-conv", "16", "5", "2", "--temperature", "3"]
    for teacher in (model, second):
        args += ["--teacher", str(teacher.with_suffix(".teacher.pt"))]
    assert main(["train", *args]) == 0
    assert not reused.with_suffix(".teacher.pt").exists()
    # One cache file per member: a later ensemble reuses the members it shares.
    assert len(list((tmp_path / "cache").glob("teacher-targets-*.npz"))) == 2
    ensemble = TeacherEnsemble.load(
        [model.with_suffix(".teacher.pt"), second.with_suffix(".teacher.pt")], torch.device("cpu")
    )
    assert [t.arch for t in ensemble.members] == ["res", "vgg"]
    members = [cached_teacher_targets(t, train.rasters, cache) for t in ensemble.members]
    assert len(list((tmp_path / "cache").glob("teacher-targets-*.npz"))) == 2
    np.testing.assert_allclose(
        cached_teacher_targets(ensemble, train.rasters, cache), np.mean(members, 0), rtol=1e-6
    )
    student = load_model(reused)
    assert "Distilled from an ensemble of 2 convolutional teachers" in card_markdown(student)
    assert student.network.config.input_delays == (0, 3)
    assert student.network.config.input_conv == (8, 5, 2)
    assert student.network.config.hidden_conv == (16, 5, 2)
    assert student.network.input_synapses(1) < 256 * 256  # shared, sparse second-layer input
    assert student.network.layers[0].input.in_features == 2 * 64
    # The card's command line is the run's, teachers and non-default settings included.
    command = train_command(student.card["training"])
    for flags in (
        "--teacher student.teacher.pt --teacher second.teacher.pt",
        "--delays 0 3",
        "--input-conv 8 5 2",
        "--hidden-conv 16 5 2",
        "--dropout 0.2",
        "--temperature 3",
        "--distill 0.5",
    ):
        assert flags in command
    for default in ("--shift-ms", "--teacher-targets"):
        assert default not in command  # defaults are left out


def test_teacher_files_keep_their_architecture(tmp_path):
    counts = torch.rand(3, 50, 64) * 4
    for arch in ARCHITECTURES:
        teacher = ConvTeacher(22, width=4, arch=arch).eval()
        teacher.save(tmp_path / f"{arch}.pt")
        loaded = ConvTeacher.load(tmp_path / f"{arch}.pt", torch.device("cpu"))
        assert loaded.arch == arch
        torch.testing.assert_close(loaded(counts), teacher(counts))
    # Teacher files from before the choice existed hold no "arch": they are all vgg.
    saved = torch.load(tmp_path / "vgg.pt", weights_only=True)
    del saved["arch"]
    torch.save(saved, tmp_path / "old.pt")
    assert ConvTeacher.load(tmp_path / "old.pt", torch.device("cpu")).arch == "vgg"
    with pytest.raises(ValueError, match="unknown teacher architecture"):
        ConvTeacher(22, arch="transformer")


@pytest.mark.slow
def test_a_run_from_a_pack_takes_its_bin_width(speech_folder, tmp_path, capsys):
    pack = tmp_path / "fine.npz"
    cache = str(tmp_path / "cache")
    argv = ["--data", str(speech_folder), "--variants", "1", "--cache-dir", cache]
    assert main(["features", *argv, "--bin-ms", "10", "--out", str(pack)]) == 0
    assert load_pack(pack)[1].rasters.shape[2] == 100  # 1 s of 10 ms bins
    model = tmp_path / "fine.pt"
    args = ["--features", str(pack), "--out", str(model), "--epochs", "1", "--batch-size", "2"]
    assert main(["train", *args, "--distill", "0", "--cache-dir", cache]) == 0
    bundle = load_model(model)
    assert bundle.bin_ms == 10
    assert "--bin-ms 10" in features_command(bundle.card["training"])
    # A width given on the command line must be the pack's.
    assert main(["train", *args, "--distill", "0", "--bin-ms", "20"]) == 2
    assert "made for channels, bin width" in capsys.readouterr().err


def test_a_teacher_reads_finer_bins_by_summing_them(tmp_path):
    """A teacher trained on 20 ms bins gives a 10 ms student the logits it gives the
    same clips in 20 ms bins; bins that do not divide its own are refused."""
    teacher = ConvTeacher(22, width=4, arch="res", bin_ms=20.0).eval()
    teacher.save(tmp_path / "t.pt")
    fine = torch.randint(0, 6, (3, 100, 64)).float()
    coarse = fine.reshape(3, 50, 2, 64).sum(dim=2)
    reading_fine = ConvTeacher.load(tmp_path / "t.pt", torch.device("cpu"), input_bin_ms=10.0)
    assert reading_fine.bin_ms == 20.0
    torch.testing.assert_close(reading_fine(fine), teacher(coarse))
    with pytest.raises(ValueError, match="cannot read 15 ms bins"):
        ConvTeacher.load(tmp_path / "t.pt", torch.device("cpu"), input_bin_ms=15.0)
    # Files from before teachers recorded their bin width were trained on 20 ms bins.
    saved = torch.load(tmp_path / "t.pt", weights_only=True)
    del saved["bin_ms"]
    torch.save(saved, tmp_path / "old.pt")
    assert ConvTeacher.load(tmp_path / "old.pt", torch.device("cpu")).bin_ms == 20.0


@pytest.mark.slow
def test_evaluate_prints_json_and_writes_plots(speech_folder, tmp_path, capsys):
    """The bundled model on every fixture clip: stdout is one JSON object (progress
    bars go to stderr), the figures are consistent, and the plots are written."""
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(speech_folder), "--split", "all", "--json"]
    assert main([*argv, "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    native = json.loads(capsys.readouterr().out)["native"]
    assert native["clips"] == 6  # of 7: the unreadable clip is skipped
    per_class = native["per_class"]
    right = sum(round(c["accuracy"] * c["clips"]) for c in per_class.values())
    assert native["accuracy"] == pytest.approx(right / native["clips"])
    # Two speakers in the fixtures; every in-vocabulary word belongs to exactly one.
    speakers = native["per_speaker_in_vocabulary"]
    words = sum(c["clips"] for name, c in per_class.items() if not name.startswith("_"))
    assert len(speakers) == 2 and sum(s["clips"] for s in speakers.values()) == words
    summary = native["speakers_in_vocabulary"]
    lowest = min(s["accuracy"] for s in speakers.values())
    assert summary["speakers"] == 2 and summary["lowest"] == lowest
    assert summary["mean"] == pytest.approx(np.mean([s["accuracy"] for s in speakers.values()]))
    assert native["per_clip"]["input_spikes"] > 0
    assert native["per_clip"]["synaptic_ops"] > native["per_clip"]["input_spikes"]
    assert 0 < native["early_decision"]["median_fraction_of_word"] <= 1
    for plot in ("confusion.png", "accuracy_vs_time.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")


def _analog_twin(path, vocabulary=DEFAULT_VOCABULARY):
    """An untrained non-spiking network with the bundled model's front end."""
    bundled = load_model()
    config = NetworkConfig(hidden=(32, 32), kind="analog", n_classes=len(vocabulary))
    twin = ModelBundle(Classifier(config), bundled.frontend, vocabulary, bundled.bin_ms)
    twin.save(path)
    return path


@pytest.mark.slow
def test_evaluate_puts_a_baseline_beside_the_model_in_its_card(speech_folder, tmp_path, capsys):
    model = tmp_path / "snn.pt"
    shutil.copy(DEFAULT_MODEL_PATH, model)
    twin = _analog_twin(tmp_path / "analog.pt")
    argv = ["evaluate", "--data", str(speech_folder), "--split", "all", "--model", str(model)]
    argv += ["--baseline", str(twin), "--out-dir", str(tmp_path / "eval")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--write-card", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    figures = printed["baselines"]["analog"]
    assert figures["kind"] == "analog"
    assert figures["parameters"] == load_model(twin).network.parameter_count()
    # The card keeps the baseline's figures, and its Markdown shows them in their own column.
    card = load_model(model).card
    assert card["baselines"]["analog"]["native"] == figures["native"]
    assert card["evaluation"]["command"].endswith(f"--baseline {twin}")
    markdown = (tmp_path / "snn.card.md").read_text()
    row = next(
        line for line in markdown.splitlines() if line.startswith("| in-vocabulary accuracy |")
    )
    ours = card["evaluation"]["native"]["in_vocabulary_accuracy"]
    theirs = figures["native"]["in_vocabulary_accuracy"]
    assert row == f"| in-vocabulary accuracy | {100 * ours:.1f}% | {100 * theirs:.1f}% |"
    assert "MACs" in markdown and "accumulates" in markdown


def test_evaluate_refuses_a_baseline_with_another_vocabulary(speech_folder, tmp_path, capsys):
    twin = _analog_twin(tmp_path / "analog.pt", vocabulary=("yes", "no", "_unknown_"))
    argv = ["evaluate", "--data", str(speech_folder), "--baseline", str(twin)]
    assert main(argv) != 0
    assert "vocabulary differs" in capsys.readouterr().err


@pytest.mark.parametrize("shift", [-2, 0, 3])
def test_batch_shifts_fill_with_zeros(shift):
    from training.train import _shift_zero_filled

    row = np.arange(1, 41, dtype=np.float32).reshape(5, 8)
    moved = row.copy()
    _shift_zero_filled(moved, shift, axis=1)
    for k in range(8):
        source = k - shift
        assert np.array_equal(moved[:, k], row[:, source] if 0 <= source < 8 else np.zeros(5))


def _tiny_pack(path, bin_ms: float = 20.0, augmentation: AugmentConfig | None = None) -> None:
    spec = FeatureSpec(CochleaConfig(), bin_ms, 0, augmentation or AugmentConfig())
    rng = np.random.default_rng(0)
    part = FeatureSet(
        rng.integers(0, 5, (4, 1, spec.n_bins, 64)).astype(np.uint8),
        np.arange(4),
        np.ones(4, bool),
    )
    save_pack(path, spec, DEFAULT_VOCABULARY, part, part, {})


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bin-ms", "10"], "made for"),
        (["--data", "{dir}"], "either --data folders or one --features pack"),
        (["--distill", "1.5"], "--distill"),
        (["--distill", "0.7", "--temperature", "0"], "--temperature"),
        (["--teacher", "t.pt", "--distill", "0"], "--teacher needs --distill"),
        (["--delays", "0", "-2"], "delays"),
        (["--tau-u-ms", "30", "10"], "--tau-u-ms"),
        (["--hidden-conv", "16", "5", "2"], "--hidden-conv: hidden_conv needs input_conv"),
        (["--input-conv", "8", "5", "2", "--hidden-conv", "8", "5", "2"], "128 second-layer"),
        (["--input-conv", "8", "5", "2", "--hidden-conv", "8", "5"], "for each shared layer"),
        (["--speech-level-dbfs", "-12", "-45"], "--speech-level-dbfs"),
        (
            ["--speech-level-dbfs", "-40", "-10"],
            "this one was made with --speech-level-dbfs -45 -12",
        ),
    ],
)
def test_training_bad_input(tmp_path, monkeypatch, capsys, extra, message):
    """Refused before any training, in one line with a non-zero exit."""
    monkeypatch.chdir(tmp_path)
    pack = tmp_path / "pack.npz"
    _tiny_pack(pack)
    extra = [a.format(dir=tmp_path) for a in extra]
    assert main(["train", "--features", str(pack), "--out", "m.pt", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "removed",
    [
        ["--channel-shift", "2"],
        ["--early-weight", "0.3"],
        ["--mixup", "0.4"],
        ["--weight-decay", "0.01"],
        ["--pitch-semitones", "-2", "2"],
        ["--rate-weight", "0.5"],
        ["--relative-gain"],
        ["--teacher-targets", "batch"],
    ],
)
def test_levers_measured_and_not_kept_are_no_longer_flags(tmp_path, capsys, removed):
    with pytest.raises(SystemExit) as raised:
        main(["train", "--features", str(tmp_path / "pack.npz"), "--out", "m.pt", *removed])
    assert raised.value.code == 2
    assert removed[0] in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_from_a_pack_records_the_packs_speech_levels(tmp_path, capsys):
    """Levels are fixed when the pack is made: the card's commands put them on
    ``spikeear features``, where a rerun has to give them, and a run that asks for others
    is refused."""
    pack, model = tmp_path / "pack.npz", tmp_path / "m.pt"
    _tiny_pack(pack, augmentation=AugmentConfig(speech_level_dbfs=(-40.0, -20.0)))
    argv = ["train", "--features", str(pack), "--out", str(model), "--epochs", "1"]
    assert main([*argv, "--speech-level-dbfs", "-45", "-12"]) == 2
    assert "--speech-level-dbfs is fixed when a pack is made" in capsys.readouterr().err
    assert main([*argv, "--hidden", "8", "--batch-size", "2", "--distill", "0"]) == 0
    bundle = load_model(model)
    assert tuple(bundle.card["training"]["speech_level_dbfs"]) == (-40.0, -20.0)
    expected = "`spikeear features --speech-level-dbfs -40 -20 --data ...`"
    assert expected in card_markdown(bundle)
    assert "--speech-level-dbfs" not in train_command(bundle.card["training"])


def test_a_file_that_is_not_a_pack_is_refused(tmp_path):
    (tmp_path / "notes.npz").write_text("hello")
    assert main(["train", "--features", str(tmp_path / "notes.npz"), "--out", "m.pt"]) == 2


def _shd_file(path, n_channels: int = 64, spread: int = 1) -> None:
    """An SHD-layout file: the fixture words through the cochlea, two speakers."""
    import h5py
    import soundfile as sf

    from audio_frontend import Cochlea
    from audio_frontend.events import SpikeEvents
    from audio_frontend.spike_files import write_spike_file

    cochlea = Cochlea(CochleaConfig())
    keys = ["english-yes", "english-no", "german-eins", "english-stop"]
    samples, labels, speakers = [], [], []
    for label, word in enumerate(["yes", "no", "left", "stop"]):
        audio, rate = sf.read(next(FIXTURES.glob(f"{word}_*.wav")), dtype="float32")
        events = cochlea.encode(audio, rate)
        samples.append(SpikeEvents(events.times, events.channels * spread, n_channels))
        labels.append(label)
        speakers.append(label % 2)
    write_spike_file(path, samples, labels, keys=keys)
    with h5py.File(path, "a") as file:
        file.create_dataset("extra/speaker", data=np.array(speakers, np.uint16))


@pytest.mark.slow
def test_training_on_an_shd_layout_spike_file(tmp_path):
    from training.data import discover

    shd = tmp_path / "shd_train.h5"
    _shd_file(shd)
    clips = discover(shd, DEFAULT_VOCABULARY)
    assert [c.label for c in clips] == ["yes", "no", "_unknown_", "stop"]
    assert {c.speaker for c in clips} == {"shd_train:0", "shd_train:1"}
    model = tmp_path / "m.pt"
    argv = ["train", "--data", str(shd), "--out", str(model), "--epochs", "1"]
    argv += ["--distill", "0", "--batch-size", "2", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    card = load_model(model).card
    assert card["data"]["train"]["shd_train"]["clips"] >= 1
    command = train_command(card["training"])
    assert "--speech-level-dbfs -45 -12" in command and "--distill 0 " in command


@pytest.mark.slow
def test_a_spike_file_with_more_channels_than_the_model_is_refused(tmp_path):
    shd = tmp_path / "shd700.h5"
    _shd_file(shd, n_channels=700, spread=10)  # like the published SHD files' 700 channels

    def features(*extra: str) -> subprocess.CompletedProcess:
        argv = ["features", "--data", str(shd), "--out", "p.npz", *extra]
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = features()
    assert refused.returncode == 2
    assert "train with --channels 700" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert features("--channels", "700").returncode == 0
    assert load_pack(tmp_path / "p.npz")[1].rasters.shape[-1] == 700


def test_augmented_level_does_not_depend_on_the_recording():
    """With ``speech_level_dbfs`` variants get a random absolute speech level, so a quiet
    recording (as two FSDD speakers are) and a loud one spread over the same range,
    never clipping."""
    audio, rate = load_audio(FIXTURES / "yes_0cb74144_nohash_1.wav")
    config = AugmentConfig(speech_level_dbfs=(-45.0, -12.0))
    for gain_db in (-30, 0):
        recording = audio * 10 ** (gain_db / 20)
        rng = np.random.default_rng(0)
        levels = []
        for _ in range(40):
            varied = augment(recording, rate, [], rng, config)
            assert np.abs(varied).max() < 1.0
            levels.append(active_level_dbfs(varied, rate))
        low, high = config.speech_level_dbfs
        assert low - 0.5 <= min(levels) and max(levels) <= high + 0.5
        assert np.ptp(levels) > 0.5 * (high - low)  # spread over the range, not clustered


def test_cached_teacher_targets_pay_only_for_new_clip_copies(tmp_path, capsys):
    """A pack that adds clips to another (a new data source) reuses the known copies'
    targets; a copy stored twice is computed once."""
    teacher = ConvTeacher(n_classes=5, width=4)
    rasters = np.random.default_rng(0).integers(0, 3, (6, 2, 50, 16)).astype(np.uint8)
    rasters[5, 1] = rasters[0, 0]
    cache = str(tmp_path)
    first = cached_teacher_targets(teacher, rasters[:4], cache)
    assert "teacher targets for 8 of 8 clip copies" in capsys.readouterr().out
    extended = cached_teacher_targets(teacher, rasters, cache)
    assert "teacher targets for 3 of 12 clip copies" in capsys.readouterr().out
    again = cached_teacher_targets(teacher, rasters, cache)
    assert "teacher targets" not in capsys.readouterr().out
    expected = teacher_logits(teacher, rasters.reshape(12, 50, 16)).reshape(6, 2, 5)
    np.testing.assert_allclose(extended, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(extended[:4], first)
    np.testing.assert_array_equal(again, extended)
    assert len(list(tmp_path.glob("teacher-targets-*.npz"))) == 1


def _parsed(command: str) -> TrainConfig:
    """The TrainConfig that ``spikeear`` builds from a recorded ``spikeear train`` line."""
    from app.cli import build_parser
    from app.train_commands import train_config

    words = shlex.split(command)
    assert words[:2] == ["spikeear", "train"]
    return train_config(build_parser("train").parse_args([*words[1:], "--out", "m.pt"]))


def _recorded_fields(config: TrainConfig, from_pack: bool) -> dict:
    """What a card's command carries: every flag's setting but those of how the run was
    executed, and, for a run from a pack, those the pack fixed."""
    kept = {"data", "features"} | {
        flag.field
        for flag in TRAIN_FLAGS
        if flag.record != "never" and not (from_pack and flag.pack)
    }
    return {key: value for key, value in asdict(config).items() if key in kept}


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def test_every_setting_of_a_run_is_a_flag_of_the_table():
    """A new TrainConfig field needs a row in TRAIN_FLAGS (or is one of a run's inputs)."""
    inputs = {"data", "out", "features", "vocabulary"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    table = [flag.field for flag in TRAIN_FLAGS]
    assert len(table) == len(set(table))
    assert set(table) == fields - inputs


def test_the_recorded_training_command_parses_back_into_the_same_settings():
    config = TrainConfig(
        data=["speech_commands", "fsdd"],
        out="m.pt",
        epochs=12,
        batch_size=64,
        lr=3e-3,
        seed=5,
        kind="analog",
        hidden=(128, 96),
        input_delays=(0, 2, 4),
        input_conv=(8, 5, 2),
        hidden_conv=(16, 3, 2),
        dropout=0.25,
        channels=48,
        bin_ms=10.0,
        variants=2,
        speech_level_dbfs=(-40.0, -15.5),
        tau_u_ms=(40.0, 200.0),
        tau_w_ms=(250.0, 1000.0),
        max_shift_ms=60.0,
        max_time_mask_ms=40.0,
        max_channel_mask=2,
        distill_weight=0.5,
        temperature=3.0,
        teacher_epochs=7,
        teacher_width=16,
        teacher_arch="vgg",
        threads=3,  # how the run was executed: not recorded
    )
    training = {k: v for k, v in asdict(config).items() if k not in ("resume", "cache_dir")}
    command = train_command(training)
    assert "--threads" not in command
    assert _recorded_fields(_parsed(command), False) == _recorded_fields(config, False)
    # Given teachers replace the settings of one trained first.
    with_teachers = dataclasses.replace(config, teachers=("a.teacher.pt", "b.teacher.pt"))
    command = train_command(asdict(with_teachers))
    assert "--teacher-epochs" not in command
    parsed = _parsed(command)
    assert parsed.teachers == with_teachers.teachers
    assert parsed.teacher_epochs == TrainConfig.teacher_epochs


def test_the_bundled_models_training_command_parses_back_into_its_settings():
    """The shipped recipe, as its card records it (a run from a pack, whose levels and bin
    width are on the card's ``spikeear features`` line)."""
    training = load_model().card["training"]
    command = train_command(training)
    parsed = _recorded_fields(_parsed(command), from_pack=True)
    recorded = {**training, "features": Path(training["features"]).name}  # named, not placed
    for key, value in parsed.items():
        # a setting newer than the card: the card's run had its default
        expected = recorded[key] if key in recorded else getattr(TrainConfig, key)
        assert _as_tuple(value) == _as_tuple(expected), key
    assert features_command(training) == (
        "spikeear features --speech-level-dbfs -45 -12 --bin-ms 10 --data ..."
    )


def test_model_files_from_before_removed_network_settings_still_load():
    """``NetworkConfig.extra`` is gone; model files written before still hold it."""
    stored = torch.load(DEFAULT_MODEL_PATH, map_location="cpu", weights_only=True)
    older = {**stored["network_config"], "extra": {}}  # as files before 2026-12-06 hold it
    bundle = load_model()
    assert NetworkConfig.from_dict(older) == bundle.network.config
    assert bundle.network.config == NetworkConfig.from_dict(bundle.network.config.to_dict())
