"""The settings of a training run, and the one table that maps them to flags.

:data:`TRAIN_FLAGS` drives three things, so that they cannot drift apart: the
``spikeear train`` and ``spikeear features`` parsers (``app/train_commands.py``), the
:class:`TrainConfig` those parsers build, and the command line a model card records
(:func:`train_command`, :func:`features_command`), which parses back into the same
settings.  The command line imports it only for the training commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from models.network import KINDS, NEURONS
from models.vocabulary import DEFAULT_VOCABULARY
from training.teacher import ARCHITECTURES

# The training copies' speech levels unless a run gives others (or takes a pack's):
# absolute levels keep loudness from becoming a class cue (two FSDD training speakers
# speak 16-22 dB below the Speech Commands median).
DEFAULT_SPEECH_LEVEL_DBFS = (-45.0, -12.0)


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    epochs: int = 74
    batch_size: int = 128
    lr: float = 1e-2
    seed: int = 0
    kind: str = "spiking"
    neuron: str = "adlif"  # spiking neuron model; see NetworkConfig
    hidden: tuple[int, ...] = (256, 256, 256)
    input_delays: tuple[int, ...] = (0,)  # bins; see NetworkConfig
    input_conv: tuple[int, int, int] | None = None  # (filters, taps, stride); see NetworkConfig
    hidden_conv: tuple[int, ...] | None = None  # later layers', flat triples; see NetworkConfig
    dropout: float = 0.1  # on hidden spikes during training
    channels: int = 64
    bin_ms: float = 20.0
    variants: int = 3
    # Each augmented copy's speech level; None: DEFAULT_SPEECH_LEVEL_DBFS, or a pack's.
    speech_level_dbfs: tuple[float, float] | None = None
    tau_u_ms: tuple[float, float] = (50.0, 250.0)  # membrane time constants: init range and clamp
    tau_w_ms: tuple[float, float] = (300.0, 1200.0)  # adaptation time constants: the same
    max_shift_ms: float = 140.0  # batch-time augmentation: random shift of the clip
    max_time_mask_ms: float = 100.0  # ... a silenced stretch of time
    max_channel_mask: int = 4  # ... and of neighbouring channels
    distill_weight: float = 0.7  # share of the clip loss given to the teacher's soft targets
    temperature: float = 2.0
    # Teacher outputs once per stored clip variant (cheap on a CPU); the only mode left,
    # kept as a setting so that recorded commands that name it still run.
    teacher_targets: str = "cached"
    teachers: tuple[str, ...] = ()  # trained teacher files (an ensemble); trained first when none
    teacher_epochs: int = 80
    teacher_width: int = 32
    teacher_arch: str = "res"  # pooled residual blocks: a CPU affords its 80 epochs (vgg: dearer)
    features: str | None = None  # a feature pack instead of ``data``
    time_budget_s: float | None = None  # fit the epochs into this much wall time
    cache_dir: str = "cache"
    resume: bool = False
    max_clips: int | None = None  # for smoke tests
    exclude_words: tuple[str, ...] = ()  # recordings of these words are left out entirely
    threads: int = 1  # torch threads: tiny matrices gain little from more, and suffer under load
    vocabulary: tuple[str, ...] = field(default=DEFAULT_VOCABULARY)


# Where a recorded command puts a setting: always; only when it is not the default;
# never (how a run was executed, not what it learned from); the teacher files, or the
# settings of the teacher trained first when there are none (both only when distilling).
Record = Literal["always", "changed", "never", "teachers", "new teacher"]


@dataclass(frozen=True)
class TrainFlag:
    """One command-line flag of ``spikeear train`` (and, with ``features``, of
    ``spikeear features``): the :class:`TrainConfig` field it sets, how argparse reads
    it (its default always comes from the field), and how a card records it."""

    flag: str
    field: str
    argparse: dict[str, Any]
    record: Record = "changed"
    features: bool = False  # also a flag of ``spikeear features``
    pack: bool = False  # fixed when a feature pack is made: recorded on its command
    to_field: Callable[[Any], Any] | None = None  # flag value -> field value

    @property
    def default(self) -> Any:
        return _FIELDS[self.field].default

    def value(self, given: Any) -> Any:
        """The field's value for what argparse read (lists become the field's tuples)."""
        if self.to_field is not None:
            return self.to_field(given)
        return tuple(given) if isinstance(given, list) else given


_FIELDS = {f.name: f for f in fields(TrainConfig)}

# In the order a recorded command lists them.
TRAIN_FLAGS: tuple[TrainFlag, ...] = (
    TrainFlag(
        "--channels",
        "channels",
        {
            "type": int,
            "help": "cochlear channels = network inputs; the published SHD/SSC files have 700",
        },
        features=True,
    ),
    TrainFlag(
        "--variants",
        "variants",
        {"type": int, "help": "augmented copies per clip"},
        features=True,
        pack=True,
    ),
    TrainFlag(
        "--speech-level-dbfs",
        "speech_level_dbfs",
        {
            "type": float,
            "nargs": 2,
            "metavar": ("LOW", "HIGH"),
            "help": "set each augmented copy to a random speech level in this range "
            f"(default {DEFAULT_SPEECH_LEVEL_DBFS[0]:g} {DEFAULT_SPEECH_LEVEL_DBFS[1]:g}; "
            "a run from a pack takes the pack's)",
        },
        features=True,
        pack=True,
    ),
    TrainFlag(
        "--bin-ms",
        "bin_ms",
        {
            "type": float,
            "help": "time bin of the network step; a run from a pack takes the pack's",
        },
        features=True,
        pack=True,
    ),
    TrainFlag(
        "--kind",
        "kind",
        {
            "choices": KINDS,
            "help": "hidden neurons: spiking (adLIF), analog or binary baselines",
        },
        record="always",
    ),
    TrainFlag(
        "--neuron",
        "neuron",
        {
            "choices": NEURONS,
            "help": "spiking neuron: adlif (adaptive), or lif: NIR's LIF node exactly (reset "
            "to 0, no adaptation), which neuromorphic toolchains import as it is",
        },
    ),
    TrainFlag("--hidden", "hidden", {"type": int, "nargs": "+", "help": "layer sizes"}, "always"),
    TrainFlag(
        "--distill",
        "distill_weight",
        {
            "type": float,
            "metavar": "WEIGHT",
            "help": "share of the loss given to a convolutional teacher's soft targets "
            "(0: no teacher)",
        },
        record="always",
    ),
    TrainFlag(
        "--teacher",
        "teachers",
        {
            "action": "append",
            "metavar": "FILE",
            "help": "trained teacher; repeat for an ensemble (default: train one first)",
        },
        record="teachers",
    ),
    TrainFlag("--teacher-epochs", "teacher_epochs", {"type": int}, "new teacher"),
    TrainFlag(
        "--teacher-width", "teacher_width", {"type": int, "help": "teacher channels"}, "new teacher"
    ),
    TrainFlag(
        "--teacher-arch",
        "teacher_arch",
        {
            "choices": ARCHITECTURES,
            "help": "teacher network: res (pooled residual blocks; 80 epochs at width 32 take "
            "~28 minutes on one CPU core) or vgg (full-resolution convolutions, ~3x dearer)",
        },
        record="new teacher",
    ),
    TrainFlag(
        "--delays",
        "input_delays",
        {
            "type": int,
            "nargs": "+",
            "metavar": "BINS",
            "help": "synaptic delays of the inputs, in bins (e.g. 0 2 4 6: a 120 ms delay line)",
        },
    ),
    TrainFlag(
        "--input-conv",
        "input_conv",
        {
            "type": int,
            "nargs": 3,
            "metavar": ("FILTERS", "TAPS", "STRIDE"),
            "help": "first-layer input weights shared across frequency (e.g. 16 9 4 for 256 "
            "neurons)",
        },
    ),
    TrainFlag(
        "--hidden-conv",
        "hidden_conv",
        {
            "type": int,
            "nargs": "+",
            "metavar": "FILTERS TAPS STRIDE",
            "help": "later layers' weights shared across the previous layer's frequency "
            "positions, three numbers per layer from the second on (with --input-conv 16 9 4: "
            "e.g. 32 5 2 for 256 second-layer neurons, 32 5 2 64 3 2 for the third layer too)",
        },
    ),
    TrainFlag("--dropout", "dropout", {"type": float, "help": "dropout on hidden activity"}),
    *(
        TrainFlag(
            f"--tau-{name}-ms",
            f"tau_{name}_ms",
            {
                "type": float,
                "nargs": 2,
                "metavar": ("MIN", "MAX"),
                "help": f"range of the spiking neurons' {what} time constants (initial and clamp)",
            },
        )
        for name, what in (("u", "membrane"), ("w", "adaptation"))
    ),
    TrainFlag(
        "--shift-ms", "max_shift_ms", {"type": float, "help": "batch-time random shift (max)"}
    ),
    TrainFlag(
        "--time-mask-ms", "max_time_mask_ms", {"type": float, "help": "time mask width (max)"}
    ),
    TrainFlag(
        "--channel-mask", "max_channel_mask", {"type": int, "help": "channel mask width (max)"}
    ),
    TrainFlag(
        "--teacher-targets",
        "teacher_targets",
        {
            "choices": ("cached",),
            "help": "teacher outputs once per stored clip variant (the only mode)",
        },
    ),
    TrainFlag(
        "--temperature",
        "temperature",
        {"type": float, "help": "distillation softening of outputs"},
    ),
    TrainFlag("--lr", "lr", {"type": float}),
    TrainFlag("--batch-size", "batch_size", {"type": int}),
    TrainFlag("--epochs", "epochs", {"type": int}, "always"),
    TrainFlag("--seed", "seed", {"type": int}, "always", features=True),
    TrainFlag(
        "--cache-dir",
        "cache_dir",
        {"help": "where spike features (and cached teacher targets) are kept"},
        record="never",
        features=True,
    ),
    TrainFlag(
        "--exclude-words",
        "exclude_words",
        {
            "nargs": "+",
            "metavar": "WORD",
            "help": "leave every recording of these words out (e.g. words held out to "
            "measure custom-word enrollment, benchmarks/custom_words.py)",
        },
        features=True,
    ),
    TrainFlag(
        "--max-clips",
        "max_clips",
        {"type": int, "help": "use a random subset (smoke tests)"},
        record="never",
        features=True,
    ),
    TrainFlag(
        "--resume",
        "resume",
        {"action": "store_true", "help": "continue from MODEL's checkpoint"},
        record="never",
    ),
    TrainFlag(
        "--time-budget-min",
        "time_budget_s",
        {"type": float, "help": "fit the epochs into this many minutes"},
        record="never",
        to_field=lambda minutes: minutes * 60,
    ),
    TrainFlag("--threads", "threads", {"type": int, "help": "torch CPU threads"}, record="never"),
)

# What a card from before a setting existed was trained with, where that is not today's
# default: every teacher was a vgg one until there was a choice.
_LEGACY_CARD_VALUES = {"teacher_arch": "vgg"}


def _card_value(training: dict, flag: TrainFlag) -> Any:
    value = training.get(flag.field, _LEGACY_CARD_VALUES.get(flag.field, flag.default))
    return tuple(value) if isinstance(value, list) else value


def _words(flag: TrainFlag, value: Any) -> list[str]:
    if flag.field == "teachers":  # the names: a card is read where the files are not
        return [f"{flag.flag} {Path(t).name}" for t in value]
    values = value if isinstance(value, tuple) else (value,)
    return [" ".join([flag.flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)])]


def _recorded(flag: TrainFlag, value: Any, training: dict) -> bool:
    distilling = bool(training.get("distill_weight"))
    match flag.record:
        case "always":
            return True
        case "changed":
            return value is not None and value != flag.default
        case "teachers":
            return distilling and bool(value)
        case "new teacher":
            return distilling and not training.get("teachers")
    return False


def train_command(training: dict) -> str:
    """The ``spikeear train`` command line that a card's training settings describe
    (``asdict`` of its :class:`TrainConfig`); a run from a pack leaves the settings fixed
    when the pack was made to :func:`features_command`."""
    from_pack = bool(training.get("features"))
    words = ["spikeear train"]
    words += [f"--data {d}" for d in training.get("data") or ()]
    if from_pack:
        words.append(f"--features {Path(training['features']).name}")
    for flag in TRAIN_FLAGS:
        value = _card_value(training, flag)
        if not (from_pack and flag.pack) and _recorded(flag, value, training):
            words += _words(flag, value)
    return " ".join(words)


def features_command(training: dict) -> str:
    """The ``spikeear features`` command that made a run's pack (empty when it had none)."""
    if not training.get("features"):
        return ""
    words = ["spikeear features"]
    for flag in TRAIN_FLAGS:
        value = _card_value(training, flag)
        if flag.pack and _recorded(flag, value, training):
            words += _words(flag, value)
    return " ".join([*words, "--data ..."])
