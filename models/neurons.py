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

The ``lif`` neuron is NIR's LIF node exactly (``v_threshold = 1``, ``v_reset = 0``,
``v_leak = 0``, ``r = 1``), on the same time grid, with no adaptation::

    u_t = alpha * u_{t-1} * (1 - s_{t-1}) + (1 - alpha) * I_t
    s_t = H(u_t > 1)

It fires strictly above the threshold and restarts from 0 after a spike (the state
keeps the membrane before the reset, so ``u * (1 - s)`` is the reset membrane), so a
NIR graph of LIF nodes reproduces it exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

THRESHOLD = 1.0
# Hidden neuron models: adaptive LIF (subtractive reset), or NIR's plain LIF (reset to 0).
NEURONS = ("adlif", "lif")


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


class StrictSpikeFunction(SpikeFunction):
    """Heaviside strictly above the threshold (NIR's ``v > v_threshold``); the same
    surrogate gradient."""

    @staticmethod
    def forward(ctx, membrane: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(membrane)
        return (membrane > THRESHOLD).to(membrane.dtype)


def spike_above(membrane: torch.Tensor) -> torch.Tensor:
    """:func:`spike` firing on ``membrane > THRESHOLD``, as NIR's spiking nodes do."""
    if torch.is_grad_enabled() and membrane.requires_grad:
        return StrictSpikeFunction.apply(membrane)
    return (membrane > THRESHOLD).to(membrane.dtype)


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


def lif_step(
    current: torch.Tensor, state: AdLIFState, p: AdLIFParameters
) -> tuple[torch.Tensor, AdLIFState]:
    """NIR's LIF neuron: reset to 0 after a spike, no adaptation (``w`` stays as it is,
    zero; ``beta``, ``a`` and ``b`` are unused)."""
    u = p.alpha * (state.u * (1.0 - state.s)) + p.gain * current
    s = spike_above(u)
    return s, AdLIFState(u, state.w, s)


def leaky_step(
    current: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor, gain: torch.Tensor
) -> torch.Tensor:
    """``gain`` is ``1 - alpha``, passed in so that a loop computes it once."""
    return alpha * u + gain * current


class AdLIFSequence(torch.autograd.Function):
    """A recurrent adLIF layer over a whole sequence, with hand-written backpropagation
    through time.

    Training the layer step by step through autograd records a dozen small
    operations per step and replays them one by one: most of an epoch goes there.
    This runs the forward pass with :func:`adlif_step` (so the values are exactly
    those of step mode) without recording, then walks back through time once with
    the adjoint of the update, in a few fused operations per step, and forms the
    weight and neuron-parameter gradients from the stored sequences in a few large
    operations.  The spike's surrogate gradient is :class:`SpikeFunction`'s.

    Inputs: ``currents [batch, time, n]`` (feed-forward input), ``recurrent
    [n, n]`` (``s_{t-1} @ recurrent`` is added; ``None`` for no recurrence), the
    neuron parameters ``alpha, beta, a, b [n]``, the initial state ``u, w, s`` and
    ``mask [batch, time, n]`` (dropout on the outputs, already scaled; ``None`` for
    none).  Returns the outputs ``[batch, time, n]`` and the final ``u, w, s``.
    """

    @staticmethod
    def forward(ctx, currents, recurrent, alpha, beta, a, b, u0, w0, s0, mask):  # type: ignore[override]
        p = AdLIFParameters.of(alpha, beta, a, b)
        state = AdLIFState(u0, w0, s0)
        us, ws, ss, inputs = [u0], [w0], [s0], []
        for t in range(currents.shape[1]):
            current = currents[:, t]
            if recurrent is not None:
                current = current + state.s @ recurrent
            _, state = adlif_step(current, state, p)
            us.append(state.u)
            ws.append(state.w)
            ss.append(state.s)
            inputs.append(current)
        # The states with the initial one first: [:, :-1] is what each step started from.
        u, w, s = (torch.stack(x, dim=1) for x in (us, ws, ss))
        ctx.save_for_backward(recurrent, alpha, beta, a, b, mask, u, w, s, torch.stack(inputs, 1))
        out = s[:, 1:] * mask if mask is not None else s[:, 1:]
        return out, state.u, state.w, state.s

    @staticmethod
    def backward(ctx, d_out, d_u_last, d_w_last, d_s_last):  # type: ignore[override]
        recurrent, alpha, beta, a, b, mask, u_all, w_all, s_all, total = ctx.saved_tensors
        u_prev, w_prev, s_prev = u_all[:, :-1], w_all[:, :-1], s_all[:, :-1]
        u, w = u_all[:, 1:], w_all[:, 1:]
        gain = 1.0 - alpha
        d_s_direct = d_out * mask if mask is not None else d_out
        surrogate = ((u - THRESHOLD).abs() < 0.5).to(u.dtype)
        # Adjoints carried back from step t + 1 into the state of step t.
        du, dw, ds = d_u_last, d_w_last, d_s_last
        minus_gain = -gain
        # (gain * du) @ recurrent.t() as one matmul, the gain folded into the weights.
        into_spikes = gain[:, None] * recurrent.t() if recurrent is not None else None
        du_steps, dw_steps = [], []
        for t in range(u.shape[1] - 1, -1, -1):
            du_t = torch.addcmul(du, ds + d_s_direct[:, t], surrogate[:, t])  # all reaching u_t
            dw_t = torch.addcmul(dw, minus_gain, du_t)
            du_steps.append(du_t)
            dw_steps.append(dw_t)
            alpha_du = alpha * du_t
            du = torch.addcmul(alpha_du, a, dw_t)
            dw = beta * dw_t
            ds = torch.addcmul(-alpha_du, b, dw_t)
            if into_spikes is not None:
                ds = torch.addmm(ds, du_t, into_spikes)
        du_steps = torch.stack(du_steps[::-1], dim=1)
        dw_steps = torch.stack(dw_steps[::-1], dim=1)
        d_current = gain * du_steps
        d_recurrent = None
        if recurrent is not None and ctx.needs_input_grad[1]:
            d_recurrent = s_prev.flatten(0, 1).t() @ d_current.flatten(0, 1)
        d_alpha = (du_steps * (u_prev - s_prev - (total - w))).sum(dim=(0, 1))
        d_beta = (dw_steps * w_prev).sum(dim=(0, 1))
        d_a = (dw_steps * u_prev).sum(dim=(0, 1))
        d_b = (dw_steps * s_prev).sum(dim=(0, 1))
        return d_current, d_recurrent, d_alpha, d_beta, d_a, d_b, du, dw, ds, None
