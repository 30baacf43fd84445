"""The four UCI regression sets, read from the gzip'd copies shipped in `jaxlump/datasets/data/`.

The shipped files are the provenance-checked offline copies, compressed unchanged (see `data/README.md`
for sources, SHA-256 sums and the CC BY 4.0 credit). They are parsed with `csv` and NumPy only.
"""

import csv
import functools
import gzip
from importlib import resources

import numpy as np
from jaxtyping import PRNGKeyArray

from ._dataset import Dataset, as_key, make_dataset, random_split

# File name → SHA-256 of its decompressed bytes (equal to the upstream file's, see data/README.md).
FILES: dict[str, str] = {
    "abalone.data.gz": "de37cdcdcaaa50c309d514f248f7c2302a5f1f88c168905eba23fe2fbc78449f",
    "Metro_Interstate_Traffic_Volume.csv.gz": "749c90d720360a4215bb15345526073c079ba4cc95e3fa558796d083f85fce9e",
    "CASP.csv.gz": "712d2759f8113622a3ba93a47e451397147df946111f6ffdd8c655385d564aef",
    "household_power_hourly.csv.gz": "4c80d9b5f312f484c76117d088095f3c27c7cb62b413f58496919c41391effb9",
}
ABALONE_COLUMNS = (
    "Sex", "Length", "Diameter", "Height", "Whole_weight", "Shucked_weight", "Viscera_weight", "Shell_weight", "Rings",
)  # fmt: skip
# Metro: the one impossible rain reading (9831.3 mm in an hour) is clipped to just above the next largest (55.63).
METRO_RAIN_CLIP_MM = 60.0
# HEPC: an hour is kept when at most this many of its minutes were imputed (filled from the day before).
HEPC_MAX_IMPUTED_MINUTES = 6


def data_file(filename: str):
    """The shipped file as an `importlib.resources` Traversable (works from a wheel or a zip)."""
    if filename not in FILES:
        raise ValueError(f"`filename` must be one of {sorted(FILES)}; received {filename!r}.")
    return resources.files(__package__).joinpath("data").joinpath(filename)


@functools.cache
def read_table(filename: str, header: bool = True) -> tuple[tuple[str, ...], np.ndarray]:
    """`(column names, (rows, columns) array of strings)` of a shipped CSV file, parsed once per process."""
    with data_file(filename).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as text:
        rows = [row for row in csv.reader(text) if row]
    names = tuple(rows.pop(0)) if header else ABALONE_COLUMNS
    table = np.asarray(rows, dtype=str)
    table.setflags(write=False)
    return names, table


def _columns(filename: str, header: bool = True) -> dict[str, np.ndarray]:
    names, table = read_table(filename, header)
    return {name: table[:, j] for j, name in enumerate(names)}


def _cyclic(name: str, value: np.ndarray, period: float) -> dict[str, np.ndarray]:
    angle = 2 * np.pi * value / period
    return {f"{name}_sin": np.sin(angle), f"{name}_cos": np.cos(angle)}


def _calendar(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hour of day, day of week (Monday = 0) and day of year of `YYYY-MM-DD HH:MM:SS` strings."""
    seconds = stamps.astype("datetime64[s]")
    days = seconds.astype("datetime64[D]")
    hour = (seconds - days).astype("timedelta64[h]").astype(np.float64)
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_of_year = (days - seconds.astype("datetime64[Y]")).astype(np.float64)
    return hour, weekday.astype(np.float64), day_of_year


def _finish(name, features: dict[str, np.ndarray], target: str, y, key, test_fraction, standardize) -> Dataset:
    x = np.stack([np.asarray(v, np.float64) for v in features.values()], axis=1)
    train, test = random_split(len(x), test_fraction, as_key(key))
    y = np.asarray(y, np.float64)
    return make_dataset(
        name,
        (x[train], y[train]),
        (x[test], y[test]),
        feature_names=tuple(features),
        target_names=(target,),
        standardize=standardize,
    )


def abalone(*, key: PRNGKeyArray | int = 0, test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
    """Abalone: predict the number of shell rings (age) from physical measurements.

    4,177 examples. Features (10): the one-hot Sex `Sex_F`, `Sex_I` (infant), `Sex_M`, then Length,
    Diameter, Height (mm), Whole, Shucked, Viscera and Shell weight (g). Target: Rings (1–29). The split is
    a seeded random 80/20 (`test_fraction`); the same key gives the same split.

    **Arguments:**

    - `key`: a `jax.random` key or integer seed for the split.
    - `test_fraction`: share of the rows held out for testing, in (0, 1).
    - `standardize`: standardise inputs and target with the training statistics (default `True`).

    **Returns:** a `Dataset` (3,342 training and 835 test rows at the default fraction).

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import abalone

    data = abalone()
    assert data.feature_names[:3] == ("Sex_F", "Sex_I", "Sex_M") and data.target_names == ("Rings",)
    ```

    Data: W. Nash, T. Sellers, S. Talbot, A. Cawthorn, W. Ford, *Abalone* [Dataset], UCI Machine Learning
    Repository (1994), https://doi.org/10.24432/C55C7W, CC BY 4.0.
    """
    col = _columns("abalone.data.gz", header=False)
    features = {f"Sex_{s}": col["Sex"] == s for s in "FIM"}
    features |= {name: col[name] for name in ABALONE_COLUMNS[1:-1]}
    return _finish("abalone", features, "Rings", col["Rings"], key, test_fraction, standardize)


def protein(*, key: PRNGKeyArray | int = 0, test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
    """Physicochemical properties of protein tertiary structure (CASP 5–9): predict the RMSD.

    45,730 decoys. Features: F1 … F9 (physicochemical properties of the structure); target: RMSD (Å) of
    the decoy from the native structure. Seeded random 80/20 split.

    **Arguments:** `key`, `test_fraction`, `standardize` as in `abalone`.

    **Returns:** a `Dataset` with 9 features and 1 target.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import protein

    data = protein()
    assert data.feature_names == tuple(f"F{i}" for i in range(1, 10))
    ```

    Data: P. Rana, *Physicochemical Properties of Protein Tertiary Structure* [Dataset], UCI Machine
    Learning Repository (2013), https://doi.org/10.24432/C5QW3H, CC BY 4.0.
    """
    col = _columns("CASP.csv.gz")
    features = {f"F{i}": col[f"F{i}"] for i in range(1, 10)}
    return _finish("protein", features, "RMSD", col["RMSD"], key, test_fraction, standardize)


def metro_traffic(*, key: PRNGKeyArray | int = 0, test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
    """Metro Interstate Traffic Volume (I-94 westbound, Minneapolis–St Paul, 2012–2018): predict the hourly volume.

    Cleaning, applied before the seeded random 80/20 split:

    - one row per hour: the file repeats an hour once per weather condition (7,629 extra rows); the
      first row of each `date_time` is kept (the weather description is not a feature);
    - rows with `temp` = 0 K (10 rows: missing readings) are dropped;
    - `rain_1h` is clipped at 60 mm (the single reading of 9,831.3 mm is impossible; the next largest is
      55.63 mm);
    - the `holiday` column names a holiday only on the midnight row; the flag is extended to the whole
      calendar day.

    Features (10): temp (K), rain_1h, snow_1h (mm), clouds_all (%), the hour of day and the day of the
    week as `sin`/`cos` pairs (`hour_sin`, `hour_cos`, `weekday_sin`, `weekday_cos`), `weekend` (0/1) and
    `holiday` (0/1). Target: traffic_volume (vehicles per hour). 40,565 rows remain.

    **Arguments:** `key`, `test_fraction`, `standardize` as in `abalone`.

    **Returns:** a `Dataset` with 10 features and 1 target.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import metro_traffic

    data = metro_traffic()
    assert data.n_features == 10 and data.target_names == ("traffic_volume",)
    ```

    Data: J. Hogue, *Metro Interstate Traffic Volume* [Dataset], UCI Machine Learning Repository (2019),
    https://doi.org/10.24432/C5X60B, CC BY 4.0.
    """
    col = _columns("Metro_Interstate_Traffic_Volume.csv.gz")
    stamps = col["date_time"]
    _, first = np.unique(stamps, return_index=True)
    day = stamps.astype("datetime64[D]")
    holiday_day = np.isin(day, day[col["holiday"] != "None"])
    temp = col["temp"].astype(np.float64)
    keep = np.zeros(len(stamps), bool)
    keep[first] = True
    keep &= temp > 0
    hour, weekday, _ = _calendar(stamps[keep])
    features = {
        "temp": temp[keep],
        "rain_1h": np.minimum(col["rain_1h"][keep].astype(np.float64), METRO_RAIN_CLIP_MM),
        "snow_1h": col["snow_1h"][keep],
        "clouds_all": col["clouds_all"][keep],
        **_cyclic("hour", hour, 24.0),
        **_cyclic("weekday", weekday, 7.0),
        "weekend": weekday >= 5,
        "holiday": holiday_day[keep],
    }
    y = col["traffic_volume"][keep]
    return _finish("metro_traffic", features, "traffic_volume", y, key, test_fraction, standardize)


def household_power(
    *,
    key: PRNGKeyArray | int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    max_imputed_minutes: int = HEPC_MAX_IMPUTED_MINUTES,
) -> Dataset:
    """Individual household electric power consumption (Sceaux, 2006–2010), hourly: predict the active power.

    The shipped file holds the hourly means of the 1-minute UCI measurements (34,589 hours; see
    `data/README.md` for how they were built). Cleaning: the two partial hours (first and last) are
    dropped, and so is every hour with more than `max_imputed_minutes` minutes (default 6, i.e. 10 %)
    that were missing in UCI and filled with the previous day's value; such hours are almost all fully
    imputed (421 of 524 hours with any imputed minute have all 60), so the threshold barely matters.

    Features (11): Global_reactive_power (kW), Voltage (V), Sub_metering_1, _2, _3 (Wh per minute), and
    `sin`/`cos` pairs of the hour of day, the day of the week and the day of the year. Target:
    Global_active_power (kW). Global_intensity is *not* a feature: it is the current, `≈ 1000 ·
    Global_active_power / Voltage` (correlation 0.9994 with the target), so with it the task is a
    near-exact formula rather than a regression. Seeded random 80/20 split over hours.

    **Arguments:**

    - `key`, `test_fraction`, `standardize`: as in `abalone`.
    - `max_imputed_minutes`: drop hours with more imputed minutes than this (0–60).

    **Returns:** a `Dataset` with 11 features and 1 target.

    **Raises:** `ValueError`/`TypeError` for malformed arguments.

    **Example:**

    ```python
    from jaxlump.datasets import household_power

    data = household_power()
    assert "Global_intensity" not in data.feature_names
    ```

    Data: G. Hebrail, A. Berard, *Individual Household Electric Power Consumption* [Dataset], UCI Machine
    Learning Repository (2006), https://doi.org/10.24432/C58K54, CC BY 4.0.
    """
    if isinstance(max_imputed_minutes, bool) or not isinstance(max_imputed_minutes, (int, np.integer)):
        raise TypeError(f"`max_imputed_minutes` must be an integer in [0, 60]; received {max_imputed_minutes!r}.")
    if not 0 <= max_imputed_minutes <= 60:
        raise ValueError(f"`max_imputed_minutes` must lie in [0, 60]; received {max_imputed_minutes}.")
    col = _columns("household_power_hourly.csv.gz")
    keep = (col["n_minutes"].astype(int) == 60) & (col["n_imputed_minutes"].astype(int) <= max_imputed_minutes)
    hour, weekday, day_of_year = _calendar(col["date_time"][keep])
    measured = ("Global_reactive_power", "Voltage", "Sub_metering_1", "Sub_metering_2", "Sub_metering_3")
    features = {
        **{name: col[name][keep] for name in measured},
        **_cyclic("hour", hour, 24.0),
        **_cyclic("weekday", weekday, 7.0),
        **_cyclic("day_of_year", day_of_year, 365.25),
    }
    y = col["Global_active_power"][keep]
    return _finish("household_power", features, "Global_active_power", y, key, test_fraction, standardize)
