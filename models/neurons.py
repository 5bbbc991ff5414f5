"""Spiking neuron dynamics as pure step functions.

Adaptive leaky integrate-and-fire (adLIF, Bittar & Garner 2022), per neuron,
one step per time bin::

    w_t = beta * w_{t-1} + a * u_{t-1} + b * s_{t-1}
    u_t = alpha * (u_{t-1} - s_{t-1}) + (1 - alpha) * (I_t - w_t)
    s_t = H(u_t - 1)

with ``alpha = exp(-1/tau_u)`` and ``beta = exp(-1/tau_w)``; reset is by
subtraction.  ``a = b = 0`` gives a plain LIF neuron.  The leaky integrator
readout is ``u_t = alpha * u_{t-1} + (1 - alpha) * I_t`` without spikes.

The Heaviside step has a boxcar surrogate gradient (1 where ``|u - 1| < 0.5``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

THRESHOLD = 1.0


class SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, membrane: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(membrane)
        return (membrane >= THRESHOLD).to(membrane.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (membrane,) = ctx.saved_tensors
        return grad * ((membrane - THRESHOLD).abs() < 0.5).to(grad.dtype)


def spike(membrane: torch.Tensor) -> torch.Tensor:
    """Heaviside at the threshold; the surrogate gradient only where gradients are wanted."""
    if torch.is_grad_enabled() and membrane.requires_grad:
        return SpikeFunction.apply(membrane)
    return (membrane >= THRESHOLD).to(membrane.dtype)  # inference: skip autograd bookkeeping


class AdLIFState(NamedTuple):
    u: torch.Tensor  # membrane potential [batch, neurons]
    w: torch.Tensor  # adaptation variable
    s: torch.Tensor  # spikes of the previous step


class AdLIFParameters(NamedTuple):
    """Per-neuron constants of a layer, built once per sequence rather than every step."""

    alpha: torch.Tensor  # membrane decay per step [neurons]
    beta: torch.Tensor  # adaptation decay per step
    a: torch.Tensor  # subthreshold coupling
    b: torch.Tensor  # spike-triggered adaptation
    gain: torch.Tensor  # 1 - alpha: the input's share

    @classmethod
    def of(
        cls, alpha: torch.Tensor, beta: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> AdLIFParameters:
        return cls(alpha, beta, a, b, 1.0 - alpha)


def adlif_step(
    current: torch.Tensor, state: AdLIFState, p: AdLIFParameters
) -> tuple[torch.Tensor, AdLIFState]:
    w = p.beta * state.w + p.a * state.u + p.b * state.s
    u = p.alpha * (state.u - state.s) + p.gain * (current - w)
    s = spike(u)
    return s, AdLIFState(u, w, s)


def leaky_step(
    current: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor, gain: torch.Tensor
) -> torch.Tensor:
    """``gain`` is ``1 - alpha``, passed in so that a loop computes it once."""
    return alpha * u + gain * current
