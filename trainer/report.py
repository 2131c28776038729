"""The evaluation report: PNG figures (matplotlib, Agg) and one self-contained index.html.

No external CSS, JS or fonts: the page and its PNGs are readable offline, copied anywhere together.
``write_report(report_dir, result, test, valid)`` is called by ``trainer.evaluate`` with the computed
metrics (``result``) and the scored test split (labels plus every scorer's predictions).
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os

import numpy as np

from trainer.baselines import taxi_distance
from trainer.metrics import CLASSIFICATION, calibration_bins, threshold_curve

# Sections of index.html, by id (tests check them).
COMMON_SECTIONS = ("summary", "metrics", "slices")
CLASSIFICATION_SECTIONS = ("curves", "calibration", "threshold", "confusion")
REGRESSION_SECTIONS = ("predicted-vs-actual", "residuals")

MODEL_COLOR = "#1f4e9c"
COLORS = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; } tr.model td { background: #eef3fb; font-weight: 600; }
td.best { color: #0a6b0a; font-weight: 700; }
img { max-width: 100%; border: 1px solid #ddd; margin: .4em 0; }
.note { color: #555; font-size: .9em; } code { background: #f4f4f4; padding: 0 .2em; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs img { max-width: 540px; }
"""


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(payload), f, indent=2, sort_keys=False)


def _clean(x):
    """JSON without NaN/inf (null instead) and with numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})
    return plt


def _save(fig, report_dir: str, name: str) -> str:
    path = os.path.join(report_dir, name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def _colors(names):
    out, i = {}, 0
    for n in names:
        if n == "model":
            out[n] = MODEL_COLOR
        else:
            out[n] = COLORS[i % len(COLORS)]
            i += 1
    return out


def plot_roc_pr(report_dir: str, y, scores: dict, metrics: dict) -> str:
    plt = _plt()
    colors = _colors(scores)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, p in scores.items():
        c = threshold_curve(y, p)
        lw = 2.4 if name == "model" else 1.4
        a.plot(c.fpr, c.tpr, color=colors[name], lw=lw, label=f"{name} (AUC {metrics[name]['roc_auc']:.3f})")
        b.plot(c.recall[1:], c.precision[1:], color=colors[name], lw=lw,
               label=f"{name} (AP {metrics[name]['pr_auc']:.3f})", drawstyle="steps-post")
    a.plot([0, 1], [0, 1], color="#999", ls=":", lw=1)
    a.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC, test split",
          xlim=(0, 1), ylim=(0, 1.01))
    base = float(np.mean(y))
    b.axhline(base, color="#999", ls=":", lw=1, label=f"positive rate {base:.3f}")
    b.set(xlabel="recall", ylabel="precision", title="Precision-recall, test split", xlim=(0, 1),
          ylim=(max(0.0, base - 0.1), 1.01))
    a.legend(loc="lower right", fontsize=8.5)
    b.legend(loc="lower left", fontsize=8.5)
    return _save(fig, report_dir, "roc_pr.png")


def plot_calibration(report_dir: str, y, scores: dict, metrics: dict) -> str:
    plt = _plt()
    colors = _colors(scores)
    fig, (a, b) = plt.subplots(2, 1, figsize=(6.5, 7), gridspec_kw={"height_ratios": [3, 1.2]}, sharex=True)
    a.plot([0, 1], [0, 1], color="#999", ls=":", lw=1, label="perfectly calibrated")
    for name, p in scores.items():
        bins = calibration_bins(y, p)
        a.plot(bins["mean_predicted"], bins["fraction_positive"], marker="o", ms=4 if name != "model" else 6,
               lw=2.4 if name == "model" else 1.2, color=colors[name],
               label=f"{name} (ECE {metrics[name]['ece']:.3f})")
    a.set(ylabel="observed positive rate", title="Calibration on test (10 equal-width bins)", xlim=(0, 1), ylim=(0, 1))
    a.legend(loc="upper left", fontsize=8.5)
    b.hist(scores["model"], bins=np.linspace(0, 1, 41), color=MODEL_COLOR)
    b.set_yscale("log")
    b.set(xlabel="predicted probability", ylabel="model rows (log)")
    return _save(fig, report_dir, "calibration.png")


def plot_thresholds(report_dir: str, y, p, threshold: dict) -> str:
    plt = _plt()
    c = threshold_curve(y, p)
    ok = np.isfinite(c.thresholds)
    t = c.thresholds[ok]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ax.plot(t, c.precision[ok], label="precision", color="#1f77b4", lw=1.8)
    ax.plot(t, c.recall[ok], label="recall", color="#ff7f0e", lw=1.8)
    ax.plot(t, c.accuracy[ok], label="accuracy", color="#2ca02c", lw=1.8)
    ax.plot(t, c.f1[ok], label="F1", color="#7f7f7f", lw=1.2, ls="--")
    v = threshold["value"]
    ax.axvline(v, color="#d62728", lw=1.5)
    i = int(np.argmin(np.abs(np.where(ok, c.thresholds, np.inf) - v)))
    ax.annotate(f"chosen threshold {v:.3f}\n({threshold['how']})\ntest: precision {c.precision[i]:.3f}, "
                f"recall {c.recall[i]:.3f},\naccuracy {c.accuracy[i]:.3f}",
                xy=(v, 0.5), xytext=(0.03, 0.2), textcoords="axes fraction", fontsize=8.5,
                bbox={"boxstyle": "round", "fc": "white", "ec": "#d62728"})
    ax.set(xlabel="threshold on P(positive)", ylabel="on test", title="Model: precision, recall, accuracy by threshold",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower center", fontsize=8.5, ncol=4)
    return _save(fig, report_dir, "thresholds.png")


def plot_confusion(report_dir: str, cm, threshold: float, label: str) -> str:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    for i in range(2):
        for j in range(2):
            share = cm[i, j] / max(cm[i].sum(), 1)
            ax.text(j, i, f"{cm[i, j]:,}\n{share:.1%} of row", ha="center", va="center", fontsize=11,
                    color="white" if share > 0.6 else "black")
    ax.set_xticks([0, 1], [f"predicted {label}=0", f"predicted {label}=1"])
    ax.set_yticks([0, 1], [f"actual {label}=0", f"actual {label}=1"])
    ax.set_title(f"Model on test, threshold {threshold:.3f}")
    return _save(fig, report_dir, "confusion.png")


def plot_predicted_vs_actual(report_dir: str, y, scores: dict, metrics: dict, strong: str) -> str:
    plt = _plt()
    shown = ["model"] + [strong] if strong in scores else ["model"]
    top = float(np.quantile(y, 0.995)) * 1.15 if len(y) else 1.0
    fig, axes = plt.subplots(1, len(shown), figsize=(5.4 * len(shown), 5), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=True):
        ax.scatter(y, scores[name], s=6, alpha=0.35, color=MODEL_COLOR if name == "model" else COLORS[0], lw=0)
        ax.plot([0, top], [0, top], color="#333", lw=1, ls="--", label="predicted = actual")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="actual fare + tolls ($)", ylabel="predicted ($)",
               title=f"{name}: RMSE \\${metrics[name]['rmse']:.2f}, MAE \\${metrics[name]['mae']:.2f}")
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=8.5)
    fig.suptitle(f"Test split, {len(y):,} trips (axes end at 1.15 x the 99.5th percentile fare)", fontsize=10)
    return _save(fig, report_dir, "predicted_vs_actual.png")


DISTANCE_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 15.0, np.inf)
MIN_BIN_TRIPS = 10  # distance bins with fewer trips get no mean or RMSE point


def plot_residuals_by_distance(report_dir: str, y, scores: dict, miles) -> str:
    plt = _plt()
    colors = _colors(scores)
    miles = np.asarray(miles)
    edges = np.array(DISTANCE_EDGES)
    ids = np.clip(np.searchsorted(edges, miles, side="right") - 1, 0, len(edges) - 2)
    centers = np.arange(len(edges) - 1)
    labels = [f"{a:g}-{b:g}" if np.isfinite(b) else f"{a:g}+" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    counts = np.bincount(ids, minlength=len(centers))
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    residual = scores["model"] - y
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=ids.size)
    a.scatter(ids + jitter, residual, s=5, alpha=0.3, color=MODEL_COLOR, lw=0, label="model, one trip")
    enough = counts >= MIN_BIN_TRIPS
    means = [residual[ids == k].mean() if enough[k] else np.nan for k in centers]
    a.plot(centers, means, color="#d62728", marker="o", lw=1.8, label="model, mean residual")
    a.axhline(0, color="#333", lw=1)
    lim = float(np.quantile(np.abs(residual), 0.995)) * 1.1 if residual.size else 1.0
    a.set(ylabel="predicted - actual ($)", ylim=(-lim, lim), title="Residuals by straight-line pickup-dropoff distance (test)")
    a.legend(loc="lower left", fontsize=8.5)
    for name, p in scores.items():
        err = [np.sqrt(np.mean((p[ids == k] - y[ids == k]) ** 2)) if enough[k] else np.nan for k in centers]
        b.plot(centers, err, marker="o", color=colors[name], lw=2.4 if name == "model" else 1.2, label=name)
    b.set(ylabel="RMSE ($, log scale)",
          xlabel=f"straight-line miles (trips per bin below; no point for bins under {MIN_BIN_TRIPS} trips)")
    b.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    b.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    b.yaxis.set_minor_formatter(NullFormatter())
    lo, hi = b.get_ylim()
    b.set_yticks([v for v in (0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200) if lo <= v <= hi])
    b.legend(loc="upper left", fontsize=8.5)
    b.set_xticks(centers, [f"{lab}\n{n:,}" for lab, n in zip(labels, counts, strict=True)], fontsize=8)
    return _save(fig, report_dir, "residuals_by_distance.png")


def plot_slices(report_dir: str, slices: dict, reference: str, top: int = 12) -> str:
    plt = _plt()
    names = list(slices)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 5.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        table = slices[name]
        rows = table["rows"][:top][::-1]
        loss = table["loss"]
        pos = np.arange(len(rows))
        ax.barh(pos + 0.2, [r[loss] for r in rows], height=0.4, color=MODEL_COLOR, label="model")
        ref_key = f"{reference} {loss}"
        ax.barh(pos - 0.2, [r.get(ref_key, np.nan) for r in rows], height=0.4, color=COLORS[0], label=reference)
        ax.set_yticks(pos, [f"{r['slice']} ({r['rows']})" for r in rows], fontsize=8.5)
        ax.set(xlabel=loss.replace("_", " "), title=f"{name}: worst {len(rows)} (rows >= {table['min_size']})")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, report_dir, "slices.png")


# ---------------------------------------------------------------- HTML
def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(columns: list[str], rows: list[list], classes: list[str] | None = None, best: dict | None = None) -> str:
    """HTML table; ``best`` maps a column index to the row index to highlight."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = []
        for j, v in enumerate(row):
            mark = ' class="best"' if best and best.get(j) == i else ""
            cells.append(f"<td{mark}>{v if isinstance(v, str) and v.startswith('<') else _fmt(v)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


METRIC_DIRECTION = {"roc_auc": "max", "pr_auc": "max", "log_loss": "min", "brier": "min", "ece": "min",
                    "accuracy@0.5": "max", "accuracy": "max", "f1": "max", "rmse": "min", "mae": "min", "r2": "max"}


def metrics_columns(task: str) -> list[str]:
    if task == CLASSIFICATION:
        return ["roc_auc", "pr_auc", "log_loss", "brier", "ece", "accuracy@0.5", "threshold", "accuracy",
                "precision", "recall", "f1"]
    return ["rmse", "mae", "bias", "r2"]


def _metrics_html(result: dict) -> str:
    cols = metrics_columns(result["task"])
    names = list(result["metrics"])
    rows = [[n] + [result["metrics"][n].get(c) for c in cols] for n in names]
    best = {}
    for j, c in enumerate(cols, start=1):
        direction = METRIC_DIRECTION.get(c)
        vals = [result["metrics"][n].get(c) for n in names]
        finite = [(v, i) for i, v in enumerate(vals) if isinstance(v, float) and math.isfinite(v)]
        if direction and finite:
            best[j] = (max if direction == "max" else min)(finite)[1]
    return _table(["scorer"] + cols, rows, ["model" if n == "model" else "" for n in names], best)


def write_report(report_dir: str, result: dict, test, valid=None) -> dict:
    """Writes the figures and index.html under ``report_dir``; returns {section id: [png names]}."""
    os.makedirs(report_dir, exist_ok=True)
    task = result["task"]
    y = test.split.y
    scores = test.scores
    metrics = result["metrics"]
    strong = result["baselines"][-1]["name"] if result["baselines"] else None
    figures: dict[str, list[str]] = {}
    if task == CLASSIFICATION:
        figures["curves"] = [plot_roc_pr(report_dir, y, scores, metrics)]
        figures["calibration"] = [plot_calibration(report_dir, y, scores, metrics)]
        figures["threshold"] = [plot_thresholds(report_dir, y, scores["model"], result["threshold"]["model"])]
        figures["confusion"] = [plot_confusion(report_dir, metrics["model"]["confusion"],
                                               metrics["model"]["threshold"], result["label"])]
    else:
        figures["predicted-vs-actual"] = [plot_predicted_vs_actual(report_dir, y, scores, metrics, strong)]
        if result["dataset"] == "taxi":
            figures["residuals"] = [plot_residuals_by_distance(report_dir, y, scores, taxi_distance(test.split))]
    if result["slices"] and any(t["rows"] for t in result["slices"].values()):
        figures["slices"] = [plot_slices(report_dir, result["slices"], strong)]
    result["figures"] = figures
    with open(os.path.join(report_dir, "index.html"), "w") as f:
        f.write(render_html(result))
    return figures


def _imgs(result: dict, section: str) -> str:
    return "".join(f'<img src="{html.escape(n)}" alt="{html.escape(section)}">'
                   for n in result.get("figures", {}).get(section, []))


def render_html(result: dict) -> str:
    task = result["task"]
    esc = html.escape
    t = result.get("trainer") or {}
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{esc(result['dataset'])} model evaluation</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(result['dataset'])}: {esc(str(t.get('model') or 'model'))} vs baselines</h1>",
        '<section id="summary"><h2>Summary</h2><ul>',
        f"<li>Task: {esc(task)} of <code>{esc(result['label'])}</code>; evaluated on the <b>test</b> split "
        f"({result['rows'].get('test', 0):,} rows); valid {result['rows'].get('valid', 0):,} rows.</li>",
        f"<li>Model: <code>{esc(result.get('saved_model', '?'))}</code>, signature <code>{esc(result.get('signature', '?'))}</code> "
        "on the raw tf.Examples of <code>OUT/raw/test</code>: exactly what serving serves.</li>",
        f"<li>Data: <code>{esc(result.get('data_dir', '?'))}</code>. Baselines are fitted on <code>OUT/raw/train</code>, "
        "the same split the model was trained on, and scored on the same test rows in the same order.</li>",
    ]
    if t:
        cfg = t.get("config") or {}
        parts.append(
            f"<li>Trainer: {esc(str(t.get('model')))} on feature set {esc(str(t.get('feature_set')))}, "
            f"learning rate {esc(str(cfg.get('learning_rate')))}, hidden units {esc(str(cfg.get('hidden_units')))}, "
            f"batch {esc(str(cfg.get('batch_size')))}, seed {esc(str(cfg.get('seed')))}; "
            f"{esc(str(t.get('epochs_run')))} epochs run, best epoch {esc(str(t.get('best_epoch')))}.</li>")
    if task == CLASSIFICATION:
        th = result["threshold"]["model"]
        parts.append(f"<li>Decision threshold: <b>{th['value']:.4f}</b> ({esc(th['how'])}; rule "
                     f"<code>{esc(th['rule'])}</code>). Every baseline gets its own threshold by the same rule.</li>")
    parts.append(f"<li>Written {esc(datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'))}.</li>"
                 "</ul></section>")

    parts.append('<section id="metrics"><h2>Model vs baselines (test)</h2>')
    parts.append(_metrics_html(result))
    if task == CLASSIFICATION:
        parts.append('<p class="note">roc_auc: exact (ties count half); pr_auc: average precision (no '
                     "interpolation); log_loss and brier on the probability; ece: expected calibration error "
                     "(10 bins); accuracy@0.5 at 0.5; threshold, accuracy, precision, recall and F1 at each scorer's "
                     "threshold chosen on valid. Green: best in its column.</p>")
    else:
        parts.append('<p class="note">Dollars; bias is the mean of predicted - actual; r2 the coefficient of '
                     "determination. Green: best in its column.</p>")
    parts.append("<ul>" + "".join(f"<li><b>{esc(b['name'])}</b>: {esc(b['description'])}</li>"
                                  for b in result["baselines"]) + "</ul>")
    if t.get("test"):
        own = ", ".join(f"{k} {v:.4f}" for k, v in t["test"].items() if isinstance(v, float))
        how = "; AUCs approximated with 1000 thresholds" if task == CLASSIFICATION else ""
        parts.append(f'<p class="note">The trainer\'s own test metrics (Keras, on the transformed shards{how}): '
                     f"{esc(own)}.</p>")
    parts.append("</section>")

    if task == CLASSIFICATION:
        cm = result["metrics"]["model"]["confusion"]
        parts += [
            '<section id="curves"><h2>ROC and precision-recall curves</h2>', _imgs(result, "curves"), "</section>",
            '<section id="calibration"><h2>Calibration</h2>',
            '<p class="note">Observed on-time rate per bin of predicted probability; the histogram shows '
            "where the model's predictions fall.</p>", _imgs(result, "calibration"), "</section>",
            '<section id="threshold"><h2>Precision, recall and accuracy by threshold</h2>',
            f"<p>The threshold is chosen on the valid split ({esc(result['threshold']['model']['how'])}), "
            f"then held fixed on test: <b>{result['threshold']['model']['value']:.4f}</b>.</p>",
            _imgs(result, "threshold"), "</section>",
            '<section id="confusion"><h2>Confusion matrix at the chosen threshold</h2>',
            _table(["", f"predicted {result['label']}=0", f"predicted {result['label']}=1"],
                   [[f"actual {result['label']}=0", cm[0][0], cm[0][1]],
                    [f"actual {result['label']}=1", cm[1][0], cm[1][1]]]),
            _imgs(result, "confusion"), "</section>",
        ]
    else:
        parts += [
            '<section id="predicted-vs-actual"><h2>Predicted vs actual</h2>', _imgs(result, "predicted-vs-actual"),
            "</section>",
        ]
        if result["dataset"] == "taxi":
            parts += [
                '<section id="residuals"><h2>Residuals by distance</h2>',
                '<p class="note">Distance is the straight-line (great-circle) distance between pickup and dropoff '
                "coordinates: the metered trip distance is not a feature (it is known only after the trip).</p>",
                _imgs(result, "residuals"), "</section>",
            ]

    parts.append('<section id="slices"><h2>Slices, worst first</h2>')
    ref = result["baselines"][-1]["name"] if result["baselines"] else None
    for name, table in result["slices"].items():
        loss = table["loss"]
        parts.append(f"<h3>{esc(name)}</h3><p class=\"note\">Sorted by the model's {esc(loss)} (worst first); "
                     f"slices with fewer than {table['min_size']} test rows are left out "
                     f"({table['slices_below_min_size']} of them).</p>")
        rows = table["rows"][:15]
        if rows:
            cols = list(rows[0])
            parts.append(_table(cols, [[r.get(c) for c in cols] for r in rows]))
            if len(table["rows"]) > 15:
                parts.append(f'<p class="note">... {len(table["rows"]) - 15} more slices in metrics.json.</p>')
        else:
            parts.append("<p>No slice is large enough.</p>")
    parts.append(_imgs(result, "slices"))
    if ref:
        parts.append(f'<p class="note">The "{esc(ref)}" column is that baseline on the same slice.</p>')
    parts.append("</section></body></html>")
    return "\n".join(parts)
