"""Timing: warm up, repeat, take the median and the spread.

A :class:`Latency` always carries its spread (p10/p90) and the number of
runs it came from, so a noisy number can be told from a clean one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Latency:
    """A measured latency in milliseconds: median and the 10th/90th percentiles."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: 0.05 means the middle 80% of runs lie within 5%."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def scaled(self, factor: float) -> Latency:
        """Every time multiplied by ``factor`` (one of ``k`` copies timed together: ``1 / k``)."""
        return Latency(self.median_ms * factor, self.p10_ms * factor, self.p90_ms * factor, self.repeats)

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Latency:
        xs = sorted(samples_ms)
        q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
        median = statistics.median(xs)
        # interpolation between equal samples (profiler kernel times come in whole µs) can land
        # a rounding error beyond the median: p10 <= median <= p90 always
        return cls(median, min(q[0], median), max(q[-1], median), len(xs))


# A set of whole-model measurements whose median spread (p10-p90 / median) is above this
# was taken on a machine too noisy to score a LUT within ±10%: over 53 fidelity runs,
# every run at 13.4% or less put 84-100% of its configurations within ±10% (but for stale
# calibrations, 96-100% refitted), the three at 13.9-14.7% put 38-66% there
# (benchmarks/results/noise_vs_fidelity.json; BENCHMARKS.md, design decisions).
NOISY_SPREAD_PCT = 13.5
# A calibration whose median residual is above this was measured on a noisy machine. Quiet
# runs reach 5.8%, so the points' spread above is the stronger of the two flags.
NOISY_RESIDUAL_PCT = 5.0


def median_spread_pct(latencies: list[Latency]) -> float:
    """The median over ``latencies`` of each one's :attr:`Latency.spread`, in percent; NaN for none.

    >>> round(median_spread_pct([Latency(1.0, 0.95, 1.05, 50), Latency(2.0, 1.6, 2.4, 50),
    ...                          Latency(1.0, 1.0, 1.1, 50)]), 6)
    10.0
    """
    spreads = [lat.spread * 100 for lat in latencies if lat.median_ms > 0]
    return float(statistics.median(spreads)) if spreads else float("nan")


def points_spread_pct(points: list[dict[str, float]]) -> float:
    """The median p10-p90 spread of measured points (calibration or fidelity points:
    ``measured_ms``, ``p10_ms``, ``p90_ms``) in percent of their medians; NaN for
    points stored without their percentiles (older calibrations)."""
    if not points or any("p10_ms" not in p for p in points):
        return float("nan")
    return median_spread_pct([Latency(p["measured_ms"], p["p10_ms"], p["p90_ms"], 0) for p in points])


def noisy_calibration(stored: dict[str, Any]) -> tuple[float, float] | None:
    """(median residual %, points' spread %) of a stored calibration measured on a noisy
    machine (residual above ``NOISY_RESIDUAL_PCT`` or spread above ``NOISY_SPREAD_PCT``),
    else None. NaN (a shard's placeholder residual; points without percentiles) is
    never noisy. Torch-free, so ``lut show`` and the profile's warning share it."""
    residual_pct, spread_pct = stored["residual_pct"], points_spread_pct(stored.get("points", []))
    if residual_pct > NOISY_RESIDUAL_PCT or spread_pct > NOISY_SPREAD_PCT:
        return residual_pct, spread_pct
    return None


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 10            # untimed runs first (allocations, caches, thread pools)
    repeats: int = 50           # timed runs, at least
    min_time_s: float = 0.05    # and at least this long in total
    max_repeats: int = 2000     # never more than this many timed runs
    max_spread: float = 0.25    # re-measure once, with 3x the runs, if (p90-p10)/median exceeds this


def time_callable(fn: Callable[[], object], config: TimingConfig = TimingConfig()) -> Latency:
    """Time ``fn()`` on the wall clock (synchronous work only: CPU runtimes).

    Devices with asynchronous queues time themselves with their own events.
    """
    for _ in range(config.warmup):
        fn()
    latency = _sample(fn, config.repeats, config)
    if latency.spread > config.max_spread:
        latency = _sample(fn, config.repeats * 3, config)
    return latency


def _sample(fn: Callable[[], object], repeats: int, config: TimingConfig) -> Latency:
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < config.max_repeats and (
        len(samples) < repeats or time.perf_counter() - start < config.min_time_s
    ):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return Latency.from_samples(samples)


@dataclass
class SpeedGuard:
    """Times a measurement only while the machine runs at its usual speed.

    ``probe_ms()`` times a small fixed workload (with the measurement's
    thread count) and returns its median in ms. The machine's usual speed is
    a low percentile (``percentile``, 20%) of every probe so far, learnt first
    from ``warmup_probes`` probes 0.05 s apart (before a measurement trusts
    it): the speed the machine reaches at least a fifth of the time. A
    lower percentile lands in a fast state some VMs hold for only 13-15% of
    their probes, and the guard then waits before most measurements; a
    recent window takes a slow state of minutes for the usual speed
    (``benchmarks/results/lut_fidelity_emr_p20.json``,
    ``benchmarks/results/lut_fidelity_window_policy.json``). On a noisy VM a
    measurement that starts or ends in a slow state is repeated:
    :meth:`measure` probes before (and waits, up to ``max_wait_s``, for the
    usual speed) and after, and keeps a measurement whose probes were both
    within ``tolerance`` of the usual speed, else the fastest of
    ``attempts``. ``slow`` counts the probes that found the machine slow and
    ``trace`` keeps every probe (seconds since the first, ms), so a user sees
    what happened."""

    probe_ms: Callable[[], float]
    tolerance: float = 0.3
    max_wait_s: float = 10.0
    attempts: int = 3
    warmup_probes: int = 25
    percentile: float = 0.2
    sleep: Callable[[float], None] = time.sleep
    slow: int = 0
    trace: list[tuple[float, float]] = field(default_factory=list)
    _t0: float | None = None

    @property
    def usual_ms(self) -> float:
        """The usual speed: the ``percentile`` of every probe so far (inf before any)."""
        probes = sorted(ms for _, ms in self.trace)
        return probes[int(self.percentile * (len(probes) - 1))] if probes else float("inf")

    def _probe(self) -> float:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        ms = self.probe_ms()
        self.trace.append((round(now - self._t0, 3), ms))
        return ms

    def _fast(self) -> bool:
        if not self.trace:  # learn the usual speed before a measurement trusts it
            for _ in range(self.warmup_probes):
                self._probe()
                self.sleep(0.05)
        ms = self._probe()
        fast = ms <= self.usual_ms * (1 + self.tolerance)
        self.slow += not fast
        return fast

    def wait(self) -> bool:
        """Probe until the machine is at its usual speed or ``max_wait_s`` has passed; whether it is."""
        waited = 0.0
        while not self._fast():
            if waited >= self.max_wait_s:
                return False
            self.sleep(0.5)
            waited += 0.5
        return True

    def measure(self, measure: Callable[[], Latency]) -> Latency:
        """``measure()`` between two probes that found the usual speed (see the class)."""
        best: Latency | None = None
        for _ in range(self.attempts):
            before = self.wait()
            latency = measure()
            after = self._fast()
            if best is None or latency.median_ms < best.median_ms:
                best = latency
            if before and after:
                return latency
        assert best is not None
        return best


def fastest_over_passes(measure: Callable[[int], Latency], count: int, passes: int = 2,
                        on_each: Callable[[], object] | None = None, agree: float | None = None,
                        max_passes: int | None = None, every: list[list[float]] | None = None) -> list[Latency]:
    """``measure(i)`` for i in range(count), over ``passes`` interleaved passes, keeping
    each item's faster median: interference only ever slows a run down, and a
    slow spell of the machine lands on different items in each pass.

    Every pass runs in the same order, so each item's measurements lie a whole
    pass apart: passes in alternating order put the last item's measurements
    back to back, where one slow spell takes both.

    With ``agree``, an item whose two fastest medians still differ by more than
    that fraction is measured in further passes (of the disagreeing items only)
    until they agree or it has had ``max_passes``: on a VM that switches
    between a fast and a slow speed every few seconds (6.5 and 10.5 ms for
    the same model), two passes that disagree say that one of
    them, at least, was slow.

    ``every``, when given, is filled with each item's median of every pass, in
    pass order (one list per item)."""
    medians: list[list[float]] = [[] for _ in range(count)]
    if every is not None:
        every[:] = medians
    best: list[Latency | None] = [None] * count
    todo = list(range(count))
    p = 0
    while todo:
        for i in todo:
            lat = measure(i)
            medians[i].append(lat.median_ms)
            current = best[i]
            if current is None or lat.median_ms < current.median_ms:
                best[i] = lat
            if on_each is not None:
                on_each()
        p += 1
        if p < passes:
            continue
        if agree is None or p >= (max_passes or passes):
            break
        todo = [i for i in todo if _spread_of_two_fastest(medians[i]) > agree]
    return best  # type: ignore[return-value]


def _spread_of_two_fastest(medians: list[float]) -> float:
    """(second fastest − fastest) / fastest; 0 with fewer than two."""
    if len(medians) < 2:
        return 0.0
    a, b = sorted(medians)[:2]
    return (b - a) / a if a > 0 else 0.0


def time_cuda(fn: Callable[[], object], config: TimingConfig = TimingConfig()) -> Latency:
    """Time ``fn()`` on the current CUDA stream with CUDA events, one event pair per run,
    after warm-up and a device synchronisation. ``fn`` only enqueues work."""
    import torch

    for _ in range(config.warmup):
        fn()
    torch.cuda.synchronize()

    def sample(repeats: int) -> Latency:
        pairs = []
        start = time.perf_counter()
        while len(pairs) < config.max_repeats and (len(pairs) < repeats or time.perf_counter() - start < config.min_time_s):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            pairs.append((begin, end))
            if len(pairs) % 64 == 0:  # keep the queue short so wall-clock limits mean something
                end.synchronize()
        torch.cuda.synchronize()
        return Latency.from_samples([b.elapsed_time(e) for b, e in pairs])  # elapsed_time is in ms

    latency = sample(config.repeats)
    if latency.spread > config.max_spread:
        latency = sample(config.repeats * 3)
    return latency
