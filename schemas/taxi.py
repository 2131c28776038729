"""NYC yellow taxi (TLC trip records): what will the fare (plus tolls) of a trip be, at booking time?

The canonical record is what every input layout (TLC CSV of 2009, 2010-2014 and 2015-2016, and the
course's already-cleaned headerless CSV) is turned into. Features are only what is known when the
trip is booked: where and when it starts, where it ends, how many ride, and what the fleet did in
the hour before. Times are the local New York wall clock "YYYY-MM-DD HH:MM", or UTC epoch seconds
for internal columns. Money is US dollars, distances miles.
"""

from schemas.base import FLOAT, INT, INTERNAL, LABEL, STRING, Column, DatasetSchema, transformed_name

NAME = "taxi"
LABEL_KEY = "fare_amount"
TIMEZONE = "America/New_York"

MIN_FARE = 2.5  # the NYC flag drop: fare + tolls below it is not a metered trip
MAX_TRIP_HOURS = 6.0  # a longer "trip" is a meter left running
MAX_SPEED_MPH = 100.0  # trip_distance / duration above this is a bad distance or bad times

# Greater New York, generously: (0, 0) and other placeholder coordinates fall outside.
_LON = dict(min_value=-78.0, max_value=-70.0)
_LAT = dict(min_value=37.0, max_value=45.0)

COLUMNS = {
    # Known at booking time.
    "pickup_datetime": Column(
        STRING, kind="time", description="pickup, local New York wall clock, YYYY-MM-DD HH:MM"
    ),
    "pickup_longitude": Column(FLOAT, kind="location", description="pickup longitude, degrees", **_LON),
    "pickup_latitude": Column(FLOAT, kind="location", description="pickup latitude, degrees", **_LAT),
    "dropoff_longitude": Column(FLOAT, kind="location", description="dropoff longitude, degrees", **_LON),
    "dropoff_latitude": Column(FLOAT, kind="location", description="dropoff latitude, degrees", **_LAT),
    "passenger_count": Column(INT, min_value=1, description="passengers, as the driver entered it"),
    # Over the hour before pickup, all NYC: trips that ENDED in [pickup - window, pickup). Both are
    # optional because the row checks run before the window stage fills them in; the count is then
    # always present (0 for an empty window), the mean is missing for an empty window.
    "trips_ended_last_hour": Column(
        INT, required=False, min_value=0, description="trips with dropoff in the window"
    ),
    "avg_fare_per_mile_last_hour": Column(
        FLOAT, required=False, min_value=0.0, description="mean fare_amount / trip_distance of those trips"
    ),
    LABEL_KEY: Column(
        FLOAT, role=LABEL, outcome=True, min_value=MIN_FARE, description="fare + tolls, dollars (tips, taxes, extras excluded)"
    ),
    # Pipeline-only: known after the trip, or used for windows and the split.
    "pickup_ts": Column(INT, role=INTERNAL, description="pickup, UTC epoch seconds"),
    "dropoff_ts": Column(INT, role=INTERNAL, required=False, description="dropoff, UTC epoch seconds"),
    "trip_distance": Column(
        FLOAT, role=INTERNAL, required=False, min_value=0.0, description="metered miles (absent in the course CSV)"
    ),
    "fare_per_mile": Column(
        FLOAT, role=INTERNAL, required=False, min_value=0.0, description="fare_amount / trip_distance"
    ),
    "payment_type": Column(
        STRING, role=INTERNAL, required=False, description="credit, cash, no_charge, dispute, unknown, voided"
    ),
}

LOCATION_FEATURES = ("pickup_longitude", "pickup_latitude", "dropoff_longitude", "dropoff_latitude")
NUMERIC_FEATURES = LOCATION_FEATURES + ("passenger_count", "trips_ended_last_hour", "avg_fare_per_mile_last_hour")
# Features whose absence means something (an empty window): they get a 0/1 "_missing" companion.
MISSING_INDICATORS = ("avg_fare_per_mile_last_hour",)
# Computed in preprocessing_fn from the coordinates: dropoff - pickup, and their planar distance.
DERIVED_FEATURES = {
    "delta_lon": ("pickup_longitude", "dropoff_longitude"),
    "delta_lat": ("pickup_latitude", "dropoff_latitude"),
    "euclidean": LOCATION_FEATURES,
}

SCHEMA = DatasetSchema(
    name=NAME,
    columns=COLUMNS,
    label=LABEL_KEY,
    task="regression",
    feature_sets={
        # The course's inputs (pickuplon, pickuplat, dropofflon, dropofflat, passengers, and the
        # pickup hour and weekday), then everything.
        "course": ("pickup_datetime", *LOCATION_FEATURES, "passenger_count"),
        "all": tuple(n for n, c in COLUMNS.items() if c.role == "feature"),
    },
    split_fractions=(0.7, 0.15, 0.15),
    key_columns=("pickup_datetime", *LOCATION_FEATURES, "passenger_count"),
    natural_key=("pickup_ts", "dropoff_ts", *LOCATION_FEATURES),
)

# Quantile buckets per coordinate axis for the location crosses (the course uses 16 a side).
NUM_LATLON_BUCKETS = 16
HOURS_PER_DAY = 24
DAYS_PER_WEEK = 7


# Which raw features each transformed feature reads: the trainer keeps a transformed feature in a
# feature set only when all its sources are in the set.
TRANSFORMED_SOURCES = {
    **{transformed_name(n): (n,) for n in NUMERIC_FEATURES},
    **{transformed_name(f"{n}_missing"): (n,) for n in MISSING_INDICATORS},
    **{transformed_name(n): sources for n, sources in DERIVED_FEATURES.items()},
    **{transformed_name(f"{n}_bucket"): (n,) for n in LOCATION_FEATURES},
    transformed_name("pickup_loc"): ("pickup_latitude", "pickup_longitude"),
    transformed_name("dropoff_loc"): ("dropoff_latitude", "dropoff_longitude"),
    transformed_name("pickup_dropoff"): LOCATION_FEATURES,
    transformed_name("pickup_hour"): ("pickup_datetime",),
    transformed_name("pickup_weekday"): ("pickup_datetime",),
    transformed_name("pickup_hour_weekday"): ("pickup_datetime",),
}
