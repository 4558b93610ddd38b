"""A learner step over static input buffers, replayed as one CUDA graph (docs/architecture.md, "A learner that
keeps a GPU busy"), ROS-free.

Eager PyTorch launches every kernel from Python. At the reference size (4 x 512 actor, two 4 x 512 critics,
batch 256) the online update is hundreds of small kernels, and a fast GPU spends most of each update waiting for
the host to launch the next one. A step here reads its batch from tensors allocated once (`StaticStep.static`):
a host batch is copied into them, or a device replay gathers into them as part of the step. Because every
address is then fixed, the whole step — forwards, backwards, optimiser steps, Polyak and EMA updates, and the
sampling when a device replay does it — is recorded once and replayed with a single launch:

- warm-up: the first `warmup` steps run eagerly on a side stream (lazy state: Adam's moments, autograd's
  streams, cuBLAS handles); they are real steps on real batches;
- capture: the next step is recorded with `torch.cuda.graph` (recording runs nothing) and replayed at once, so
  the sequence of updates is the eager one, batch for batch;
- optimisers: `capturable=True` from the first graphed step on (their step counters live on the device);
- RNG: torch's default CUDA generator is registered with every graph; a replay reads the generator's current
  philox offset and advances it by what the graph draws, so each replay draws fresh noise, the same noise an
  eager step at that point would draw;
- on the CPU there is no graph: the same step runs eagerly on the static buffers (a log line says so).

The maths stay where they are (`online.OnlineLearner.update_on`, `objectives`); this module only decides how
they are launched.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields

import torch

from dfp_ros import contracts
from dfp_ros.learning.dataset import ChunkBatch
from dfp_ros.learning.model import DFPModel
from dfp_ros.learning.objectives import drift_bc_loss, mse_bc_loss

log = logging.getLogger(__name__)

STEP_MODES = contracts.LEARNER_STEP_MODES
WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's CUDA-graph recipe uses a few)

StepFn = Callable[[ChunkBatch], dict[str, torch.Tensor]]
BatchSource = Callable[[ChunkBatch], None]


def batch_tensors(batch: ChunkBatch) -> dict[str, torch.Tensor | None]:
    """A batch's tensors by name (`images.<camera>` for the camera dicts), None where a field is unset."""
    out: dict[str, torch.Tensor | None] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, dict):
            out.update({f"{f.name}.{k}": v for k, v in value.items()})
        else:
            out[f.name] = value
    return out


def empty_batch_like(batch: ChunkBatch, device: torch.device | str) -> ChunkBatch:
    """Buffers of `batch`'s shapes and dtypes on `device` (zeros; unset fields stay unset)."""
    def alloc(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.zeros(t.shape, dtype=t.dtype, device=device)

    buffers = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        buffers[f.name] = {k: alloc(v) for k, v in value.items()} if isinstance(value, dict) else alloc(value)
    return ChunkBatch(**buffers)


def copy_batch_(dst: ChunkBatch, src: ChunkBatch) -> None:
    """dst <- src, tensor by tensor; ValueError (nothing copied) when a shape, dtype or field differs, since a
    captured step keeps its buffers' addresses and therefore one batch layout."""
    want, have = batch_tensors(dst), batch_tensors(src)
    if want.keys() != have.keys():
        raise ValueError(f"the batch holds {sorted(have)}, the step's buffers {sorted(want)}")
    for name, d in want.items():
        s = have[name]
        if (d is None) != (s is None) or (d is not None and (d.shape != s.shape or d.dtype != s.dtype)):
            def describe(t: torch.Tensor | None) -> str:
                return "unset" if t is None else f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"
            raise ValueError(f"batch field {name} is {describe(s)}, the step's buffer is {describe(d)}: a "
                             "static-buffer step keeps one batch layout")
    for name, d in want.items():
        if d is not None:
            d.copy_(have[name], non_blocking=True)


def set_capturable(opt: torch.optim.Optimizer, on: bool) -> None:
    """Switch an optimiser (Adam and its kin) to or from `capturable`: with it, its step counters live on the
    parameters' device, so a CUDA graph can hold the whole optimiser step; without it they live on the host."""
    for group in opt.param_groups:
        if "capturable" not in group:
            continue  # an optimiser without step counters (SGD) is capturable as it is
        group["capturable"] = on
        for p in group["params"]:
            state = opt.state.get(p, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(dtype=torch.float32, device=p.device if on else "cpu")


class StaticStep:
    """`fn(static)` on preallocated input buffers, run eagerly or replayed from a CUDA graph.

    fn: one step on a batch (the caller's maths, optimiser steps included), returning 0-d tensors to log.
    static: its input buffers (`empty_batch_like`, or a device replay's `empty_batch`).
    source: fills `static` in place as part of the step (a device replay's `sample_into`); a step then takes no
    batch, and a graphed step replays the sampling too.
    optimizers: made capturable before the first graphed step.
    mode: "graphed" (CUDA graph on a CUDA device; on the CPU the same step eagerly) or "eager".
    """

    def __init__(self, fn: StepFn, static: ChunkBatch, mode: str = "graphed", *, source: BatchSource | None = None,
                 optimizers: Iterable[torch.optim.Optimizer] = (), warmup: int = WARMUP_STEPS, name: str = "step"):
        if mode not in STEP_MODES:
            raise ValueError(f"step mode must be one of {STEP_MODES}, got {mode!r}")
        self.fn, self.static, self.source, self.name = fn, static, source, name
        self.device = static.state.device
        self.requested_mode = mode
        if mode == "graphed" and self.device.type != "cuda":
            log.info("%s: no CUDA graphs on %s, running the static-buffer step eagerly", name, self.device)
            mode = "eager"
        self.mode = mode
        self.warmup = warmup
        self.steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._keys: list[str] = []
        self._out: torch.Tensor | None = None
        if mode == "graphed":
            for opt in optimizers:
                set_capturable(opt, True)
            self._side = torch.cuda.Stream(self.device)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, batch: ChunkBatch | None = None) -> dict[str, torch.Tensor]:
        """One step: on `batch` (copied into the buffers), or on what `source` draws. Returns detached 0-d tensors
        that stay valid after later steps."""
        if (batch is None) == (self.source is None):
            raise ValueError(f"{self.name}: pass a batch exactly when the step has no source of its own")
        if batch is not None:
            copy_batch_(self.static, batch)
        self.steps += 1
        if self.mode == "eager":
            return self._body()
        if self._graph is None and self.steps <= self.warmup:
            return self._warm_up()
        if self._graph is None:
            self._capture()
        assert self._graph is not None and self._out is not None
        self._graph.replay()
        # One copy out of the graph's output buffer, which the next replay overwrites.
        return dict(zip(self._keys, self._out.clone().unbind(), strict=True))

    def _body(self) -> dict[str, torch.Tensor]:
        if self.source is not None:
            self.source(self.static)
        return {k: v.detach() for k, v in self.fn(self.static).items()}

    def _warm_up(self) -> dict[str, torch.Tensor]:
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side), warnings.catch_warnings():
            # Capturable optimisers warn when they step outside a capture: here that is the plan.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            out = self._body()
        main.wait_stream(self._side)
        return out

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread of the process (a node's, an exporter's) may use CUDA meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            info = self._body()
            self._keys = list(info)
            self._out = torch.stack([v.reshape(()).float() for v in info.values()]) if info else \
                torch.zeros(0, device=self.device)
        self._graph = graph
        log.info("%s: captured as a CUDA graph after %d eager warm-up steps", self.name, self.warmup)


def bc_step(model: DFPModel, opt: torch.optim.Optimizer, loss: str, num_gen: int,
            temperatures: Sequence[float]) -> StepFn:
    """The offline behaviour-cloning step (drift or MSE objective, then the actor's optimiser step) as a function
    of the batch, for `StaticStep`."""
    if loss not in ("drift", "mse"):
        raise ValueError(f"loss must be 'drift' or 'mse', got {loss!r}")

    def step(batch: ChunkBatch) -> dict[str, torch.Tensor]:
        if loss == "drift":
            value, info = drift_bc_loss(model, batch, num_gen, temperatures)
        else:
            value, info = mse_bc_loss(model, batch, num_gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return info

    return step
