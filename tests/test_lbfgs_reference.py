"""The batched optimisers of analysis/ against scipy, the reference they replace on the hot path:
analysis/lbfgs.py's L-BFGS against `scipy.optimize.minimize(method="L-BFGS-B")`, and
analysis/least_squares.py's Levenberg-Marquardt against `scipy.optimize.least_squares`. Each
problem is solved both ways from the same starts and the minima must agree (tolerances stated at
each assertion). scipy is a test dependency only: the production code does not import it."""

import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is in the test extra: pip install -e '.[test]'")

from analysis import approach3  # noqa: E402
from analysis.least_squares import levenberg_marquardt  # noqa: E402
from analysis.lbfgs import minimize_batched  # noqa: E402


def scipy_lbfgs(fun, x0, **options):
    """scipy's L-BFGS-B, unbounded, with stopping rules at least as tight as ours."""
    res = scipy_optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 20000, "maxcor": 10, **options})
    return res.x, res.fun


def rosenbrock(x):
    """Rosenbrock's function in k dimensions and its gradient, for x of shape (k,) or (B, k)."""
    x = np.atleast_2d(x)
    head, tail = x[:, :-1], x[:, 1:]
    f = (100 * (tail - head**2) ** 2 + (1 - head) ** 2).sum(1)
    g = np.zeros_like(x)
    g[:, :-1] += -400 * head * (tail - head**2) - 2 * (1 - head)
    g[:, 1:] += 200 * (tail - head**2)
    return f, g


@pytest.mark.parametrize("k", [2, 5])
def test_rosenbrock_minima_agree_with_scipy(k):
    starts = np.random.default_rng(k).uniform(-2, 2, size=(6, k))
    x, f, n_iter = minimize_batched(lambda t, rows: rosenbrock(t), starts, gtol=1e-10)
    for start, ours, f_ours in zip(starts, x, f):
        ref, f_ref = scipy_lbfgs(lambda t: (rosenbrock(t)[0][0], rosenbrock(t)[1][0]), start)
        # Both at a minimum: the global one at (1, ..., 1), or, for k >= 4, the local one near
        # (-1, 1, ..., 1); the same one from the same start, to 1e-5 per coordinate.
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert f_ours <= f_ref + 1e-10
    assert (n_iter < 2000).all()


def synthetic_records(seed: int = 0, n: int = 40, noise: float = 0.01):
    """Chinchilla-like records: L = E + A/N^alpha + B/D^beta (Hoffmann et al.'s fit) with 1%
    multiplicative noise, N from 1e6 to 1e9 parameters and D from 1e8 to 1e11 tokens."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e6), np.log(1e9), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    L = (1.69 + 406.4 / N**0.34 + 410.7 / D**0.28) * np.exp(noise * rng.standard_normal(n))
    return np.log(N), np.log(D), np.log(L)


def huber_for_scipy(ln_n, ln_d, ln_l, weights=None, delta=approach3.HUBER_DELTA):
    """The Huber objective divided by delta, as approach3.lbfgs minimises it (same minimiser; see its
    docstring for why), in scipy's calling convention."""
    def fun(theta):
        value, grad = approach3.huber_objective(theta, ln_n, ln_d, ln_l, weights, delta)
        return value / delta, grad / delta
    return fun


def law(theta):
    """E, alpha and beta of theta: what the records pin down (A and B trade off against the exponents)."""
    return approach3.params_of(theta)[0][[0, 3, 4]]


STARTS = np.array([[5.0, 5.0, 0.5, 0.3, 0.3], [6.0, 6.5, 0.4, 0.35, 0.3], [4.0, 5.5, 0.6, 0.25, 0.25]])


def test_chinchilla_huber_minima_agree_with_scipy():
    ln_n, ln_d, ln_l = synthetic_records()
    theta, value = approach3.lbfgs(STARTS, ln_n, ln_d, ln_l)
    for start, ours, f_ours in zip(STARTS, theta, value):
        ref, f_ref = scipy_lbfgs(huber_for_scipy(ln_n, ln_d, ln_l), start)
        f_ref *= approach3.HUBER_DELTA
        # The objective at the two minima agrees to 1e-9 relative (ours never worse by more; they
        # agree to ~1e-14 here)...
        assert f_ours <= f_ref * (1 + 1e-9), (f_ours, f_ref)
        # ...and so does the fitted law: E and the exponents to 1e-6 relative (~1e-8 here).
        np.testing.assert_allclose(law(ours), law(ref), rtol=1e-6)
    # And from every start it is the law the records were drawn from (to the noise: 10%).
    np.testing.assert_allclose(law(theta[np.argmin(value)]), [1.69, 0.34, 0.28], rtol=0.1)


def test_bootstrap_replicates_solved_together_agree_with_scipy_one_by_one():
    """Each row of a batch is its own problem (its own bootstrap weights): the batch must not mix them."""
    ln_n, ln_d, ln_l = synthetic_records(seed=1, n=30)
    rng = np.random.default_rng(2)
    weights = rng.multinomial(len(ln_n), np.full(len(ln_n), 1 / len(ln_n)), size=5).astype(float)
    starts = np.repeat(STARTS[:1], len(weights), axis=0)
    theta, value = approach3.lbfgs(starts, ln_n, ln_d, ln_l, weights)
    for w, start, ours, f_ours in zip(weights, starts, theta, value):
        ref, f_ref = scipy_lbfgs(huber_for_scipy(ln_n, ln_d, ln_l, w), start)
        assert f_ours <= f_ref * approach3.HUBER_DELTA * (1 + 1e-9)
        np.testing.assert_allclose(law(ours), law(ref), rtol=1e-6)


def test_levenberg_marquardt_agrees_with_scipy_least_squares():
    """A saturating power law y = E + A x^-alpha with weights, batched over bootstrap replicates."""
    rng = np.random.default_rng(3)
    x = np.geomspace(1, 1e3, 25)
    y = 0.5 + 2.0 * x**-0.4 + 0.005 * rng.standard_normal(len(x))
    weights = np.vstack([np.ones(len(x)), rng.multinomial(len(x), np.full(len(x), 1 / len(x)), size=3)]).astype(float)

    def residuals(theta):
        E, A, alpha = (theta[:, i:i + 1] for i in range(3))
        power = x**-alpha
        r = E + A * power - y
        jac = np.stack([np.ones_like(r), power, -A * power * np.log(x)], axis=2)
        return r, jac

    start = np.array([0.1, 1.0, 0.2])
    theta, cost = levenberg_marquardt(residuals, np.repeat(start[None], len(weights), axis=0), weights)
    for w, ours in zip(weights, theta):
        root = np.sqrt(w)
        ref = scipy_optimize.least_squares(lambda t: root * residuals(t[None])[0][0], start,
                                           jac=lambda t: root[:, None] * residuals(t[None])[1][0],
                                           method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)  # parameters to 1e-5 relative
