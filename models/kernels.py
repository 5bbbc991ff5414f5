"""Event-driven inference kernels: work done only where there are spikes.

A hidden neuron fires in about one bin in ten, so a dense matrix product spends
nine tenths of its multiply-adds on zeros, and a step of a few streams is mostly
the overhead of a dozen small tensor operations per layer.  Here a nonzero input
adds its weight row to its targets' currents (one synaptic operation each, as
neuromorphic hardware does it), and a recurrent adLIF layer runs all its steps
in one compiled loop.

These serve inference on the CPU only: training keeps torch's dense operations
and its autograd.  Sequence mode and step mode both go through them, so the two
modes stay bit-identical.  The neuron update is :func:`models.neurons.adlif_step`
written out per neuron, with the same operations in the same order (no fused
multiply-add), so its values are those of the torch step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numba
import numpy as np
import torch

_settings = threading.local()  # per thread: a comparison may not switch a server's streams


@numba.njit(cache=True, nogil=True)
def _accumulate(x, weight_rows, out):
    """``out += x @ weight_rows`` for one row ``x``, visiting only its nonzero entries
    (first listed, so that the additions run without branches in between)."""
    active = np.empty(x.shape[0], np.int64)
    n_active = 0
    for j in range(x.shape[0]):
        if x[j] != 0.0:
            active[n_active] = j
            n_active += 1
    for k in range(n_active):
        j = active[k]
        value = x[j]
        if value == 1.0:  # a spike: one addition per synapse
            for m in range(out.shape[0]):
                out[m] += weight_rows[j, m]
        else:
            for m in range(out.shape[0]):
                out[m] += value * weight_rows[j, m]


@numba.njit(cache=True, nogil=True)
def _project_rows(x, weight_rows, scale, shift, out):
    """``out[r] = (x[r] @ weight_rows) * scale + shift`` for every row ``r``."""
    for r in range(x.shape[0]):
        row = out[r]
        row[:] = 0.0
        _accumulate(x[r], weight_rows, row)
        for m in range(row.shape[0]):
            row[m] = row[m] * scale[m] + shift[m]


@numba.njit(cache=True, nogil=True)
def _adlif_layer(currents, recurrent_rows, alpha, beta, a, b, u, w, s, out):
    """A recurrent adLIF layer over ``currents [batch, time, n]`` from the state
    ``u, w, s [batch, n]`` (updated in place); spikes to ``out [batch, time, n]``.
    ``recurrent_rows`` is ``[n, n]`` (row ``j``: neuron ``j``'s outgoing weights) or
    ``[0, n]`` for no recurrence."""
    n = currents.shape[2]
    recurrent = recurrent_rows.shape[0] > 0
    total = np.empty(n, np.float32)
    for batch in range(currents.shape[0]):
        u_b, w_b, s_b = u[batch], w[batch], s[batch]
        for t in range(currents.shape[1]):
            total[:] = currents[batch, t]
            if recurrent:
                _accumulate(s_b, recurrent_rows, total)
            spikes = out[batch, t]
            for i in range(n):
                w_i = beta[i] * w_b[i] + a[i] * u_b[i] + b[i] * s_b[i]
                u_i = alpha[i] * (u_b[i] - s_b[i]) + (np.float32(1.0) - alpha[i]) * (total[i] - w_i)
                s_i = np.float32(1.0) if u_i >= np.float32(1.0) else np.float32(0.0)
                w_b[i], u_b[i], s_b[i], spikes[i] = w_i, u_i, s_i, s_i


def applies_to(tensor: torch.Tensor) -> bool:
    """Whether the kernels serve this computation: float32 on the CPU, no gradients."""
    return (
        not torch.is_grad_enabled()
        and tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and not getattr(_settings, "disabled", False)
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inference by torch's dense operations in this thread, to compare with the kernels."""
    before = getattr(_settings, "disabled", False)
    _settings.disabled = True
    try:
        yield
    finally:
        _settings.disabled = before


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().numpy())


def cached(owner: object, name: str, sources: tuple[torch.Tensor, ...], compute) -> object:
    """``compute()``, kept on ``owner`` until one of ``sources`` changes (in place, as
    an optimizer step or loading weights does): deriving arrays from a layer's
    weights at every step of a stream would cost more than the step.  Weights built
    in the call itself (binary ones, under inference mode) are not kept."""
    if any(t.is_inference() for t in sources):
        return compute()
    key = tuple((t._version, t.data_ptr()) for t in sources)
    cached = getattr(owner, name, None)
    if cached is None or cached[0] != key:
        cached = (key, compute())
        setattr(owner, name, cached)
    return cached[1]


def weight_rows(weight: torch.Tensor) -> np.ndarray:
    """``weight.t()`` of a ``[n_out, n_in]`` weight as a contiguous array (row ``j``:
    input ``j``'s outgoing weights)."""
    return cached(
        weight, "_spikeear_rows", (weight,), lambda: np.ascontiguousarray(_array(weight).T)
    )


def _affine(norm: torch.nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """An evaluating batch norm as the affine map ``x * scale + shift`` it is."""

    def compute() -> tuple[np.ndarray, np.ndarray]:
        mean, var, gamma, beta = (
            _array(t) for t in (norm.running_mean, norm.running_var, norm.weight, norm.bias)
        )
        scale = gamma / np.sqrt(var + np.float32(norm.eps))
        return scale, beta - mean * scale

    sources = (norm.running_mean, norm.running_var, norm.weight, norm.bias)
    return cached(norm, "_spikeear_affine", sources, compute)


def normalized_projection(
    x: torch.Tensor, weight: torch.Tensor, norm: torch.nn.BatchNorm1d
) -> torch.Tensor:
    """``norm(x @ weight.t())`` for ``x [..., n_in]`` and ``weight [n_out, n_in]`` (a
    ``nn.Linear`` weight) by synaptic events, the evaluating batch norm folded in."""
    rows = _array(x.reshape(-1, x.shape[-1]))
    out = np.empty((rows.shape[0], weight.shape[0]), np.float32)
    _project_rows(rows, weight_rows(weight), *_affine(norm), out)
    return torch.from_numpy(out).reshape(*x.shape[:-1], weight.shape[0])


def adlif_layer(
    currents: torch.Tensor,
    recurrent: torch.Tensor | None,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Spikes ``[batch, time, n]`` of a recurrent adLIF layer and its final state
    ``(u, w, s)``.  ``recurrent`` is the ``[n, n]`` ``nn.Linear`` weight of the
    recurrent connections (``s_{t-1} @ recurrent.t()`` joins the input; ``None`` for
    none).  The given state is not modified."""
    n = currents.shape[-1]
    state = [np.array(t.detach().numpy(), np.float32) for t in (u, w, s)]
    rows = np.zeros((0, n), np.float32) if recurrent is None else weight_rows(recurrent)
    out = np.empty(currents.shape, np.float32)
    _adlif_layer(_array(currents), rows, *(_array(p) for p in (alpha, beta, a, b)), *state, out)
    u_end, w_end, s_end = (torch.from_numpy(t) for t in state)
    return torch.from_numpy(out), (u_end, w_end, s_end)
