"""Synthetic dynamical systems to forecast: deterministic by seed, generated once per run.

    sine          y_t = sum_k a_k sin(2 pi t / p_k + phi_k) + noise    (periods 10..200 steps)
    mackey_glass  dx/dt = 0.2 x(t - tau) / (1 + x(t - tau)^10) - 0.1 x(t),  tau = 17: chaotic
    lorenz        Lorenz-63: dx = 10 (y - x), dy = x (28 - z) - y, dz = x y - 8/3 z

Each returns a ``Series`` (many-to-one forecasting of the first column, all columns as inputs).
"""
from __future__ import annotations

import numpy as np

from rnnlab.data.series import DataError, Series


def _check_steps(steps: int) -> None:
    if steps < 2:
        raise DataError(f"data.steps={steps} is out of range (allowed: >= 2)")


def sine(steps: int = 20000, components: int = 3, noise: float = 0.05, seed: int = 0) -> Series:
    """A mixture of ``components`` sines with random periods, amplitudes and phases, plus
    Gaussian noise of std ``noise``."""
    _check_steps(steps)
    if components < 1 or not noise >= 0:
        raise DataError(f"data.components={components}, data.noise={noise}: need components >= 1 and noise >= 0")
    rng = np.random.default_rng(seed)
    periods = rng.uniform(10, 200, components)
    amplitudes = rng.uniform(0.5, 1.5, components)
    phases = rng.uniform(0, 2 * np.pi, components)
    t = np.arange(steps)[:, None]
    y = (amplitudes * np.sin(2 * np.pi * t / periods + phases)).sum(axis=1) + rng.normal(0, noise, steps)
    return Series(values=y[:, None].astype(np.float32), columns=["y"], target=0)


def mackey_glass(steps: int = 10000, tau: int = 17, seed: int = 0) -> Series:
    """Integrated with Euler steps of 0.1 and sampled every 1.0 time unit; the initial history
    is 1.2 plus a small random perturbation from ``seed``; the first 1,000 units are dropped
    (the transient)."""
    _check_steps(steps)
    if tau < 1:
        raise DataError(f"data.tau={tau} is out of range (allowed: >= 1)")
    rng = np.random.default_rng(seed)
    per_unit, dt, warmup = 10, 0.1, 1000
    delay = tau * per_unit
    n = (steps + warmup) * per_unit
    x = np.empty(n + delay)
    x[: delay + 1] = 1.2 + rng.uniform(-0.1, 0.1, delay + 1)
    for i in range(delay, n + delay - 1):  # plain loop: a delay equation has no vector form
        lagged = x[i - delay]
        x[i + 1] = x[i] + dt * (0.2 * lagged / (1 + lagged**10) - 0.1 * x[i])
    sampled = x[delay + warmup * per_unit :: per_unit][:steps]
    return Series(values=sampled[:, None].astype(np.float32), columns=["x"], target=0)


def lorenz(steps: int = 20000, dt: float = 0.01, seed: int = 0) -> Series:
    """The Lorenz-63 system (sigma 10, rho 28, beta 8/3), fourth-order Runge-Kutta with step
    ``dt``, from a random start near the attractor (by ``seed``), transient of 1,000 steps
    dropped. Columns x, y, z; target x."""
    _check_steps(steps)
    if not 0 < dt <= 0.05:
        raise DataError(f"data.dt={dt} is out of range (allowed: > 0 and <= 0.05, RK4 is unstable beyond)")

    def f(s: np.ndarray) -> np.ndarray:
        return np.array([10.0 * (s[1] - s[0]), s[0] * (28.0 - s[2]) - s[1], s[0] * s[1] - 8.0 / 3.0 * s[2]])

    rng = np.random.default_rng(seed)
    state = np.array([1.0, 1.0, 20.0]) + rng.normal(0, 1, 3)
    warmup = 1000
    out = np.empty((steps + warmup, 3))
    for i in range(steps + warmup):
        k1 = f(state)
        k2 = f(state + dt / 2 * k1)
        k3 = f(state + dt / 2 * k2)
        k4 = f(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[i] = state
    return Series(values=out[warmup:].astype(np.float32), columns=["x", "y", "z"], target=0)
