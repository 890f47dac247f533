import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcheck import compare

finite = st.floats(
    min_value=-1e30, max_value=1e30, allow_nan=False, allow_subnormal=False
)
positive = st.floats(min_value=1e-30, max_value=1e30)


def test_relative_error_values():
    rel = compare.relative_error(
        [1.0, 0.0, 2.0, -1.0, 0.0], [1.0 + 1e-8, 0.0, -2.0, -2.0, 1e-300]
    )
    np.testing.assert_allclose(rel, [1e-8, 0.0, 2.0, 0.5, 1.0], rtol=1e-7)


def test_both_zero_is_zero_and_nan_is_inf():
    assert compare.relative_error(0.0, 0.0) == 0.0
    assert compare.relative_error(-0.0, 0.0) == 0.0
    assert compare.relative_error(np.nan, 1.0) == np.inf
    assert compare.relative_error(1.0, np.inf) == np.inf


@given(finite, finite)
def test_symmetric_and_bounded(a, n):
    r1 = float(compare.relative_error(a, n))
    r2 = float(compare.relative_error(n, a))
    assert r1 == r2
    assert 0.0 <= r1 <= 2.0


@given(finite, finite, positive)
def test_scale_invariant(a, n, c):
    r = float(compare.relative_error(a, n))
    rc = float(compare.relative_error(a * c, n * c))
    if all(math.isfinite(v) and v != 0 for v in (a * c, n * c)):
        assert rc == pytest.approx(r, rel=1e-9, abs=1e-12)


@given(finite, finite)
def test_zero_iff_equal(a, n):
    assert (float(compare.relative_error(a, n)) == 0.0) == (a == n)


@given(
    finite.filter(lambda v: abs(v) > 1e-200), st.floats(min_value=1e-12, max_value=0.5)
)
def test_known_relative_perturbation(a, eps):
    # n = a (1 + eps): rel = eps / (1 + eps)
    r = float(compare.relative_error(a, a * (1 + eps)))
    assert r == pytest.approx(eps / (1 + eps), rel=1e-6)


def test_bands_follow_the_notes():
    rel = [0.5, 1e-2, 0.9e-2, 1e-3, 1e-4, 1e-5, 1e-7, 1e-8, 0.0, np.inf]
    names = [compare.BAND_NAMES[i] for i in compare.band_index(rel)]
    assert names == [
        "probably_wrong",
        "uncomfortable",  # exactly 1e-2 is not above the edge
        "uncomfortable",
        "uncomfortable",
        "acceptable_with_kinks",
        "acceptable_with_kinks",
        "good",
        "good",
        "good",
        "probably_wrong",
    ]
    assert compare.band_counts(rel) == {
        "probably_wrong": 2,
        "uncomfortable": 3,
        "acceptable_with_kinks": 2,
        "good": 3,
    }


def test_smooth_bar_fails_1e4_errors():
    bar = compare.default_bar()
    assert bar.rtol == 1e-7
    # A gradient off by a factor (1 + 1e-4) on coordinates of size 1 is wrong,
    # even with a generous round-off allowance of 1e-9.
    codes = compare.verdicts([1.0, -2.0], [1.0001, -2.0002], 1e-9, bar.rtol)
    assert codes.tolist() == [compare.WRONG, compare.WRONG]


def test_verdicts_ok_wrong_untestable():
    codes = compare.verdicts(
        analytic=[1.0, 1.0, 1e-12, 0.0, np.nan],
        numeric=[1.0 + 1e-9, 1.1, 3e-12, 0.0, 1.0],
        noise_abs=1e-10,
        rtol=1e-7,
    )
    assert codes.tolist() == [
        compare.OK,
        compare.WRONG,
        compare.UNTESTABLE,
        compare.OK,
        compare.WRONG,
    ]


@pytest.mark.parametrize("rtol", [0.0, -1.0, 1.0, 2.0])
def test_bad_rtol(rtol):
    with pytest.raises(ValueError, match="`rtol` must lie in"):
        compare.default_bar(rtol)


def test_bad_noise_factor():
    with pytest.raises(ValueError, match="`noise_factor`"):
        compare.default_bar(noise_factor=-1.0)


# --- bars chosen from the function, and subgradients at kinks -------------------


def test_choose_bar_smooth_kinked_low_precision_and_override():
    smooth = compare.choose_bar(depth=3)
    assert smooth.rtol == compare.SMOOTH_RTOL
    assert smooth.reason.startswith("smooth:") and "depth 3" in smooth.reason
    kinked = compare.choose_bar(kinks="max in relu x2")
    assert kinked.rtol == compare.KINK_RTOL == 1e-4
    assert kinked.reason.startswith("kinked:") and "max in relu x2" in kinked.reason
    eps32 = float(np.finfo(np.float32).eps)
    low = compare.choose_bar(kinks="max", low_precision=("float32", eps32))
    assert low.rtol == pytest.approx(10 * math.sqrt(eps32))
    assert low.reason.startswith("low precision: f computes in float32")
    given = compare.choose_bar(3e-3, kinks="abs", low_precision=("float32", eps32))
    assert given.rtol == 3e-3
    assert given.reason == (
        "rtol=0.003 given by the caller (f has kinks: abs; f computes in float32 inside)"
    )
    assert compare.choose_bar(noise_factor=8.0).noise_factor == 8.0
    with pytest.raises(ValueError, match="`rtol` must lie in"):
        compare.choose_bar(2.0, kinks="max")


def test_low_precision_rtol_is_bounded():
    assert compare.low_precision_rtol(1e-30) == compare.SMOOTH_RTOL
    assert compare.low_precision_rtol(float(np.finfo(np.float16).eps)) == (
        compare.LOW_PRECISION_MAX_RTOL
    )


def test_subgradient_verdicts():
    K, W, U = compare.KINK, compare.WRONG, compare.UNTESTABLE
    assert compare.VERDICT_NAMES[K] == "kink"
    codes, dist = compare.subgradient_verdicts(
        analytic=[0.0, 1.0, 0.5, -0.1, 2.0, np.nan, 0.3, 0.0],
        left=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.nan, np.nan],
        right=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3, np.nan],
        left_noise=1e-12,
        right_noise=1e-12,
        rtol=1e-4,
    )
    # inside [left, right] (ends included) is a subgradient; outside is wrong;
    # NaN analytic is wrong; one side only: matching it confirms; none: undecided.
    assert codes.tolist() == [K, K, K, W, W, W, K, U]
    np.testing.assert_allclose(dist[:5], [0.0, 0.0, 0.0, 0.1, 0.5])
    assert np.isnan(dist[7])
    # Within the bar of an end is still a subgradient (truncation of the ends).
    codes, _ = compare.subgradient_verdicts([1.00005], [0.0], [1.0], 0.0, 0.0, 1e-4)
    assert codes.tolist() == [K]
