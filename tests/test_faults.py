"""Training faults: a job killed with SIGKILL and restarted ends where an uninterrupted one does.

tests/test_trainer.py checks that a killed job resumes from its backup. Here the resumed job's
metrics are compared with those of an uninterrupted job with the same seed, steps and data. They
are not bit-identical (the restarted job's input pipeline starts its shuffle again, so the epochs
after the kill see other batches), but they must agree within a tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO
from tests.test_trainer import _env, _kill_after_first_backup, _train_argv

AUC_TOLERANCE = 0.02  # absolute
LOG_LOSS_TOLERANCE = 0.05  # relative
EPOCHS = 30


def _argv(data_dir, job_dir):
    return [sys.executable, "-m", "trainer.task",
            *_train_argv(data_dir, job_dir, "--model", "linear", "--train_steps", str(20 * EPOCHS), "--epochs",
                         str(EPOCHS), "--early_stopping_patience", str(EPOCHS), "--seed", "7")]


def test_resumed_job_ends_with_the_metrics_of_an_uninterrupted_one(flights_out, tmp_path):
    whole = subprocess.run(_argv(flights_out, tmp_path / "whole"), capture_output=True, text=True, timeout=600,
                           env=_env(), cwd=REPO)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    job = tmp_path / "killed"
    argv = _argv(flights_out, job)
    epochs_before_kill = _kill_after_first_backup(argv, job, tmp_path / "killed.log")
    assert not (job / "metrics.json").exists()
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from backup" in second.stderr
    resumed = json.loads((job / "metrics.json").read_text())

    assert resumed["initial_epoch"] >= 1 and resumed["epochs_run"] == EPOCHS - resumed["initial_epoch"]
    assert reference["initial_epoch"] == 0 and reference["epochs_run"] == EPOCHS
    assert resumed["skew"]["passed"] and reference["skew"]["passed"]
    figures = {}
    for split in ("valid", "test"):
        a, b = reference[split], resumed[split]
        figures[split] = {"auc": (round(a["auc"], 4), round(b["auc"], 4)),
                          "log_loss": (round(a["log_loss"], 4), round(b["log_loss"], 4))}
        assert abs(a["auc"] - b["auc"]) < AUC_TOLERANCE, (split, a["auc"], b["auc"])
        assert abs(a["log_loss"] - b["log_loss"]) <= LOG_LOSS_TOLERANCE * a["log_loss"], (split, a, b)
    print(f"\nkilled after {epochs_before_kill} logged epoch(s), resumed at epoch {resumed['initial_epoch'] + 1} "
          f"of {EPOCHS}; (uninterrupted, resumed): {json.dumps(figures)}; "
          f"wall {reference['wall_seconds']} s uninterrupted, {resumed['wall_seconds']} s resumed")
