"""The embedded default dataset: a generated hourly weather-like series, forecast many-to-one.

Deterministic by seed, no download. Physically plausible rather than real: a yearly and a daily
temperature cycle, weather fronts as a slow autocorrelated (AR(1)) process that moves pressure,
temperature, humidity, cloudiness and wind together, hourly noise, and calendar features.
"""
from __future__ import annotations

import numpy as np

from rnnlab.data.series import DataError, Series

HOURS_PER_YEAR = 365.25 * 24


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """A stationary AR(1) process x_t = phi x_{t-1} + e_t with marginal std ``sd``."""
    noise = rng.normal(0.0, sd * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def generate_weather(years: float = 3.0, seed: int = 0) -> Series:
    """Hourly series from 2020-01-01: temperature (°C), humidity (%), pressure (hPa), wind
    (m/s), and hour-of-day, day-of-week and day-of-year as sin/cos pairs. Target: temperature."""
    if not years > 0:
        raise DataError(f"data.years={years!r} is out of range (allowed: > 0)")
    rng = np.random.default_rng(seed)
    n = int(round(years * HOURS_PER_YEAR))
    hours = np.arange(n)
    time = np.datetime64("2020-01-01T00", "h") + hours
    year_phase = 2 * np.pi * hours / HOURS_PER_YEAR  # 0 on 1 January
    day_phase = 2 * np.pi * (hours % 24) / 24
    weekday = (hours // 24 + 2) % 7  # 2020-01-01 was a Wednesday (Monday = 0)

    front = _ar1(rng, n, phi=0.99, sd=1.0)  # synoptic weather, a few days' memory
    cloud = 1 / (1 + np.exp(-(1.5 * front + _ar1(rng, n, phi=0.9, sd=0.7))))  # 0 clear .. 1 overcast
    seasonal = 10.0 - 9.0 * np.cos(year_phase - 0.35)  # coldest mid-January
    daily_amplitude = (4.0 + 2.0 * np.sin(year_phase - 1.9)) * (1.2 - 0.8 * cloud)
    daily = daily_amplitude * np.cos(day_phase - 2 * np.pi * 15 / 24)  # warmest at 15:00
    temperature = seasonal + daily - 3.0 * front + _ar1(rng, n, phi=0.8, sd=0.4)
    pressure = 1013.0 - 9.0 * front + _ar1(rng, n, phi=0.95, sd=1.0)
    humidity = np.clip(72 - 2.0 * daily + 18 * (cloud - 0.5) + _ar1(rng, n, phi=0.85, sd=4.0), 10, 100)
    wind = np.log1p(np.exp(2.0 + 1.2 * np.abs(front) + 0.4 * daily / 4 + _ar1(rng, n, phi=0.9, sd=0.8)))

    columns = {
        "temperature": temperature,
        "humidity": humidity,
        "pressure": pressure,
        "wind_speed": wind,
        "hour_sin": np.sin(day_phase),
        "hour_cos": np.cos(day_phase),
        "weekday_sin": np.sin(2 * np.pi * weekday / 7),
        "weekday_cos": np.cos(2 * np.pi * weekday / 7),
        "yearday_sin": np.sin(year_phase),
        "yearday_cos": np.cos(year_phase),
    }
    values = np.stack(list(columns.values()), axis=1).astype(np.float32)
    return Series(values=values, columns=list(columns), target=0, time=time)
