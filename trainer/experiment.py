"""Train a grid of models on one preprocessing output, compare them, and search hyperparameters.

    python -m trainer.experiment --data_dir OUT --job_dir EXP [--models linear,dnn,wide_deep]
        [--feature_sets ch7,ch8,all] [--repeats 1] [--seed 42] [--search_trials N]
        [--search_model wide_deep] [--search_feature_set all] [--overwrite] [any trainer.task flag ...]

Each grid job is an ordinary ``trainer.task`` run (in this process, one after the other) with its
own job dir EXP/runs/<model>-<feature set>-seed<seed>, on the same split (OUT) and the same seed.
Flags this command does not know (``--train_steps 10 --epochs 1``, ``--batch_size``, ...) go to every
job unchanged.

"Compare the RMSE with the previous runs", done properly:
  - every number is computed the same way, by ``trainer.metrics`` on the exported
    SavedModel's ``serving_tf_example`` outputs for OUT/raw/valid and OUT/raw/test;
  - runs are RANKED on the valid split; test is reported, never used to choose;
  - the baselines of ``trainer.baselines`` (fitted on OUT/raw/train) sit in the same table;
  - ``--repeats N`` trains each cell with seeds seed..seed+N-1 and reports mean and standard
    deviation, so a difference can be read against the seed-to-seed noise.

``--search_trials N`` then tunes learning rate, hidden units and batch size of ``--search_model``
on ``--search_feature_set`` (Optuna's TPE sampler, seeded; a seeded random search where Optuna is
not installed). Each trial is a ``trainer.task`` run under EXP/search/trial-NNN, scored on valid.
The best trial is reported against the default hyperparameters (the matching grid run, or a run
made for the purpose), on valid and on test.

Writes EXP/comparison.json, EXP/comparison.md (tables) and EXP/comparison.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras
if __name__ == "__main__":  # a command-line run: TensorFlow's C++ INFO notes off, unless the user chose a level
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np  # noqa: E402

from schemas import get_schema  # noqa: E402
from trainer import baselines, data  # noqa: E402
from trainer import task as trainer_task  # noqa: E402
from trainer.config import MODELS, TrainConfig, configure_logging  # noqa: E402
from trainer.evaluate import model_predictions  # noqa: E402
from trainer.metrics import PRIMARY, metrics_for  # noqa: E402
from trainer.report import write_json  # noqa: E402

logger = logging.getLogger(__name__)

# The search space.
LEARNING_RATE_RANGE = (1e-4, 3e-2)  # log-uniform
HIDDEN_UNITS_CHOICES = ("32", "64,32", "128,64", "128,64,32", "256,128")
BATCH_SIZE_CHOICES = (64, 128, 256, 512, 1024)

CONTROLLED = ("--data_dir", "--job_dir", "--job-dir", "--model", "--feature_set", "--seed")


@dataclasses.dataclass
class Scorer:
    """Labels of the valid and test raw splits, read once, and the task's metric functions."""

    data_dir: str
    task: str
    labels: dict  # split -> labels

    def score(self, export_dir: str) -> dict:
        out = {}
        for split, y in self.labels.items():
            p = model_predictions(export_dir, self.data_dir, split, self.task)
            if p.shape[0] != y.shape[0]:
                raise RuntimeError(f"{split}: {p.shape[0]} predictions for {y.shape[0]} raw rows")
            out[split] = _summary(metrics_for(self.task, y, p))
        return out


def _summary(m: dict) -> dict:
    return {k: v for k, v in m.items() if k in ("rows", "roc_auc", "pr_auc", "log_loss", "brier", "accuracy@0.5",
                                                  "rmse", "mae", "bias", "r2")}


def run_job(argv: list[str], scorer: Scorer) -> dict:
    """One ``trainer.task`` run, then its exported model scored on valid and test."""
    started = time.time()
    result = trainer_task.run(argv)
    m = result.metrics
    return {
        "job_dir": m["config"]["job_dir"],
        "export_dir": result.export_dir,
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
        "stopped_early": m.get("stopped_early"),
        "skew_max_abs_diff": m.get("skew", {}).get("max_abs_diff"),
        "trainer_wall_seconds": m.get("wall_seconds"),
        **scorer.score(result.export_dir),
        "wall_seconds": round(time.time() - started, 1),
    }


def _job_argv(data_dir, job_dir, model, feature_set, seed, extra, overrides=()) -> list[str]:
    return ["--data_dir", data_dir, "--job_dir", job_dir, "--model", model, "--feature_set", feature_set,
            "--seed", str(seed), *extra, *overrides]


def aggregate(runs: list[dict], keys: tuple[str, ...], splits=("valid", "test")) -> dict:
    """Mean and standard deviation (ddof=1; 0 for one run) over seeds, per split and metric."""
    ok = [r for r in runs if "error" not in r]
    out = {"seeds": [r["seed"] for r in ok], "failed": len(runs) - len(ok)}
    for split in splits:
        means, stds = {}, {}
        for k in keys:
            vals = [r[split][k] for r in ok if split in r and r[split].get(k) is not None]
            vals = [v for v in vals if math.isfinite(v)]
            means[k] = float(np.mean(vals)) if vals else math.nan
            stds[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        rows = [r[split]["rows"] for r in ok if split in r]
        out[split] = {"rows": rows[0] if rows else 0, **means}
        out[f"{split}_std"] = stds
    out["epochs_run"] = float(np.mean([r["epochs_run"] for r in ok])) if ok else math.nan
    out["wall_seconds"] = float(np.sum([r["wall_seconds"] for r in ok])) if ok else math.nan
    return out


def metric_keys(task: str) -> tuple[str, ...]:
    return ("roc_auc", "pr_auc", "log_loss", "accuracy@0.5") if task == "classification" else ("rmse", "mae", "r2")


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Sorted best first by the valid ``metric``; rows without it last."""
    def key(r):
        v = r.get("valid", {}).get(metric, math.nan)
        if v is None or not math.isfinite(v):
            return (1, 0.0)
        return (0, -v if mode == "max" else v)

    return sorted(rows, key=key)


# ---------------------------------------------------------------- search
def _suggest_random(rng):
    lo, hi = np.log(LEARNING_RATE_RANGE[0]), np.log(LEARNING_RATE_RANGE[1])
    return {
        "learning_rate": float(np.exp(rng.uniform(lo, hi))),
        "hidden_units": str(rng.choice(HIDDEN_UNITS_CHOICES)),
        "batch_size": int(rng.choice(BATCH_SIZE_CHOICES)),
    }


def search(n_trials: int, train_trial, mode: str, seed: int) -> dict:
    """Runs ``train_trial(number, params) -> valid metric`` n_trials times; Optuna TPE when available."""
    trials = []
    try:
        import optuna
    except ImportError:
        optuna = None
    if optuna is not None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))

        def objective(trial):
            params = {
                "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True),
                "hidden_units": trial.suggest_categorical("hidden_units", list(HIDDEN_UNITS_CHOICES)),
                "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZE_CHOICES)),
            }
            record = train_trial(trial.number, params)
            trials.append(record)
            if "error" in record:
                raise RuntimeError(record["error"])
            return record["objective"]

        study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,))
        method = f"optuna {optuna.__version__} TPE sampler (seed {seed})"
    else:
        rng = np.random.default_rng(seed)
        for number in range(n_trials):
            trials.append(train_trial(number, _suggest_random(rng)))
        method = f"random search (seed {seed}; optuna is not installed)"
    done = [t for t in trials if "error" not in t and t.get("objective") is not None and math.isfinite(t["objective"])]
    best = (max if mode == "max" else min)(done, key=lambda t: t["objective"]) if done else None
    return {"method": method, "trials": trials, "best": best}


# ---------------------------------------------------------------- the experiment
def run_experiment(args, extra: list[str]) -> dict:
    started = time.time()
    manifest = data.read_manifest(args.data_dir)
    schema = get_schema(manifest["dataset"])
    task = schema.task
    metric, mode = PRIMARY[task]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(f"unknown models {bad}; choose from {MODELS}")
    feature_sets = ([f.strip() for f in args.feature_sets.split(",") if f.strip()]
                    if args.feature_sets else list(schema.feature_sets))
    bad = [f for f in feature_sets if f not in schema.feature_sets]
    if bad:
        raise ValueError(f"unknown feature sets {bad} for {schema.name}; it has {list(schema.feature_sets)}")
    clash = [a for a in extra if a.split("=", 1)[0] in CONTROLLED]
    if clash:
        raise ValueError(f"{clash} are set by the experiment (use --models, --feature_sets, --seed)")

    splits = {}
    for split in ("valid", "test"):
        try:
            raw = baselines.read_raw(args.data_dir, split)
        except FileNotFoundError:
            continue
        if len(raw):
            splits[split] = raw
    scorer = Scorer(args.data_dir, task, {s: r.y for s, r in splits.items()})
    keys = metric_keys(task)

    baseline_rows = []
    if not args.no_baselines:
        for b in baselines.fit_baselines(baselines.read_raw(args.data_dir, "train"), task, args.seed):
            row = {"name": b.name, "description": b.description}
            for split, raw in splits.items():
                row[split] = _summary(metrics_for(task, raw.y, b.predict(raw)))
            baseline_rows.append(row)

    seeds = [args.seed + i for i in range(args.repeats)]
    cells = []
    for model in models:
        for feature_set in feature_sets:
            runs = []
            for seed in seeds:
                job_dir = os.path.join(args.job_dir, "runs", f"{model}-{feature_set}-seed{seed}")
                logger.info("== grid: %s on %s, seed %d -> %s", model, feature_set, seed, job_dir)
                try:
                    record = run_job(_job_argv(args.data_dir, job_dir, model, feature_set, seed, extra), scorer)
                except Exception as e:  # one failed cell does not lose the others
                    logger.exception("grid run %s/%s seed %d failed", model, feature_set, seed)
                    record = {"job_dir": job_dir, "error": f"{type(e).__name__}: {e}"}
                runs.append({"seed": seed, **record})
            cells.append({"name": f"{model} / {feature_set}", "model": model, "feature_set": feature_set,
                          **aggregate(runs, keys), "runs": runs})
    ranked = rank(cells, metric, mode)
    defaults = TrainConfig(data_dir="", job_dir="")
    result = {
        "dataset": schema.name,
        "task": task,
        "label": schema.label,
        "data_dir": args.data_dir,
        "split_rows": manifest.get("splits"),
        "objective": {"metric": metric, "mode": mode, "ranked_on": "valid"},
        "seeds": seeds,
        "trainer_flags": extra,
        "defaults": {"learning_rate": defaults.learning_rate, "hidden_units": ",".join(map(str, defaults.hidden_units)),
                     "batch_size": defaults.batch_size},
        "metrics_computed_by": "trainer.evaluate on the exported SavedModel's serving_tf_example over OUT/raw/{valid,test}",
        "runs": ranked,
        "baselines": baseline_rows,
        "selected": ranked[0]["name"] if ranked and "valid" in ranked[0] and math.isfinite(
            ranked[0]["valid"].get(metric, math.nan)) else None,
    }

    if args.search_trials > 0:
        result["search"] = run_search(args, extra, schema, scorer, cells, metric, mode)
    result["wall_seconds"] = round(time.time() - started, 1)
    write_outputs(args.job_dir, result)
    return result


def run_search(args, extra, schema, scorer, cells, metric, mode) -> dict:
    feature_set = args.search_feature_set or ("all" if "all" in schema.feature_sets else next(iter(schema.feature_sets)))
    model = args.search_model
    root = os.path.join(args.job_dir, "search")

    def train(tag: str, overrides: list[str]) -> dict:
        job_dir = os.path.join(root, tag)
        try:
            return run_job(_job_argv(args.data_dir, job_dir, model, feature_set, args.seed, extra, overrides), scorer)
        except Exception as e:
            logger.exception("search run %s failed", tag)
            return {"job_dir": job_dir, "error": f"{type(e).__name__}: {e}"}

    def train_trial(number: int, params: dict) -> dict:
        logger.info("== search trial %d: %s", number, params)
        overrides = ["--learning_rate", repr(params["learning_rate"]), "--hidden_units", params["hidden_units"],
                     "--batch_size", str(params["batch_size"])]
        record = {"trial": number, "params": params, **train(f"trial-{number:03d}", overrides)}
        record["objective"] = record.get("valid", {}).get(metric) if "error" not in record else None
        return record

    found = search(args.search_trials, train_trial, mode, args.seed)
    # The defaults: the grid run of the same model, feature set and seed, else one made now.
    reference = next((r for c in cells if c["model"] == model and c["feature_set"] == feature_set
                      for r in c["runs"] if r["seed"] == args.seed and "error" not in r), None)
    if reference is None:
        logger.info("== search: training the defaults for reference")
        reference = {"seed": args.seed, **train("defaults", [])}
    best = found["best"]
    comparison = None
    if best and "error" not in reference:
        comparison = {
            split: {"best": best[split].get(metric), "defaults": reference[split].get(metric),
                    "difference": best[split].get(metric) - reference[split].get(metric)}
            for split in ("valid", "test") if split in best and split in reference
        }
    return {
        "model": model, "feature_set": feature_set, "seed": args.seed, "method": found["method"],
        "space": {"learning_rate": f"log-uniform {LEARNING_RATE_RANGE}", "hidden_units": list(HIDDEN_UNITS_CHOICES),
                  "batch_size": list(BATCH_SIZE_CHOICES)},
        "objective": {"metric": metric, "mode": mode, "split": "valid"},
        "trials": found["trials"], "best": best, "defaults_run": reference, "best_vs_defaults": comparison,
        "trainer_flags": extra,
    }


# ---------------------------------------------------------------- outputs
def _f(v, digits=4) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _cell(row: dict, split: str, k: str, with_std: bool) -> str:
    v = row.get(split, {}).get(k)
    s = _f(v)
    std = row.get(f"{split}_std", {}).get(k)
    if with_std and v is not None and std is not None and s != "-":
        s += f" ± {std:.4f}"
    return s


def render_markdown(result: dict) -> str:
    metric = result["objective"]["metric"]
    keys = metric_keys(result["task"])
    with_std = len(result["seeds"]) > 1
    lines = [
        f"# Experiment: {result['dataset']} ({result['task']} of `{result['label']}`)",
        "",
        f"Data: `{result['data_dir']}`, split rows {result['split_rows']}. Every run uses the same split and "
        f"seed(s) {', '.join(map(str, result['seeds']))}; trainer flags: `{' '.join(result['trainer_flags']) or '(defaults)'}`.",
        f"Metrics are computed by {result['metrics_computed_by']}. Runs are ranked by **valid {metric}**; "
        "the test columns are reported, never used to choose."
        + (" Values are mean ± standard deviation over the seeds." if with_std else ""),
        "",
        "| rank | run | valid " + metric + " | " + " | ".join(f"test {k}" for k in keys) + " | epochs | wall s |",
        "|---|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for i, r in enumerate(result["runs"], start=1):
        if r.get("failed") and not r.get("seeds"):
            error = next((x.get("error") for x in r["runs"] if "error" in x), "failed")
            lines.append(f"| {i} | {r['name']} | failed: {error[:80]} |" + " |" * (len(keys) + 2))
            continue
        lines.append(f"| {i} | {r['name']} | {_cell(r, 'valid', metric, with_std)} | "
                     + " | ".join(_cell(r, "test", k, with_std) for k in keys)
                     + f" | {_f(r.get('epochs_run'), 1)} | {_f(r.get('wall_seconds'), 0)} |")
    for b in result["baselines"]:
        lines.append(f"| - | baseline: {b['name']} | {_f(b.get('valid', {}).get(metric))} | "
                     + " | ".join(_f(b.get("test", {}).get(k)) for k in keys) + " | - | - |")
    if result.get("selected"):
        best = result["runs"][0]
        line = (f"\nSelected on valid: **{result['selected']}**, test {metric} "
                f"{_f(best['test'].get(metric))}")
        if result["baselines"]:
            strong = result["baselines"][-1]
            line += f" (baseline {strong['name']}: {_f(strong.get('test', {}).get(metric))})"
        lines.append(line + ".")
    if result["baselines"]:
        lines += ["", "Baselines (fitted on OUT/raw/train):"]
        lines += [f"- **{b['name']}**: {b['description']}" for b in result["baselines"]]
    s = result.get("search")
    if s:
        lines += [
            "", f"## Hyperparameter search: {s['model']} on {s['feature_set']}", "",
            f"{len(s['trials'])} trials, {s['method']}, maximising" if s["objective"]["mode"] == "max"
            else f"{len(s['trials'])} trials, {s['method']}, minimising",
            f" valid {metric}. Space: learning rate {s['space']['learning_rate']}, hidden units "
            f"{s['space']['hidden_units']}, batch size {s['space']['batch_size']}.",
            "",
            f"| trial | learning_rate | hidden_units | batch_size | valid {metric} | test {metric} | epochs |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in s["trials"]:
            p = t["params"]
            if "error" in t:
                lines.append(f"| {t['trial']} | {p['learning_rate']:.2e} | {p['hidden_units']} | {p['batch_size']} | "
                             f"failed | - | - |")
                continue
            lines.append(f"| {t['trial']} | {p['learning_rate']:.2e} | {p['hidden_units']} | {p['batch_size']} | "
                         f"{_f(t['valid'].get(metric))} | {_f(t['test'].get(metric))} | {t.get('epochs_run')} |")
        d = result["defaults"]
        ref = s["defaults_run"]
        if "error" not in ref:
            lines.append(f"| defaults | {d['learning_rate']:.2e} | {d['hidden_units']} | {d['batch_size']} | "
                         f"{_f(ref['valid'].get(metric))} | {_f(ref['test'].get(metric))} | {ref.get('epochs_run')} |")
        cmp_ = s.get("best_vs_defaults")
        if cmp_:
            b = s["best"]
            parts = [f"{split} {_f(v['best'])} vs {_f(v['defaults'])} ({v['difference']:+.4f})" for split, v in cmp_.items()]
            lines += ["", f"Best trial {b['trial']} ({b['params']['learning_rate']:.2e}, {b['params']['hidden_units']}, "
                          f"batch {b['params']['batch_size']}) vs the defaults, {metric}: " + "; ".join(parts) + "."]
            cell = next((r for r in result["runs"] if r.get("model") == s["model"]
                         and r.get("feature_set") == s["feature_set"] and len(r.get("seeds", [])) > 1), None)
            if cell:
                spread = {split: cell.get(f"{split}_std", {}).get(metric) for split in cmp_}
                verdicts = [
                    f"{split} {abs(v['difference']):.4f} is {'within' if abs(v['difference']) <= 2 * spread[split] else 'beyond'}"
                    f" 2 x {spread[split]:.4f}" for split, v in cmp_.items() if spread.get(split) is not None
                ]
                lines.append(f"The defaults' seed-to-seed standard deviation ({len(cell['seeds'])} seeds of the grid): "
                             + "; ".join(verdicts) + ". The trials ran one seed each, and were chosen on valid, "
                             "so the valid gain is optimistic; the test difference is the one to read.")
            else:
                lines.append("One seed each: read a difference smaller than the seed-to-seed spread "
                             "(`--repeats`) as no difference.")
    return "\n".join(lines) + "\n"


def plot_comparison(path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["objective"]["metric"]
    runs = [r for r in result["runs"] if r.get("seeds")][::-1]  # best at the top
    s = result.get("search")
    nrows = 2 if s and s["trials"] else 1
    grid_height = max(2.6, 0.42 * len(runs) + 1.2)
    fig, axes = plt.subplots(nrows, 1, figsize=(11, grid_height + (3.4 if nrows == 2 else 0)), squeeze=False,
                             gridspec_kw={"height_ratios": [grid_height, 3.4][:nrows]})
    ax = axes[0][0]
    pos = np.arange(len(runs))
    for split, marker, color, dy in (("valid", "o", "#7f7f7f", 0.12), ("test", "s", "#1f4e9c", -0.12)):
        vals = [r[split].get(metric, np.nan) for r in runs]
        errs = [r.get(f"{split}_std", {}).get(metric, 0.0) for r in runs]
        ax.errorbar(vals, pos + dy, xerr=errs if any(errs) else None, fmt=marker, color=color, ms=7,
                    label=f"{split} {metric}", capsize=3)
    shown = [v for r in runs for v in (r["valid"].get(metric), r["test"].get(metric)) if v is not None and math.isfinite(v)]
    lo, hi = (min(shown), max(shown)) if shown else (0.0, 1.0)
    span = max(hi - lo, 0.01)
    palette = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, b in enumerate(result["baselines"]):
        v = b.get("test", {}).get(metric)
        if v is None or not math.isfinite(v):
            continue
        if lo - 1.5 * span <= v <= hi + 1.5 * span:
            ax.axvline(v, color=palette[i % len(palette)], ls="--", lw=1.3, label=f"test, {b['name']} {v:.4f}")
            lo, hi = min(lo, v), max(hi, v)
        else:
            ax.plot([], [], ls="--", color=palette[i % len(palette)], label=f"test, {b['name']} {v:.4f} (off scale)")
    span = max(hi - lo, 0.01)
    ax.set_xlim(lo - 0.15 * span, hi + 0.15 * span)
    ax.set_yticks(pos, [r["name"] for r in runs])
    ax.set_xlabel(f"{metric} ({'higher' if result['objective']['mode'] == 'max' else 'lower'} is better)")
    ax.set_title(f"{result['dataset']}: runs ranked by valid {metric} (best on top)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    failed = [r["name"] for r in result["runs"] if not r.get("seeds")]
    if failed:
        ax.text(1.01, 0.0, "failed, not shown:\n" + "\n".join(failed), transform=ax.transAxes, fontsize=8,
                va="bottom", color="#d62728")
    if nrows == 2:
        ax2 = axes[1][0]
        ok = [t for t in s["trials"] if "error" not in t]
        ax2.plot([t["trial"] for t in ok], [t["valid"].get(metric) for t in ok], "o", color="#7f7f7f",
                 label=f"trial, valid {metric}")
        ax2.plot([t["trial"] for t in ok], [t["test"].get(metric) for t in ok], "s", color="#1f4e9c", ms=5,
                 label=f"trial, test {metric}")
        ref = s["defaults_run"]
        if "error" not in ref:
            ax2.axhline(ref["valid"].get(metric), color="#7f7f7f", ls="--", lw=1, label="defaults, valid")
            ax2.axhline(ref["test"].get(metric), color="#1f4e9c", ls="--", lw=1, label="defaults, test")
        if s.get("best"):
            b = s["best"]
            ax2.plot([b["trial"]], [b["valid"].get(metric)], "*", color="#d62728", ms=16, label="best trial (valid)")
        ax2.set(xlabel="trial", ylabel=metric, title=f"search: {s['model']} on {s['feature_set']} ({s['method']})")
        ax2.xaxis.get_major_locator().set_params(integer=True)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_outputs(job_dir: str, result: dict) -> None:
    os.makedirs(job_dir, exist_ok=True)
    write_json(os.path.join(job_dir, "comparison.json"), result)
    with open(os.path.join(job_dir, "comparison.md"), "w") as f:
        f.write(render_markdown(result))
    plot_comparison(os.path.join(job_dir, "comparison.png"), result)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.experiment", allow_abbrev=False,
                                description="Train a grid of trainer.task runs on one split and compare them.",
                                epilog="Any other flag (--train_steps, --epochs, --batch_size, ...) goes to every "
                                       "trainer.task run unchanged.")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--job_dir", required=True, help="EXP: runs/, search/ and the comparison go here")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--feature_sets", default=None, help="default: every feature set of the dataset")
    p.add_argument("--repeats", type=int, default=1, help="seeds per cell: seed, seed+1, ...")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--search_trials", type=int, default=0)
    p.add_argument("--search_model", choices=MODELS, default="wide_deep")
    p.add_argument("--search_feature_set", default=None, help="default: all")
    p.add_argument("--no_baselines", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="delete a non-empty --job_dir first")
    return p


def run(argv=None) -> dict:
    args, extra = build_parser().parse_known_args(argv)
    if args.repeats < 1 or args.search_trials < 0:
        raise ValueError("--repeats must be >= 1 and --search_trials >= 0")
    if os.path.isdir(args.job_dir) and os.listdir(args.job_dir):
        if not args.overwrite:
            raise ValueError(f"{args.job_dir} is not empty: pass --overwrite to replace it")
        shutil.rmtree(args.job_dir)
    return run_experiment(args, extra)


def main(argv=None) -> int:
    configure_logging()
    try:
        result = run(argv)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    print(render_markdown(result))
    failed = sum(r.get("failed", 0) for r in result["runs"])
    return 1 if failed and not any(r.get("seeds") for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
