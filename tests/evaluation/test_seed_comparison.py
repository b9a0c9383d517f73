"""Paired seed comparisons: Student's t quantiles, intervals, pairing, 'within noise'."""
import math
import statistics

import pytest

from pir_clip.evaluation.seed_comparison import (
    compare_to_baseline, mean_interval, paired_differences, student_t_quantile,
)

# Two-sided 95% critical values t_{0.975, df} from standard tables.
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 29: 2.0452, 100: 1.9840}


@pytest.mark.parametrize("df,expected", sorted(T_TABLE.items()))
def test_student_t_quantiles_match_the_table(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=6e-5)


def test_student_t_quantile_other_levels_and_errors():
    assert student_t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)  # one-sided 95%, df 4
    assert student_t_quantile(0.995, 10) == pytest.approx(3.1693, abs=1e-4)
    for p, df in ((0.5, 3), (1.0, 3), (0.975, 0)):
        with pytest.raises(ValueError):
            student_t_quantile(p, df)


def test_mean_interval_by_hand():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5), n 5
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    interval = mean_interval(values)
    assert interval.mean == 3.0 and interval.n == 5
    assert interval.low == pytest.approx(3 - half, abs=1e-4) and interval.high == pytest.approx(3 + half, abs=1e-4)
    assert not interval.covers_zero
    assert mean_interval([-1.0, 0.5, 1.5]).covers_zero
    one = mean_interval([0.7])
    assert one.mean == 0.7 and math.isinf(one.low) and one.covers_zero  # one seed says nothing about noise


def test_pairing_is_by_seed_not_by_order():
    baseline = {0: 50.0, 1: 52.0, 2: 48.0}
    variant = {2: 49.0, 0: 51.5, 1: 53.0}
    assert paired_differences(baseline, variant) == {0: 1.5, 1: 1.0, 2: 1.0}
    with pytest.raises(ValueError, match="same seeds"):
        paired_differences(baseline, {0: 1.0, 1: 2.0})


def test_compare_to_baseline_flags_noise():
    results = {
        "clip": {0: 56.0, 1: 54.0, 2: 58.0, 3: 55.0, 4: 57.0},
        # + about 2 on every seed: the paired differences agree, far from zero, although the spreads overlap
        "clip+vir": {0: 58.1, 1: 55.9, 2: 60.0, 3: 57.2, 4: 58.8},
        # differences of both signs: the interval covers zero
        "clip+lca": {0: 57.0, 1: 53.0, 2: 58.5, 3: 54.0, 4: 57.5},
    }
    comparisons = compare_to_baseline(results, "clip")
    assert set(comparisons) == {"clip+vir", "clip+lca"}
    vir = comparisons["clip+vir"]
    assert vir.differences == pytest.approx({0: 2.1, 1: 1.9, 2: 2.0, 3: 2.2, 4: 1.8})
    assert vir.interval.mean == pytest.approx(2.0) and not vir.within_noise
    assert vir.interval.low > 1.7 and vir.interval.high < 2.3
    lca = comparisons["clip+lca"]
    assert lca.within_noise
    assert lca.interval.mean == pytest.approx(statistics.fmean([1.0, -1.0, 0.5, -1.0, 0.5]))
    with pytest.raises(ValueError, match="baseline"):
        compare_to_baseline(results, "nope")
