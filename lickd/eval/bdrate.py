"""Bjøntegaard delta rate and delta PSNR (VCEG-M33, with the later piecewise-cubic variant).

Both curves are taken as distortion D (PSNR in dB, or MS-SSIM in dB) against log-rate.
BD-rate interpolates log R as a function of D over the overlapping D range and reports the mean
relative rate change ``exp(mean(log R_test - log R_anchor)) - 1`` (negative = the test codec
needs fewer bits). BD-PSNR interpolates D as a function of log R over the overlapping rate range
and reports the mean D difference. Two interpolations are offered:

* ``pchip`` (default): monotone piecewise-cubic Hermite through every point (Fritsch-Carlson
  slopes), integrated exactly; robust to noisy or non-convex curves (the JCTVC/JVET common-test
  practice since 2016).
* ``cubic``: the original least-squares cubic polynomial fit (what most papers before ~2017 used),
  for comparison with published numbers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

INTERPOLATIONS = ("pchip", "cubic")


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone slopes at the knots (x strictly increasing)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = len(x)
    d = np.zeros(n)
    if n == 2:
        return np.full(n, delta[0])
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] <= 0:
            d[k] = 0.0
        else:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def end_slope(h0, h1, m0, m1):
        s = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(s) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(s) > abs(3 * m0):
            return 3 * m0
        return s

    d[0] = end_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (inside [x0, xn]) of the pchip interpolant of (x, y)."""
    d = _pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        # Hermite cubic in t = (s - x_k) / h, as a polynomial c0 + c1 t + c2 t^2 + c3 t^3.
        y0, y1, m0, m1 = y[k], y[k + 1], d[k] * h, d[k + 1] * h
        c = np.array([y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1])
        antiderivative = np.polynomial.polynomial.polyint(c)
        ta, tb = (a - x[k]) / h, (b - x[k]) / h
        total += h * (np.polynomial.polynomial.polyval(tb, antiderivative)
                      - np.polynomial.polynomial.polyval(ta, antiderivative))
    return float(total)


def _cubic_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    p = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(p, hi) - np.polyval(p, lo))


def _prepare(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("each curve needs as many x as y values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("each curve needs at least 2 points with distinct values on the integration axis")
    return x, y


def _mean_difference(xa, ya, xb, yb, interpolation: str, min_points: int) -> float:
    """Mean of (f_b - f_a) over the overlap of the x ranges."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}")
    xa, ya = _prepare(xa, ya)
    xb, yb = _prepare(xb, yb)
    if interpolation == "cubic" and min(len(xa), len(xb)) < 4:
        raise ValueError("the cubic fit needs at least 4 points per curve")
    if min(len(xa), len(xb)) < min_points:
        raise ValueError(f"each curve needs at least {min_points} points")
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if hi <= lo:
        raise ValueError("the two curves do not overlap")
    integral = _pchip_integral if interpolation == "pchip" else _cubic_integral
    return (integral(xb, yb, lo, hi) - integral(xa, ya, lo, hi)) / (hi - lo)


def bd_rate(rate_anchor, dist_anchor, rate_test, dist_test, interpolation: str = "pchip") -> float:
    """Average rate difference of ``test`` against ``anchor`` at equal quality, in percent."""
    la, lt = np.log(np.asarray(rate_anchor, float)), np.log(np.asarray(rate_test, float))
    diff = _mean_difference(dist_anchor, la, dist_test, lt, interpolation, 2)
    return (math.exp(diff) - 1) * 100


def bd_psnr(rate_anchor, dist_anchor, rate_test, dist_test, interpolation: str = "pchip") -> float:
    """Average quality difference (dB) of ``test`` against ``anchor`` at equal rate."""
    la, lt = np.log(np.asarray(rate_anchor, float)), np.log(np.asarray(rate_test, float))
    return _mean_difference(la, dist_anchor, lt, dist_test, interpolation, 2)
