"""The ``spikeear`` command: one entry point for every job."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from app.mic import add_mic_arguments
from audio_frontend.audio_io import AudioError
from models.model_file import ModelFileError
from models.network import KINDS
from training.augment import DEFAULT_SPEECH_LEVEL_DBFS
from training.config import TrainConfig
from training.data import DataError
from training.teacher import ARCHITECTURES


class CliError(Exception):
    """A problem to report to the user in one line, with a non-zero exit."""


def _cochlea_from_args(args: argparse.Namespace):
    from audio_frontend.cochlea import Cochlea, CochleaConfig

    try:
        return Cochlea(CochleaConfig(channels=args.channels))
    except ValueError as error:
        raise CliError(str(error)) from None


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from audio_frontend.audio_io import load_audio
    from audio_frontend.events import SpikeEvents
    from audio_frontend.spike_files import write_spike_file

    if args.chunk_ms is not None and args.chunk_ms <= 0:
        raise CliError("--chunk-ms must be positive")
    cochlea = _cochlea_from_args(args)
    audio, rate = load_audio(args.input)
    state = cochlea.new_state(rate)
    step = len(audio) if args.chunk_ms is None else max(1, int(rate * args.chunk_ms / 1000))
    parts = [
        cochlea.process(audio[i : i + step], state, final=i + step >= len(audio))
        for i in range(0, len(audio), step)
    ]
    events = SpikeEvents.concatenate(parts, cochlea.config.channels)
    write_spike_file(
        args.out,
        [events],
        [0],
        attributes={"frontend": cochlea.config.to_dict(), "source": Path(args.input).name},
        names=[Path(args.input).name],
    )
    duration = len(audio) / rate
    rate_hz = len(events) / duration
    print(
        f"{args.out}: {len(events)} spikes in {duration:.2f} s ({rate_hz:.0f} spikes/s, "
        f"{int(np.unique(events.channels).size)} active channels)"
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from audio_frontend.audio_io import load_audio
    from audio_frontend.plot import plot_recording

    cochlea = _cochlea_from_args(args)
    audio, rate = load_audio(args.input)
    events = plot_recording(audio, rate, cochlea, args.out, title=Path(args.input).name)
    print(f"{args.out}: {len(events)} spikes plotted")


def _train_config(args: argparse.Namespace, **extra):
    from training.features import pack_meta

    level = args.speech_level_dbfs
    if level and args.relative_gain:
        raise CliError("give either --speech-level-dbfs or --relative-gain")
    if level and not level[0] <= level[1] < 0:
        raise CliError("--speech-level-dbfs needs LOW <= HIGH < 0 (dB full scale)")
    pitch = args.pitch_semitones
    if pitch and not -12 <= pitch[0] <= pitch[1] <= 12:
        raise CliError("--pitch-semitones needs -12 <= LOW <= HIGH <= 12")
    pack = getattr(args, "features", None)
    if not level and not args.relative_gain and not pack:
        level = DEFAULT_SPEECH_LEVEL_DBFS  # a pack's level is the pack's (checked in training)
    bin_ms = args.bin_ms
    if bin_ms is None:
        bin_ms = pack_meta(pack)["bin_ms"] if pack else TrainConfig.bin_ms
    return TrainConfig(
        data=args.data or [],
        out=args.out,
        channels=args.channels,
        seed=args.seed,
        bin_ms=bin_ms,
        variants=args.variants,
        speech_level_dbfs=tuple(level) if level else None,
        pitch_semitones=tuple(pitch) if pitch else None,
        cache_dir=args.cache_dir,
        max_clips=args.max_clips,
        **extra,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from training.train import fit_teacher, train

    if args.epochs < 1:
        raise CliError("--epochs must be at least 1")
    if bool(args.data) == bool(args.features):
        raise CliError("give either --data folders or one --features pack")
    if not 0 <= args.distill < 1:
        raise CliError("--distill must be in [0, 1)")
    if args.temperature <= 0:
        raise CliError("--temperature must be above 0")
    if min(args.delays) < 0:
        raise CliError("--delays must be bins >= 0")
    if not 0 <= args.dropout < 1:
        raise CliError("--dropout must be in [0, 1)")
    if args.weight_decay < 0:
        raise CliError("--weight-decay must be >= 0")
    if not 0 <= args.channel_shift < 64:
        raise CliError("--channel-shift must be between 0 and 63 channels")
    for name in ("tau_u_ms", "tau_w_ms"):
        low, high = getattr(args, name)
        if not 0 < low <= high:
            raise CliError(f"--{name.replace('_', '-')} needs 0 < MIN <= MAX")
    if args.teacher and not args.distill:
        raise CliError("--teacher needs --distill WEIGHT")
    if not 0 <= args.mixup <= 10:
        raise CliError("--mixup must be between 0 (off) and 10")
    if args.input_conv or args.hidden_conv:
        from models.network import NetworkConfig

        try:  # before hours of feature loading, not after
            NetworkConfig(
                n_inputs=args.channels,
                hidden=tuple(args.hidden),
                kind=args.kind,
                input_conv=tuple(args.input_conv) if args.input_conv else None,
                hidden_conv=tuple(args.hidden_conv) if args.hidden_conv else None,
            )
        except ValueError as error:
            flag = "--hidden-conv" if "hidden_conv" in str(error) else "--input-conv"
            raise CliError(f"{flag}: {error}") from error
    config = _train_config(
        args,
        epochs=args.epochs,
        resume=args.resume,
        kind=args.kind,
        hidden=tuple(args.hidden),
        input_delays=tuple(args.delays),
        input_conv=tuple(args.input_conv) if args.input_conv else None,
        hidden_conv=tuple(args.hidden_conv) if args.hidden_conv else None,
        mixup=args.mixup,
        dropout=args.dropout,
        weight_decay=args.weight_decay,
        tau_u_ms=tuple(args.tau_u_ms),
        tau_w_ms=tuple(args.tau_w_ms),
        max_shift_ms=args.shift_ms,
        max_time_mask_ms=args.time_mask_ms,
        max_channel_mask=args.channel_mask,
        max_channel_shift=args.channel_shift,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        features=args.features,
        early_weight=args.early_weight,
        rate_weight=args.rate_weight,
        distill_weight=args.distill,
        temperature=args.temperature,
        teachers=tuple(args.teacher or ()),
        teacher_targets=args.teacher_targets,
        teacher_epochs=args.teacher_epochs,
        teacher_width=args.teacher_width,
        teacher_arch=args.teacher_arch,
        time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
    )
    if args.teacher_only:
        path, accuracy = fit_teacher(config)
        print(f"{path}: teacher, validation accuracy {accuracy:.3f}")
        return
    bundle = train(config)
    print(
        f"{args.out}: {bundle.network.parameter_count()} parameters, "
        f"{len(bundle.vocabulary)} classes"
    )


def cmd_features(args: argparse.Namespace) -> None:
    from training.features import save_pack
    from training.train import feature_spec, load_datasets

    config = _train_config(args)
    spec = feature_spec(config)
    summaries, train_set, val_set = load_datasets(config, spec)
    save_pack(args.out, spec, config.vocabulary, train_set, val_set, summaries, args.max_variants)
    size_mb = Path(args.out).stat().st_size / 1e6
    print(
        f"{args.out}: {len(train_set.labels)} training and {len(val_set.labels)} "
        f"validation clips, {size_mb:.1f} MB"
    )


SERVE_HINT = "(demo page at /, API docs at /docs)"
MAX_AUTO_WORKERS = 4  # each holds its own torch, model and cochlea (~0.6 GB)


def cmd_serve(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    import uvicorn

    from app.metrics import MULTIPROCESS_DIR
    from app.server import create_app
    from app.settings import Settings

    settings = Settings(
        model_path=args.model,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        torch_threads=torch.get_num_threads(),
    )
    app = create_app(settings)  # also checks the model before any worker starts
    options = {
        "ws_max_size": settings.max_message_bytes,
        # 20 ms of PCM barely compresses, and deflate costs both ends CPU per message.
        "ws_per_message_deflate": False,
        "log_level": args.log_level,
    }
    if args.workers == 1:
        print(f"spikeear: serving on {_server_url(args.host, args.port)} {SERVE_HINT}")
        uvicorn.run(app, host=args.host, port=args.port, **options)
        return
    from app.workers import listening_sockets, serve_workers

    # Streams are spread over processes by the kernel; each has its own scheduler.
    settings.to_environment()
    sockets = listening_sockets(args.host, args.port, args.workers)
    port = sockets[0].getsockname()[1]
    print(
        f"spikeear: serving on {_server_url(args.host, port)} {SERVE_HINT}, {args.workers} workers"
    )
    metrics_dir = None
    if not os.environ.get(MULTIPROCESS_DIR):
        # Every worker writes its metrics here and /metrics sums them (set before
        # the workers start: prometheus-client reads it when it is imported).
        metrics_dir = tempfile.mkdtemp(prefix="spikeear-metrics-")
        os.environ[MULTIPROCESS_DIR] = metrics_dir
    try:
        if not serve_workers(sockets, options):
            raise CliError("a worker could not start (see the log above)")
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_count(value: str) -> int:
    """``--workers``: a count, or ``auto`` for one per usable core (one process's event
    loop and GIL carry about a core of streams: 100 streams of 20 ms messages needed
    two processes on two cores, see the README's throughput section)."""
    if value == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        cores = len(usable) if usable else os.cpu_count() or 1
        return max(1, min(cores, MAX_AUTO_WORKERS))
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or 'auto': {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def _server_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def cmd_transcribe(args: argparse.Namespace) -> None:
    import json
    import time

    from app.service import transcript_json
    from audio_frontend.audio_io import audio_blocks
    from audio_frontend.spike_files import read_spike_file
    from models.model_file import load_model
    from models.recognizer import Recognizer, StreamOptions

    recognizer = Recognizer(load_model(args.model))
    failures = 0
    for path in args.files:
        started = time.perf_counter()
        try:
            if path.endswith((".h5", ".hdf5")):
                samples, _, _ = read_spike_file(path)
                transcripts = [recognizer.transcribe_spikes(events) for events in samples]
            else:
                rate, _, blocks = audio_blocks(path)
                transcripts = [recognizer.transcribe(blocks, rate, StreamOptions(sample_rate=rate))]
        except (AudioError, ValueError) as error:
            failures += 1
            print(f"spikeear transcribe: error: {error}", file=sys.stderr)
            continue
        elapsed = time.perf_counter() - started
        for transcript in transcripts:
            result = transcript_json(transcript, elapsed / len(transcripts))
            if args.json:
                print(json.dumps({"file": path, **result}), flush=True)
            else:
                words = ", ".join(
                    f"{w['word']} ({w['start']:.2f}-{w['end']:.2f} s, {w['confidence']:.2f})"
                    for w in result["words"]
                )
                print(
                    f"{path}: {result['text'] or '(no words)'}" + (f"  [{words}]" if words else "")
                )
    if failures > 1 or (failures and len(args.files) > 1):
        raise CliError(f"{failures} of {len(args.files)} files could not be transcribed")
    if failures:
        raise SystemExit(2)  # the one error is already printed


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from models.model_file import load_model
    from training.evaluate import baseline_figures, card_markdown, describe_speakers, evaluate

    bundle = load_model(args.model)
    baselines = [(path, load_model(path)) for path in args.baseline]
    for path, other in baselines:
        if other.vocabulary != bundle.vocabulary:
            raise ModelFileError(f"{path}: its vocabulary differs from the evaluated model's")
    results = evaluate(bundle, args.data, Path(args.out_dir), args.split, args.cache_dir)
    if baselines:
        results["baselines"] = {
            Path(path).stem: baseline_figures(
                other,
                path,
                evaluate(
                    other,
                    args.data,
                    Path(args.out_dir) / Path(path).stem,
                    args.split,
                    args.cache_dir,
                ),
            )
            for path, other in baselines
        }
    if args.write_card:
        from models.model_file import DEFAULT_MODEL_PATH

        bundle.card["evaluation"] = {
            "command": "spikeear evaluate "
            + " ".join(f"--data {d}" for d in args.data)
            + "".join(f" --baseline {path}" for path in args.baseline),
            **{key: value for key, value in results.items() if key != "baselines"},
        }
        bundle.card["baselines"] = results.get("baselines", {})
        model_path = Path(args.model or DEFAULT_MODEL_PATH)
        bundle.save(model_path)
        card_path = model_path.with_name(
            "MODEL_CARD.md" if args.model is None else model_path.stem + ".card.md"
        )
        card_path.write_text(card_markdown(bundle))
        print(f"model card written to {model_path} and {card_path}")
    if args.json:
        print(json.dumps(results))
        return
    native = results["native"]
    print(f"clips: {native['clips']} ({args.split} split)")
    in_vocabulary = native["in_vocabulary_accuracy"]
    print(
        f"accuracy: {native['accuracy']:.3f}   "
        f"in-vocabulary: {'n/a' if in_vocabulary is None else f'{in_vocabulary:.3f}'}"
        f"   unknown: {native['unknown_accuracy']}   silence: {native['silence_accuracy']}"
    )
    for source, figures in native["per_source_in_vocabulary"].items():
        print(f"  {source}: {figures['accuracy']:.3f} on {figures['clips']} words")
    speakers = native["speakers_in_vocabulary"]
    if speakers:
        print(f"  per speaker ({speakers['speakers']}): {describe_speakers(speakers)}")
    if "band_limited_8k" in results:
        print(
            f"16 kHz clips band-limited to 8 kHz: in-vocabulary "
            f"{results['band_limited_8k']['in_vocabulary_accuracy']:.3f}"
        )
    early = native["early_decision"]
    if early["median_fraction_of_word"] is None:
        print("early decision: no word clip was classified correctly")
    else:
        print(
            f"early decision: median {early['median_fraction_of_word']:.2f} of the word "
            f"({early['median_ms_after_onset']:.0f} ms after onset)"
        )
    clip = native["per_clip"]
    print(
        f"per clip: {clip['input_spikes']:.0f} input spikes, {clip['hidden_spikes']:.0f} hidden "
        f"spikes, {clip['synaptic_ops']:.3g} synaptic ops ({clip['energy_uj_snn']:.2f} uJ) vs "
        f"{clip['dense_macs']:.3g} dense MACs ({clip['energy_uj_dense']:.2f} uJ)"
    )
    for name, baseline in results.get("baselines", {}).items():
        figures = baseline["native"]
        in_vocabulary = figures["in_vocabulary_accuracy"]
        early = figures["early_decision"]["median_fraction_of_word"]
        print(
            f"baseline {name} ({baseline['kind']}, {baseline['parameters']} parameters): "
            f"in-vocabulary {'n/a' if in_vocabulary is None else f'{in_vocabulary:.3f}'}, "
            f"early decision {'n/a' if early is None else f'{early:.2f}'} of the word"
        )
    print(f"plots: {args.out_dir}/confusion.png, {args.out_dir}/accuracy_vs_time.png")


def cmd_export_nir(args: argparse.Namespace) -> None:
    from training.export import export_nir_command

    print(export_nir_command(args.model, args.out))


def cmd_mic(args: argparse.Namespace) -> None:
    from app.mic import cmd_mic as run

    run(args)


def add_data_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=required,
        metavar="DIR",
        help="Speech Commands or FSDD layout folder, or an SHD-layout .h5 spike file "
        "(repeat to mix sources)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=TrainConfig.channels,
        help="cochlear channels = network inputs (the published SHD/SSC files have 700)",
    )
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument(
        "--variants", type=int, default=TrainConfig.variants, help="augmented copies per clip"
    )
    for flag, text in (
        (
            "--speech-level-dbfs",
            "set each augmented copy to a random speech level in this range (default -45 -12; "
            "a run from a pack takes the pack's)",
        ),
        (
            "--pitch-semitones",
            "shift each augmented copy's spectrum by a random number of semitones in this "
            "range at the same tempo (e.g. -2 2; default off; a run from a pack takes the pack's)",
        ),
    ):
        p.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), help=text)
    p.add_argument(
        "--relative-gain",
        action="store_true",
        help="give each augmented copy a gain of -20..+8 dB relative to its recording "
        "instead of an absolute speech level",
    )
    p.add_argument(
        "--bin-ms",
        type=float,
        help=f"time bin of the network step (default {TrainConfig.bin_ms:g}; a run from a pack "
        "takes the pack's)",
    )
    p.add_argument(
        "--cache-dir",
        default=TrainConfig.cache_dir,
        help="where spike features (and cached teacher targets) are kept",
    )
    p.add_argument("--max-clips", type=int, help="use a random subset (smoke tests)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikeear",
        description="Speech command recognition with a spiking neural network.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("encode", cmd_encode, "Convert audio to cochlear spike events (SHD-layout HDF5).")
    p.add_argument("input", help="audio file")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--channels", type=int, default=64, help="cochlear channels (1-700)")
    p.add_argument("--chunk-ms", type=float, help="feed the audio in chunks of this size")

    p = command("plot", cmd_plot, "Plot waveform, cochleagram and spike raster to a PNG.")
    p.add_argument("input", help="audio file")
    p.add_argument("--out", required=True, help="output .png file")
    p.add_argument("--channels", type=int, default=64, help="cochlear channels (1-700)")

    p = command("serve", cmd_serve, "Run the recognition service (WebSocket, HTTP, demo page).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--max-upload-mb", type=int, default=50, help="batch upload size limit")
    p.add_argument(
        "--workers",
        type=_worker_count,
        default="auto",
        help="server processes, each with its own scheduler; /metrics sums them. auto "
        f"(default): one per CPU core, at most {MAX_AUTO_WORKERS} (~0.6 GB each)",
    )
    p.add_argument("--log-level", default="info")

    p = command("transcribe", cmd_transcribe, "Transcribe audio files (or SHD spike files).")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="one JSON object per file per line")

    p = command("evaluate", cmd_evaluate, "Evaluate a model on speakers it never heard.")
    p.add_argument("--data", action="append", required=True, metavar="DIR")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument(
        "--split",
        choices=["validation", "all"],
        default="validation",
        help="validation: the held-out speakers of a training split; all: every clip",
    )
    p.add_argument("--out-dir", default="evaluation", help="where PNGs and evaluation.json go")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--write-card", action="store_true", help="store the figures in the model file's card"
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="MODEL",
        help="another model (e.g. the --kind analog twin) evaluated on the same split and "
        "shown beside this one (repeat for several)",
    )

    p = command("export-nir", cmd_export_nir, "Export the network as a NIR graph (.nir).")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--out", required=True, metavar="MODEL.nir")

    p = command("mic", cmd_mic, "Live recognition from the microphone (or a file).")
    add_mic_arguments(p)

    p = command("train", cmd_train, "Train a classifier on folders of labelled clips.")
    add_data_arguments(p, required=False)
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.pt)")
    p.add_argument("--features", metavar="PACK", help="train from a feature pack instead of --data")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--resume", action="store_true", help="continue from MODEL's checkpoint")
    p.add_argument(
        "--kind",
        choices=KINDS,
        default=TrainConfig.kind,
        help="hidden neurons: spiking (adLIF), analog or binary baselines",
    )
    p.add_argument(
        "--hidden", type=int, nargs="+", default=list(TrainConfig.hidden), help="layer sizes"
    )
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument(
        "--input-conv",
        type=int,
        nargs=3,
        metavar=("FILTERS", "TAPS", "STRIDE"),
        help="first-layer input weights shared across frequency (e.g. 16 9 4 for 256 neurons)",
    )
    p.add_argument(
        "--hidden-conv",
        type=int,
        nargs="+",
        metavar="FILTERS TAPS STRIDE",
        help="later layers' weights shared across the previous layer's frequency positions, "
        "three numbers per layer from the second on (with --input-conv 16 9 4: e.g. 32 5 2 "
        "for 256 second-layer neurons, 32 5 2 64 3 2 for the third layer too)",
    )
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    for flag, kind, default, text in (
        ("--dropout", float, TrainConfig.dropout, "dropout on hidden activity"),
        ("--weight-decay", float, TrainConfig.weight_decay, "AdamW decay of weight matrices"),
        ("--early-weight", float, TrainConfig.early_weight, "early-decision loss weight"),
        ("--rate-weight", float, TrainConfig.rate_weight, "firing-rate bound weight"),
        ("--temperature", float, TrainConfig.temperature, "distillation softening of outputs"),
        ("--shift-ms", float, TrainConfig.max_shift_ms, "batch-time random shift (max)"),
        ("--time-mask-ms", float, TrainConfig.max_time_mask_ms, "time mask width (max)"),
        ("--channel-mask", int, TrainConfig.max_channel_mask, "channel mask width (max)"),
        ("--channel-shift", int, TrainConfig.max_channel_shift, "spectrum shift in channels (max)"),
        ("--mixup", float, TrainConfig.mixup, "mix pairs of clips, Beta(a, a) weights (0: off)"),
    ):
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument(
        "--distill",
        type=float,
        default=TrainConfig.distill_weight,
        metavar="WEIGHT",
        help="share of the loss given to a convolutional teacher's soft targets (0: no teacher)",
    )
    p.add_argument(
        "--delays",
        type=int,
        nargs="+",
        default=list(TrainConfig.input_delays),
        metavar="BINS",
        help="synaptic delays of the inputs, in bins (e.g. 0 2 4 6: a 120 ms delay line)",
    )
    for name, default, what in (
        ("u", TrainConfig.tau_u_ms, "membrane"),
        ("w", TrainConfig.tau_w_ms, "adaptation"),
    ):
        p.add_argument(
            f"--tau-{name}-ms",
            type=float,
            nargs=2,
            default=list(default),
            metavar=("MIN", "MAX"),
            help=f"range of the spiking neurons' {what} time constants (initial and clamp)",
        )
    p.add_argument(
        "--teacher",
        action="append",
        metavar="FILE",
        help="trained teacher; repeat for an ensemble (default: train one first)",
    )
    p.add_argument(
        "--teacher-targets",
        choices=("batch", "cached"),
        default=TrainConfig.teacher_targets,
        help="teacher outputs per augmented batch, or once per stored clip variant (cheap on CPU)",
    )
    p.add_argument(
        "--teacher-only",
        action="store_true",
        help="train just a teacher, to MODEL's .teacher.pt (--time-budget-min applies to it)",
    )
    p.add_argument("--teacher-epochs", type=int, default=TrainConfig.teacher_epochs)
    p.add_argument(
        "--teacher-width", type=int, default=TrainConfig.teacher_width, help="teacher channels"
    )
    p.add_argument(
        "--teacher-arch",
        choices=ARCHITECTURES,
        default=TrainConfig.teacher_arch,
        help="teacher network: res (pooled residual blocks; 80 epochs at width 32 take ~28 "
        "minutes on one CPU core) or vgg (full-resolution convolutions, ~3x dearer)",
    )
    p.add_argument("--time-budget-min", type=float, help="fit the epochs into this many minutes")
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch CPU threads")

    p = command(
        "features", cmd_features, "Write a feature pack: cochlear features of a training split."
    )
    add_data_arguments(p, required=True)
    p.add_argument("--out", required=True, metavar="PACK.npz")
    p.add_argument(
        "--max-variants", type=int, help="keep the clean copy and this many minus one augmented"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Inference multiplies tiny matrices: extra torch threads only add overhead, and
    # under load their spinning costs far more than it saves (measured 3-15x).
    torch.set_num_threads(getattr(args, "threads", 1))
    try:
        args.handler(args)
    except (CliError, AudioError, ModelFileError, DataError, OSError, ValueError) as error:
        print(f"spikeear {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
