"""Comparing training variants over seeds: paired differences to a baseline with a t interval.

Each variant is trained with the same seeds as the baseline, so seed s of a variant and seed s of the
baseline share data order and initialisation noise; their difference removes that shared noise. Over n
seeds the mean difference gets a two-sided ``confidence`` interval from Student's t distribution with n - 1
degrees of freedom: mean ± t * sd / sqrt(n). A difference whose interval covers zero is *within noise*:
these seeds cannot tell the variant from the baseline.
"""
import math
import statistics
from typing import Dict, Mapping, NamedTuple, Sequence

__all__ = ["Interval", "Comparison", "student_t_quantile", "mean_interval", "paired_differences",
           "compare_to_baseline"]


class Interval(NamedTuple):
    mean: float
    low: float
    high: float
    n: int

    @property
    def covers_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


class Comparison(NamedTuple):
    differences: Dict[int, float]  # seed -> variant - baseline
    interval: Interval

    @property
    def within_noise(self) -> bool:
        return self.interval.covers_zero


def _student_t_cdf(t: float, df: int, steps: int = 4000) -> float:
    """P(T <= t) for t >= 0: 1/2 plus the density integrated from 0 to t (Simpson's rule; the density is
    smooth and bounded, so this is accurate to ~1e-12 for the quantiles needed here)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    h = t / steps
    total = density(0.0) + density(t)
    total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (0.5 < p < 1), by bisection on its CDF."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while _student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its two-sided t interval; with one value the interval is unbounded."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = student_t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_differences(baseline: Mapping[int, float], variant: Mapping[int, float]) -> Dict[int, float]:
    """seed -> variant - baseline, for the seeds both were run with (they must be the same seeds)."""
    if set(baseline) != set(variant):
        raise ValueError(f"paired comparison needs the same seeds: baseline {sorted(baseline)}, "
                         f"variant {sorted(variant)}")
    return {seed: variant[seed] - baseline[seed] for seed in sorted(baseline)}


def compare_to_baseline(results: Mapping[str, Mapping[int, float]], baseline: str,
                        confidence: float = 0.95) -> Dict[str, Comparison]:
    """results: variant -> seed -> metric. Returns every other variant's paired comparison to ``baseline``."""
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the variants {sorted(results)}")
    out = {}
    for name, by_seed in results.items():
        if name == baseline:
            continue
        differences = paired_differences(results[baseline], by_seed)
        out[name] = Comparison(differences, mean_interval(list(differences.values()), confidence))
    return out
