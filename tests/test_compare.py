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
