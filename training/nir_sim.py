"""A small discrete-time simulator for NIR graphs, written from the NIR specification.

It reads nothing but the graph (nodes, edges, parameters and the graph's ``dt``
metadata) and knows nothing about spikeear's network code, so it serves as the
independent reader that checks :mod:`training.export`.

Discrete-time reading of NIR's continuous-time equations, one step per ``dt``:

* Signals are piecewise constant over a step; an edge carries the source's
  output value of the step (a spike or a spike count ``c`` in a bin is the value
  ``c`` held for that bin).  A node's input is the sum over its incoming edges.
* Leaky nodes integrate their equation exactly over the step with the input held
  (zero-order hold, ``method="zoh"``, the default): for
  ``tau dv/dt = (v_leak - v) + r I``::

      v_t = d v_{t-1} + (1 - d) (v_leak + r I_t),   d = exp(-dt / tau)

  ``method="euler"`` uses the forward-Euler step ``d = 1 - dt / tau`` instead (the
  reading of snnTorch and Norse).  The integrator ``dv/dt = r I`` steps
  ``v_t = v_{t-1} + dt r I_t`` either way.
* Spiking nodes (LIF, IF, CubaLIF) emit ``z_t = [v_t > v_threshold]`` after the
  update and then set ``v_t = v_reset`` where ``z_t = 1``; Threshold emits
  ``[x > threshold]``.  CubaLI/CubaLIF update the synaptic current first and hold
  the new value over the membrane step.
* Edges are instantaneous except those that close a cycle: a depth-first walk
  from the Input nodes (edges in file order) marks its back edges, and a back
  edge delivers its source's output of the previous step (zero before the first
  step).  Everything else runs in topological order within the step.  Where every
  cycle passes through one node (as in spikeear's exports), the cut is the same
  for every walk order.
* Delay ``y(t) = x(t - tau)`` outputs its input of ``round(tau / dt)`` steps
  earlier (zero before the first step); per element delays may differ.

Supported nodes: Input, Output, Affine, Linear, Scale, Threshold, LI, LIF, I, IF,
CubaLI, CubaLIF, Delay.  Nested graphs, convolutions, pooling and Flatten are not.
"""

from __future__ import annotations

from collections.abc import Iterable

import nir
import numpy as np

METHODS = ("zoh", "euler")


class NIRSimulator:
    """Steps a flat NIR graph over time-binned input.

    ``dt`` (seconds) and ``method`` default to the graph's ``dt`` and
    ``discretization`` metadata entries."""

    def __init__(
        self,
        graph: nir.NIRGraph,
        dt: float | None = None,
        method: str | None = None,
        dtype: type = np.float64,
    ) -> None:
        metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
        if dt is None:
            if "dt" not in metadata:
                raise ValueError("the graph has no 'dt' metadata; pass dt (seconds)")
            dt = float(metadata["dt"])
        method = method or _as_str(metadata.get("discretization", "zoh"))
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
        self.graph, self.dt, self.method, self.dtype = graph, float(dt), method, dtype
        for name, node in graph.nodes.items():
            if type(node) not in _STEPPERS:
                raise NotImplementedError(f"node {name!r}: {type(node).__name__} is not supported")
        self.inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
        self.outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
        if not self.inputs:
            raise ValueError("the graph has no Input node")
        self.order, self.delayed = _schedule(graph.nodes, graph.edges, self.inputs)
        self.sources: dict[str, list[tuple[str, bool]]] = {k: [] for k in graph.nodes}
        for src, dst in graph.edges:
            self.sources[dst].append((src, (src, dst) in self.delayed))

    def run(
        self, x: np.ndarray | dict[str, np.ndarray], record: Iterable[str] = ()
    ) -> dict[str, np.ndarray]:
        """Simulate ``x`` of shape ``[batch, time, *input_shape]`` (a dict by Input
        name for several inputs).  Returns ``[batch, time, ...]`` arrays for every
        Output node and every node named in ``record``."""
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"the graph has inputs {self.inputs}; pass a dict")
            x = {self.inputs[0]: x}
        x = {k: np.asarray(v, dtype=self.dtype) for k, v in x.items()}
        batch, steps = next(iter(x.values())).shape[:2]
        nodes = self.graph.nodes
        shapes = {k: tuple(int(d) for d in _output_shape(n)) for k, n in nodes.items()}
        state = {k: {} for k in nodes}
        previous = {k: np.zeros((batch, *shapes[k]), self.dtype) for k in nodes}
        wanted = [*self.outputs, *record]
        traces: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        for t in range(steps):
            current: dict[str, np.ndarray] = {}
            for name in self.order:
                node = nodes[name]
                if isinstance(node, nir.Input):
                    current[name] = x[name][:, t]
                    continue
                total = None
                for src, delayed in self.sources[name]:
                    value = previous[src] if delayed else current[src]
                    total = value if total is None else total + value
                if total is None:
                    total = np.zeros((batch, *_input_shape(node)), self.dtype)
                current[name] = _STEPPERS[type(node)](self, node, total, state[name])
            previous = current
            for k in wanted:
                traces[k].append(current[k])
        return {k: np.stack(v, axis=1) for k, v in traces.items()}


def simulate(
    graph: nir.NIRGraph,
    x: np.ndarray | dict[str, np.ndarray],
    dt: float | None = None,
    method: str | None = None,
    record: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """One-call form of :class:`NIRSimulator` ``(graph, dt, method).run(x, record)``."""
    return NIRSimulator(graph, dt, method).run(x, record)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _output_shape(node: nir.NIRNode) -> np.ndarray:
    return np.atleast_1d(np.asarray(next(iter(node.output_type.values()))))


def _input_shape(node: nir.NIRNode) -> tuple[int, ...]:
    return tuple(int(d) for d in np.atleast_1d(np.asarray(next(iter(node.input_type.values())))))


def _schedule(
    nodes: dict, edges: list[tuple[str, str]], inputs: list[str]
) -> tuple[list[str], set[tuple[str, str]]]:
    """Evaluation order within a step and the set of delayed (cycle-closing) edges."""
    successors: dict[str, list[str]] = {k: [] for k in nodes}
    for src, dst in edges:
        successors[src].append(dst)
    mark: dict[str, int] = {}  # 1: on the walk's stack, 2: finished
    delayed: set[tuple[str, str]] = set()
    for root in [*inputs, *nodes]:
        if root in mark:
            continue
        mark[root] = 1
        stack = [(root, iter(successors[root]))]
        while stack:
            name, following = stack[-1]
            for nxt in following:
                if mark.get(nxt) == 1:
                    delayed.add((name, nxt))
                elif nxt not in mark:
                    mark[nxt] = 1
                    stack.append((nxt, iter(successors[nxt])))
                    break
            else:
                mark[name] = 2
                stack.pop()
    pending = {k: 0 for k in nodes}
    for src, dst in edges:
        if (src, dst) not in delayed:
            pending[dst] += 1
    ready = [k for k in nodes if pending[k] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for nxt in successors[name]:
            if (name, nxt) not in delayed:
                pending[nxt] -= 1
                if pending[nxt] == 0:
                    ready.append(nxt)
    assert len(order) == len(nodes), "cycle left after removing back edges"
    return order, delayed


# --- node dynamics -----------------------------------------------------------------


def _arr(sim: NIRSimulator, value) -> np.ndarray:
    return np.asarray(value, dtype=sim.dtype)


def _decay(sim: NIRSimulator, tau) -> np.ndarray:
    tau = _arr(sim, tau)
    return np.exp(-sim.dt / tau) if sim.method == "zoh" else 1.0 - sim.dt / tau


def _leak(sim: NIRSimulator, state: dict, key: str, tau, target: np.ndarray) -> np.ndarray:
    """One step of ``tau dv/dt = target - v`` kept in ``state[key]``."""
    d = _decay(sim, tau)
    v = state.get(key, np.zeros_like(target))
    v = d * v + (1.0 - d) * target
    state[key] = v
    return v


def _fire(sim: NIRSimulator, state: dict, v: np.ndarray, node) -> np.ndarray:
    z = v > _arr(sim, node.v_threshold)
    state["v"] = np.where(z, _arr(sim, node.v_reset), v)
    return z.astype(sim.dtype)


def _identity(sim, node, x, state):
    return x


def _affine(sim, node, x, state):
    return x @ _arr(sim, node.weight).T + _arr(sim, node.bias)


def _linear(sim, node, x, state):
    return x @ _arr(sim, node.weight).T


def _scale(sim, node, x, state):
    return x * _arr(sim, node.scale)


def _threshold(sim, node, x, state):
    return (x > _arr(sim, node.threshold)).astype(sim.dtype)


def _li(sim, node, x, state):
    return _leak(sim, state, "v", node.tau, _arr(sim, node.v_leak) + _arr(sim, node.r) * x)


def _lif(sim, node, x, state):
    v = _leak(sim, state, "v", node.tau, _arr(sim, node.v_leak) + _arr(sim, node.r) * x)
    return _fire(sim, state, v, node)


def _integrate(sim, node, x, state):
    v = state.get("v", np.zeros_like(x)) + sim.dt * _arr(sim, node.r) * x
    state["v"] = v
    return v


def _if(sim, node, x, state):
    return _fire(sim, state, _integrate(sim, node, x, state), node)


def _cuba_membrane(sim, node, x, state):
    current = _leak(sim, state, "i", node.tau_syn, _arr(sim, node.w_in) * x)
    target = _arr(sim, node.v_leak) + _arr(sim, node.r) * current
    return _leak(sim, state, "v", node.tau_mem, target)


def _cuba_lif(sim, node, x, state):
    return _fire(sim, state, _cuba_membrane(sim, node, x, state), node)


def _delay(sim, node, x, state):
    steps = np.rint(_arr(sim, node.delay) / sim.dt).astype(int)
    if "past" not in state:  # past[k]: the input k + 1 steps ago
        state["past"] = np.zeros((int(steps.max()) + 1, *x.shape), sim.dtype)
    past = np.concatenate([x[None], state["past"][:-1]])
    state["past"] = past
    picked = np.take_along_axis(past, np.broadcast_to(steps, x.shape)[None], axis=0)
    return picked[0]


_STEPPERS = {
    nir.Input: _identity,
    nir.Output: _identity,
    nir.Affine: _affine,
    nir.Linear: _linear,
    nir.Scale: _scale,
    nir.Threshold: _threshold,
    nir.LI: _li,
    nir.LIF: _lif,
    nir.I: _integrate,
    nir.IF: _if,
    nir.CubaLI: _cuba_membrane,
    nir.CubaLIF: _cuba_lif,
    nir.Delay: _delay,
}
