"""The settings of a training run, apart from the training code.

The command line takes its defaults from here, so that each is written once, without
importing the training code at every start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.vocabulary import DEFAULT_VOCABULARY


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    epochs: int = 74
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.0  # AdamW's, on weight matrices only; 0 is plain Adam
    seed: int = 0
    kind: str = "spiking"
    hidden: tuple[int, ...] = (256, 256, 256)
    input_delays: tuple[int, ...] = (0,)  # bins; see NetworkConfig
    input_conv: tuple[int, int, int] | None = None  # (filters, taps, stride); see NetworkConfig
    hidden_conv: tuple[int, ...] | None = None  # later layers', flat triples; see NetworkConfig
    dropout: float = 0.1  # on hidden spikes during training
    channels: int = 64
    bin_ms: float = 20.0
    variants: int = 3
    speech_level_dbfs: tuple[float, float] | None = None  # see AugmentConfig
    pitch_semitones: tuple[float, float] | None = None  # see AugmentConfig
    early_weight: float = 0.0  # measured: 0.3 (with the rate bounds) stalled learning here
    rate_weight: float = 0.5
    tau_u_ms: tuple[float, float] = (50.0, 250.0)  # membrane time constants: init range and clamp
    tau_w_ms: tuple[float, float] = (300.0, 1200.0)  # adaptation time constants: the same
    max_shift_ms: float = 140.0  # batch-time augmentation: random shift of the clip
    max_time_mask_ms: float = 100.0  # ... a silenced stretch of time
    max_channel_mask: int = 4  # ... and of neighbouring channels
    max_channel_shift: int = 0  # ... and the whole spectrum moved by up to this many channels
    mixup: float = 0.0  # ... and pairs of clips mixed with Beta(a, a) weights (0: off)
    distill_weight: float = 0.7  # share of the clip loss given to the teacher's soft targets
    temperature: float = 2.0
    teacher_targets: str = "cached"  # once per stored clip variant (cheap on a CPU), or "batch"
    teachers: tuple[str, ...] = ()  # trained teacher files (an ensemble); trained first when none
    teacher_epochs: int = 80
    teacher_width: int = 32
    teacher_arch: str = "res"  # pooled residual blocks: a CPU affords its 80 epochs (vgg: dearer)
    features: str | None = None  # a feature pack instead of ``data``
    time_budget_s: float | None = None  # fit the epochs into this much wall time
    cache_dir: str = "cache"
    resume: bool = False
    max_clips: int | None = None  # for smoke tests
    threads: int = 1  # torch threads: tiny matrices gain little from more, and suffer under load
    vocabulary: tuple[str, ...] = field(default=DEFAULT_VOCABULARY)
