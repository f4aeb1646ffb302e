"""Real series that ship inside an installed package: statsmodels' datasets, read from the
files in its wheel (no network at run time). statsmodels is an optional extra:

    pip install 'rnnlab[datasets]'

Without it, data=co2 and data=sunspots fail with one line saying so, before anything trains.
"""
from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Literal

import numpy as np

from rnnlab.data.series import DataError, Series


def _dataset(name: str, module: str) -> ModuleType:
    """``statsmodels.datasets.<module>``, or a one-line DataError naming data=<name>."""
    try:
        return import_module(f"statsmodels.datasets.{module}")
    except ImportError:
        raise DataError(
            f"data={name} needs the package statsmodels (the series ships inside it), which is not "
            "installed: pip install 'rnnlab[datasets]'"
        ) from None


def load_co2(missing: Literal["ffill", "error"] = "ffill") -> Series:
    """Mauna Loa atmospheric CO2 (ppmv), weekly from 1958-03-29 to 2001-12-29: 2,284 weeks,
    59 of them without a measurement. ``missing=ffill`` (the default, and the CSV loader's
    policy of the same name) gives a missing week the value of the week before (the first
    week has a value); ``error`` refuses the series and names the first missing week. The
    record rises by ~60 ppmv: the test years lie above every training value, so persistence
    is a hard baseline and a scaled model must extrapolate.

    Source: Keeling, C.D. and T.P. Whorf (2004), atmospheric CO2 from flask air samples at
    Mauna Loa, Scripps Institution of Oceanography (SIO) network, distributed by CDIAC, Oak
    Ridge National Laboratory (U.S. Department of Energy). Licence: public domain (as
    statsmodels.datasets.co2 states).
    """
    data = _dataset("co2", "co2").load_pandas().data  # index: the weeks (W-SAT); column co2
    values = data["co2"].to_numpy(np.float64)
    gaps = np.isnan(values)
    if gaps.any() and missing == "error":
        first = str(data.index[int(np.argmax(gaps))].date())
        raise DataError(
            f"data=co2: the week of {first} has no measurement ({int(gaps.sum())} of {len(values)} weeks are "
            "missing); data.missing=ffill fills each with the week before"
        )
    values = data["co2"].ffill().to_numpy(np.float64)  # the first week has a value: nothing stays NaN
    time = data.index.to_numpy().astype("datetime64[D]")
    return Series(values=values[:, None].astype(np.float32), columns=["co2"], target=0, time=time)


def load_sunspots() -> Series:
    """Yearly mean sunspot number (Wolf / Zürich number, the SIDC series before its 2015
    recalibration), 1700 to 2008: 309 years, no gaps; a cycle of about 11 years.

    Source: NOAA National Geophysical Data Center (NGDC), solar data services, from the
    Solar Influences Data Analysis Center (SIDC, Royal Observatory of Belgium). Licence:
    public domain (as statsmodels.datasets.sunspots states).
    """
    data = _dataset("sunspots", "sunspots").load_pandas().data  # columns YEAR, SUNACTIVITY
    years = data["YEAR"].to_numpy().astype(np.int64)
    time = (years - 1970).astype("datetime64[Y]")  # datetime64 counts years from 1970
    values = data["SUNACTIVITY"].to_numpy(np.float32)[:, None]
    return Series(values=np.ascontiguousarray(values), columns=["sunspots"], target=0, time=time)
