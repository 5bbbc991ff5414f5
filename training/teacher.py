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


class ConvTeacher(nn.Module):
    """Spike counts ``[batch, bins, channels]`` -> class logits ``[batch, classes]``."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.n_classes, self.width = n_classes, width
        self.features = nn.Sequential(
            _block(1, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.MaxPool2d(2),
            _block(4 * width, 4 * width),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * width, n_classes))

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        image = torch.log1p(counts).transpose(1, 2)[:, None]  # [batch, 1, channels, bins]
        return self.head(self.features(image).mean(dim=(2, 3)))

    def save(self, path) -> None:
        torch.save(
            {"n_classes": self.n_classes, "width": self.width, "state": self.state_dict()}, path
        )

    @classmethod
    def load(cls, path, device: torch.device) -> ConvTeacher:
        saved = torch.load(path, map_location=device, weights_only=True)
        teacher = cls(saved["n_classes"], saved["width"]).to(device)
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
    def load(cls, paths: list, device: torch.device) -> TeacherEnsemble:
        return cls([ConvTeacher.load(path, device) for path in paths]).eval()


def distillation_loss(
    student_evidence: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL from the teacher's softened probabilities to the student's clip output
    (the mean over time of its softened per-step probabilities), scaled by T^2."""
    student = (student_evidence / temperature).softmax(-1).mean(dim=1)
    target = (teacher_logits / temperature).softmax(-1)
    return F.kl_div(torch.log(student + 1e-8), target, reduction="batchmean") * temperature**2
