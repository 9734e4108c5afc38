"""Timing: warm-up, then the median of repeated runs, with CUDA events on a GPU.

Every figure of the GPU benchmark script (``benchmarks/run_gpu.py``) and of ``act-fast bench``
goes through :class:`Timer`:

- ``Timer.run(fn)``: ``warmup`` calls, a synchronisation, then ``repeats`` timed runs, each of
  ``inner`` back-to-back calls between two CUDA events (host launch overhead included, as a
  caller sees it). ``inner`` is picked so that one run lasts about ``min_run_ms`` (small kernels
  are otherwise dominated by event resolution).
- ``Timer.graph(fn)``: the same ``inner`` calls captured once in a CUDA graph and replayed:
  device time without Python/launch overhead (what a CUDA-graphed decode step pays). CUDA only.

Off CUDA the same code runs with ``time.perf_counter`` around each run.

Comparisons on a shared machine (``act-fast bench``, ``benchmarks/``) go through
:func:`interleaved_rounds` and :func:`compare`:

- :func:`interleaved_rounds`: every configuration runs once per round, the order rotated from
  round to round, so a slow spell of the machine hits all of them alike; each configuration
  warms up on every entry (its caller's ``run`` does it).
- :func:`spread`: the relative interquartile range of a configuration's samples (the range when
  fewer than four).
- :func:`compare`: the ratio of two medians, and whether it is *resolved*: the difference
  ``|ratio - 1|`` exceeds the larger spread of the two. An unresolved ratio is no finding and
  is printed as "within noise".
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Timing:
    """Milliseconds per call: median, min, max over ``repeats`` runs of ``inner`` calls."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    inner: int
    method: str  # "cuda_events" | "cuda_graph" | "perf_counter" | "thread_time"
    times_ms: list[float] = field(default_factory=list)

    @property
    def spread(self) -> float:
        """Relative spread of ``times_ms`` (:func:`spread`)."""
        return spread(self.times_ms)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["times_ms"] = [round(t, 6) for t in self.times_ms]
        d["spread"] = None if math.isinf(self.spread) else round(self.spread, 6)
        return d


def spread(values: Sequence[float]) -> float:
    """Interquartile range over the median of ``values`` (max − min over the median when fewer
    than four); ``inf`` for fewer than two values or a median ≤ 0 (no spread is known)."""
    if len(values) < 2:
        return math.inf
    med = statistics.median(values)
    if med <= 0:
        return math.inf
    if len(values) < 4:
        return (max(values) - min(values)) / med
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / med


def timing_of(times_ms: Sequence[float], method: str = "perf_counter", inner: int = 1) -> Timing:
    """A :class:`Timing` of per-call samples (ms)."""
    times = list(times_ms)
    return Timing(statistics.median(times), min(times), max(times), len(times), inner, method, times)


@dataclass(frozen=True)
class Comparison:
    """``other`` against ``base``: ``ratio`` = median(other) / median(base) of the same figure
    (times, or rates), ``noise`` = the larger :func:`spread` of the two sample sets."""

    ratio: float
    noise: float

    @property
    def resolved(self) -> bool:
        """Whether the difference exceeds the noise: only then is the ratio a finding."""
        return math.isfinite(self.ratio) and abs(self.ratio - 1.0) > self.noise

    def describe(self, digits: int = 3) -> str:
        """``"0.953"`` when resolved, else ``"within noise (±4.1%)"`` (``"no spread (1 run)"``
        when a side has a single sample)."""
        if self.resolved:
            return f"{self.ratio:.{digits}f}"
        if math.isinf(self.noise):
            return "no spread (1 run)"
        return f"within noise (±{self.noise:.1%})"


def compare(base: Sequence[float], other: Sequence[float]) -> Comparison:
    """Ratio of the medians of ``other`` over ``base`` and the noise it must exceed."""
    return Comparison(statistics.median(other) / statistics.median(base), max(spread(base), spread(other)))


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` rotated by ``round_index``: round r starts with configuration r mod n."""
    k = round_index % len(names) if names else 0
    return [*names[k:], *names[:k]]


def interleaved_rounds(names: Sequence[str], rounds: int,
                       run: Callable[[str], Mapping[str, float]]) -> dict[str, dict[str, list[float]]]:
    """``run(name)`` once per configuration per round, the order rotated each round
    (:func:`round_order`). ``run`` sets its configuration up, warms it up, and returns named
    figures (e.g. ``{"prefill": ms, "decode": ms}``). Returns ``{name: {figure: [per round]}}``."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for r in range(max(1, rounds)):
        for name in round_order(names, r):
            for figure, value in run(name).items():
                samples[name].setdefault(figure, []).append(value)
    return samples


def interleave(fns: Mapping[str, Callable[[], object]], rounds: int, *, warmup: int = 1, inner: int = 1,
               device: str = "cpu", thread_time: bool = False) -> dict[str, Timing]:
    """Per-call times of each function, interleaved in rounds (:func:`interleaved_rounds`): each
    is called ``warmup`` times untimed before all rounds, then ``inner`` times per round.
    ``thread_time`` (CPU only): this thread's CPU time instead of wall-clock time (on a shared
    machine it leaves out the time the thread waits while other processes run)."""
    timer = Timer(device, warmup=0, repeats=1, thread_time=thread_time)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)

    def run(name: str) -> dict[str, float]:
        fn = fns[name]

        def body() -> None:
            for _ in range(inner):
                fn()

        return {"ms": timer._elapsed_ms(body) / inner}

    samples = interleaved_rounds(list(fns), rounds, run)
    return {name: timing_of(s["ms"], timer._method(), inner) for name, s in samples.items()}


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str, warmup: int = 3, repeats: int = 20, min_run_ms: float = 2.0, max_inner: int = 200,
                 thread_time: bool = False):
        """``thread_time`` (off CUDA): this thread's CPU time instead of wall-clock time (on a shared
        machine it leaves out the time the thread waits while other processes run; with one
        intra-op thread it is all of the work)."""
        self.device = torch.device(device).type  # "cuda:1" times like "cuda" (events on the current device)
        self.thread_time = thread_time and self.device != "cuda"
        self.warmup = max(0, warmup)
        self.repeats = max(1, repeats)
        self.min_run_ms = min_run_ms
        self.max_inner = max_inner

    # ------------------------------------------------------------------ helpers
    def _elapsed_ms(self, body: Callable[[], None]) -> float:
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            body()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        clock = time.thread_time if self.thread_time else time.perf_counter
        t0 = clock()
        body()
        return (clock() - t0) * 1e3

    def _method(self) -> str:
        return "cuda_events" if self.device == "cuda" else ("thread_time" if self.thread_time else "perf_counter")

    def _pick_inner(self, fn: Callable[[], object], inner: int | None) -> int:
        if inner is not None:
            return max(1, inner)
        one = self._elapsed_ms(fn)
        if one <= 0:
            return self.max_inner
        return int(min(self.max_inner, max(1, math.ceil(self.min_run_ms / one))))

    def _summary(self, times: list[float], inner: int, method: str) -> Timing:
        per_call = [t / inner for t in times]
        return Timing(statistics.median(per_call), min(per_call), max(per_call), len(per_call), inner, method, per_call)

    # ------------------------------------------------------------------ public
    def run(self, fn: Callable[[], object], *, inner: int | None = None, repeats: int | None = None,
            warmup: int | None = None, between: Callable[[], object] | None = None) -> Timing:
        """Median time of one ``fn()`` call. ``between`` runs untimed before every timed run
        (e.g. resetting a decode cache position)."""
        for _ in range(self.warmup if warmup is None else warmup):
            if between is not None:
                between()
            fn()
        synchronize(self.device)
        if between is not None:
            between()
        n_inner = self._pick_inner(fn, inner)
        times = []

        def body() -> None:
            for _ in range(n_inner):
                fn()

        for _ in range(self.repeats if repeats is None else repeats):
            if between is not None:
                between()
                synchronize(self.device)
            times.append(self._elapsed_ms(body))
        return self._summary(times, n_inner, self._method())

    def graph(self, fn: Callable[[], object], *, inner: int | None = None) -> Timing | None:
        """Device time of ``fn()`` replayed from a CUDA graph; None off CUDA or if capture fails."""
        if self.device != "cuda":
            return None
        for _ in range(max(1, self.warmup)):
            fn()
        torch.cuda.synchronize()
        n_inner = self._pick_inner(fn, inner)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # side-stream warm-up, as torch.cuda.graphs recommends
                fn()
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n_inner):
                    fn()
        except Exception:  # noqa: BLE001 - a function that cannot be captured gets no graph figure
            torch.cuda.synchronize()
            return None
        g.replay()
        torch.cuda.synchronize()
        times = [self._elapsed_ms(g.replay) for _ in range(self.repeats)]
        del g
        return self._summary(times, n_inner, "cuda_graph")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gbps(bytes_moved: int, ms: float) -> float:
    return bytes_moved / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
