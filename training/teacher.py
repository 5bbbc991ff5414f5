"""A small convolutional teacher on the same cochlear spike counts.

Non-spiking, training-only: its softened class probabilities are extra targets
for the spiking student (knowledge distillation), which measurably helps small
recurrent SNNs on little data (../shared/SNN_NOTES.md: +5 points on log-mel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(),
        nn.Conv2d(n_out, n_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(),
    )


class _Residual(nn.Module):
    """Two 3x3 convolutions around a shortcut (a 1x1 projection when widths differ)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.body = _block(n_in, n_out)[:-1]  # the last ReLU comes after the sum
        self.shortcut = (
            nn.Identity()
            if n_in == n_out
            else nn.Sequential(nn.Conv2d(n_in, n_out, 1, bias=False), nn.BatchNorm2d(n_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _vgg(width: int) -> tuple[nn.Module, int]:
    """Pairs of 3x3 convolutions at full resolution first: the stronger, dearer one."""
    features = nn.Sequential(
        _block(1, width),
        nn.MaxPool2d(2),
        _block(width, 2 * width),
        nn.MaxPool2d(2),
        _block(2 * width, 4 * width),
        nn.MaxPool2d(2),
        _block(4 * width, 4 * width),
    )
    return features, 4 * width


def _res(width: int) -> tuple[nn.Module, int]:
    """One convolution at full resolution, then residual blocks on a pooled image
    (as res8 does for keyword spotting): about a third of ``vgg``'s multiplies at the
    same width, so a CPU can afford the epochs a teacher needs."""
    features = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AvgPool2d(2),
        _Residual(width, width),
        nn.AvgPool2d(2),
        _Residual(width, 2 * width),
        nn.AvgPool2d(2),
        _Residual(2 * width, 2 * width),
    )
    return features, 2 * width


_ARCHITECTURES = {"vgg": _vgg, "res": _res}
ARCHITECTURES = tuple(_ARCHITECTURES)


# Teachers saved before they recorded their bin width were all trained on 20 ms bins.
LEGACY_BIN_MS = 20.0


class ConvTeacher(nn.Module):
    """Spike counts ``[batch, bins, channels]`` -> class logits ``[batch, classes]``.

    The teacher sees counts in its own ``bin_ms``; counts in a finer bin that divides it
    (``input_bin_ms``) are summed into its bins first, which is exact, so a teacher trained
    on 20 ms bins teaches a student that runs on 10 ms bins of the same clips."""

    def __init__(
        self,
        n_classes: int,
        width: int = 32,
        arch: str = "vgg",
        bin_ms: float = LEGACY_BIN_MS,
        input_bin_ms: float | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown teacher architecture {arch!r} (one of {ARCHITECTURES})")
        input_bin_ms = input_bin_ms or bin_ms
        self.pool = round(bin_ms / input_bin_ms)
        if self.pool < 1 or abs(self.pool * input_bin_ms - bin_ms) > 1e-6:
            raise ValueError(
                f"a teacher trained on {bin_ms:g} ms bins cannot read {input_bin_ms:g} ms bins "
                "(they must divide its own)"
            )
        self.n_classes, self.width, self.arch, self.bin_ms = n_classes, width, arch, bin_ms
        self.features, n_features = _ARCHITECTURES[arch](width)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(n_features, n_classes))

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            batch, bins, channels = counts.shape
            counts = F.pad(counts, (0, 0, 0, -bins % self.pool))
            counts = counts.reshape(batch, -1, self.pool, channels).sum(dim=2)
        image = torch.log1p(counts).transpose(1, 2)[:, None]  # [batch, 1, channels, bins]
        return self.head(self.features(image).mean(dim=(2, 3)))

    def save(self, path) -> None:
        torch.save(
            {
                "n_classes": self.n_classes,
                "width": self.width,
                "arch": self.arch,
                "bin_ms": self.bin_ms,
                "state": self.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path, device: torch.device, input_bin_ms: float | None = None) -> ConvTeacher:
        """``input_bin_ms``: the bin width of the counts it will be given (default its own)."""
        saved = torch.load(path, map_location=device, weights_only=True)
        teacher = cls(
            saved["n_classes"],
            saved["width"],
            saved.get("arch", "vgg"),  # teachers saved before there was a choice are all "vgg"
            saved.get("bin_ms", LEGACY_BIN_MS),
            input_bin_ms,
        ).to(device)
        teacher.load_state_dict(saved["state"])
        return teacher.eval()


class TeacherEnsemble(nn.Module):
    """Several trained teachers as one: the mean of their logits (an ensemble is a
    better teacher than any of its members)."""

    def __init__(self, teachers: list[ConvTeacher]) -> None:
        super().__init__()
        if len({t.n_classes for t in teachers}) != 1:
            raise ValueError("the teachers were trained for different vocabularies")
        self.members = nn.ModuleList(teachers)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.stack([teacher(counts) for teacher in self.members]).mean(dim=0)

    @classmethod
    def load(
        cls, paths: list, device: torch.device, input_bin_ms: float | None = None
    ) -> TeacherEnsemble:
        return cls([ConvTeacher.load(path, device, input_bin_ms) for path in paths]).eval()


def distillation_loss(
    student_evidence: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL from the teacher's softened probabilities to the student's clip output
    (the mean over time of its softened per-step probabilities), scaled by T^2."""
    student = (student_evidence / temperature).softmax(-1).mean(dim=1)
    target = (teacher_logits / temperature).softmax(-1)
    return F.kl_div(torch.log(student + 1e-8), target, reduction="batchmean") * temperature**2
