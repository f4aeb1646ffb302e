"""The Jena climate record 2009-2016 (Max Planck Institute for Biogeochemistry): 14 weather
quantities every 10 minutes, 420,551 rows, from a local copy of the CSV (no download at run
time). Get it once, e.g. the extract used by the Keras and TensorFlow tutorials:

    curl -LO https://storage.googleapis.com/tensorflow/tf-keras-datasets/jena_climate_2009_2016.csv.zip
    unzip jena_climate_2009_2016.csv.zip   # -> jena_climate_2009_2016.csv

The published file has known flaws, handled here and only here: some time stamps appear twice
(the repeats are dropped, first kept), and the wind speeds hold -9999 where the sensor failed
(set to 0, as in the TensorFlow tutorial). Everything else goes through the CSV loader's checks.
"""
from __future__ import annotations

import numpy as np

from rnnlab.data.csv import read_table, table_to_series
from rnnlab.data.series import DataError, Series

TIME = "Date Time"  # day-first: 01.01.2009 00:10:00
WIND = ("wv (m/s)", "max. wv (m/s)")


def load_jena(path: str = "", target: str = "T (degC)", every: int = 6) -> Series:
    """Every ``every``-th row (6: hourly, as in the tutorials); all 14 quantities as inputs."""
    import pandas as pd

    if every < 1:
        raise DataError(f"data.every={every} is out of range (allowed: >= 1)")
    table, where = read_table(path)
    if TIME in table.columns:
        table = table[~table[TIME].duplicated()]
    for column in WIND:
        if column in table.columns:
            table = table.assign(**{column: table[column].where(pd.to_numeric(table[column], errors="coerce") != -9999, "0")})
    series = table_to_series(table, where, TIME, target, None, None, "error", time_format="%d.%m.%Y %H:%M:%S")
    series.values, series.time = np.ascontiguousarray(series.values[::every]), series.time[::every]
    return series
