"""The training commands of ``spikeear``: ``train``, ``features``, ``evaluate``, ``export-nir``.

They need the training code (``training/``), which the serving install leaves out, so
``app.cli`` imports this module only when one of them runs.  The ``train`` and
``features`` flags come from :data:`training.config.TRAIN_FLAGS`, the table that also
writes a model card's training command.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from app.errors import CliError
from models.model_file import DEFAULT_MODEL_PATH, ModelFileError, load_model
from training.config import TRAIN_FLAGS, TrainConfig, TrainFlag


def _default_text(flag: TrainFlag) -> str:
    default = flag.default
    words = default if isinstance(default, tuple) else (default,)
    if default is None or isinstance(default, bool) or not words:
        return ""
    return "default " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in words)


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The table's flags for ``train`` (all of them) or ``features`` (those that make
    features).  Every default is None, so that a flag left out keeps the field's default
    (or, for a run from a pack, the pack's setting)."""
    for flag in TRAIN_FLAGS:
        if command == "features" and not flag.features:
            continue
        kwargs = dict(flag.argparse)
        if "choices" not in kwargs and kwargs.get("action") != "store_true":
            # named after the flag, not the field it sets (--shift-ms SHIFT_MS)
            kwargs.setdefault("metavar", flag.flag.lstrip("-").replace("-", "_").upper())
        default = _default_text(flag)
        if default and "(default" not in kwargs.get("help", ""):
            kwargs["help"] = f"{kwargs['help']} ({default})" if "help" in kwargs else default
        parser.add_argument(flag.flag, dest=flag.field, default=None, **kwargs)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run the command line asks for: the table's flags that were given, the rest
    at their defaults."""
    settings = {
        flag.field: flag.value(getattr(args, flag.field))
        for flag in TRAIN_FLAGS
        if getattr(args, flag.field, None) is not None
    }
    return TrainConfig(
        data=args.data or [], out=args.out, features=getattr(args, "features", None), **settings
    )


def _checked(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Settings checked before hours of feature loading, not after; a run from a pack
    takes its bin width unless one is given (training checks it against the pack)."""
    level = config.speech_level_dbfs
    if level and not level[0] <= level[1] < 0:
        raise CliError("--speech-level-dbfs needs LOW <= HIGH < 0 (dB full scale)")
    if config.features and args.bin_ms is None:
        from training.features import pack_meta

        config = replace(config, bin_ms=pack_meta(config.features)["bin_ms"])
    return config


def cmd_train(args: argparse.Namespace) -> None:
    from training.train import fit_teacher, train

    config = train_config(args)
    if config.epochs < 1:
        raise CliError("--epochs must be at least 1")
    if bool(config.data) == bool(config.features):
        raise CliError("give either --data folders or one --features pack")
    if not 0 <= config.distill_weight < 1:
        raise CliError("--distill must be in [0, 1)")
    if config.temperature <= 0:
        raise CliError("--temperature must be above 0")
    if min(config.input_delays) < 0:
        raise CliError("--delays must be bins >= 0")
    if not 0 <= config.dropout < 1:
        raise CliError("--dropout must be in [0, 1)")
    for name in ("tau_u_ms", "tau_w_ms"):
        low, high = getattr(config, name)
        if not 0 < low <= high:
            raise CliError(f"--{name.replace('_', '-')} needs 0 < MIN <= MAX")
    if config.neuron != "adlif" and config.kind != "spiking":
        raise CliError(f"--neuron {config.neuron} is for --kind spiking")
    if config.teachers and not config.distill_weight:
        raise CliError("--teacher needs --distill WEIGHT")
    if config.input_conv or config.hidden_conv:
        from models.network import NetworkConfig

        try:
            NetworkConfig(
                n_inputs=config.channels,
                hidden=config.hidden,
                kind=config.kind,
                input_conv=config.input_conv,
                hidden_conv=config.hidden_conv,
            )
        except ValueError as error:
            flag = "--hidden-conv" if "hidden_conv" in str(error) else "--input-conv"
            raise CliError(f"{flag}: {error}") from error
    config = _checked(config, args)
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

    config = _checked(train_config(args), args)
    spec = feature_spec(config)
    summaries, train_set, val_set = load_datasets(config, spec)
    save_pack(args.out, spec, config.vocabulary, train_set, val_set, summaries, args.max_variants)
    size_mb = Path(args.out).stat().st_size / 1e6
    print(
        f"{args.out}: {len(train_set.labels)} training and {len(val_set.labels)} "
        f"validation clips, {size_mb:.1f} MB"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
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
    from training.export import ExportError, export_nir_command

    try:
        print(export_nir_command(args.model, args.out, args.neurons, args.target))
    except ExportError as error:
        raise CliError(str(error)) from None


def _data_argument(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=required,
        metavar="DIR",
        help="Speech Commands or FSDD layout folder, or an SHD-layout .h5 spike file "
        "(repeat to mix sources)",
    )


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _data_argument(p, required=False)
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.pt)")
    p.add_argument("--features", metavar="PACK", help="train from a feature pack instead of --data")
    add_flags(p, "train")
    p.add_argument(
        "--teacher-only",
        action="store_true",
        help="train just a teacher, to MODEL's .teacher.pt (--time-budget-min applies to it)",
    )


def _features_arguments(p: argparse.ArgumentParser) -> None:
    _data_argument(p, required=True)
    add_flags(p, "features")
    p.add_argument("--out", required=True, metavar="PACK.npz")
    p.add_argument(
        "--max-variants", type=int, help="keep the clean copy and this many minus one augmented"
    )


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
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


def _export_nir_arguments(p: argparse.ArgumentParser) -> None:
    from training.export import MODES, TARGETS

    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument(
        "--neurons",
        choices=MODES,
        default="exact",
        help="exact (default): adLIF neurons as exact composites of NIR nodes, a model "
        "trained with --neuron lif as LIF nodes; lif: plain LIF nodes, for toolchains that "
        "map only those (an approximation of adLIF neurons: its measured error is printed)",
    )
    p.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default="nir",
        help="the reader to write for: nir (default; the specification's reading), or the "
        "time step, readout and weight form that an importer needs: "
        + "; ".join(f"{name}: {t.description}" for name, t in TARGETS.items() if name != "nir"),
    )
    p.add_argument("--out", required=True, metavar="MODEL.nir")


# name -> (arguments, handler)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable]] = {
    "train": (_train_arguments, cmd_train),
    "features": (_features_arguments, cmd_features),
    "evaluate": (_evaluate_arguments, cmd_evaluate),
    "export-nir": (_export_nir_arguments, cmd_export_nir),
}


def add_command_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Fill in a training command's parser, made by ``app.cli`` with its name and help."""
    arguments, handler = COMMANDS[name]
    arguments(parser)
    parser.set_defaults(handler=handler)
