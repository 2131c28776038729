"""The trainer's one typed configuration, filled from flags (and Vertex AI's AIP_* variables), and
the logging set-up of its entry points.

Nothing here imports TensorFlow, so flag parsing is tested without it. No dataset sizes live here:
row counts come from ``OUT/manifest.json``, vocabulary and bucket sizes from the transform output.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

MODELS = ("linear", "dnn", "wide_deep")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose INFO records are notes to their own developers (tfx-bsl's and tensorflow-transform's
# per-feature parse notes, tf.distribute's sharding timings, SavedModel's "assets written").
QUIET_LIBRARIES = ("absl", "tensorflow")


class UsageError(ValueError):
    """A flag combination that cannot run; reported without a traceback."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and paths of one training job."""

    data_dir: str
    job_dir: str
    model: str = "wide_deep"
    feature_set: str | None = None  # None: the schema's "all" set
    batch_size: int = 256  # per replica; the global batch is this times the number of replicas
    epochs: int = 10
    train_steps: int | None = None  # total steps; when set, an "epoch" is train_steps / epochs steps
    learning_rate: float = 0.001
    hidden_units: tuple[int, ...] = (64, 32)
    embedding_dim: int = 8
    dropout: float = 0.0
    max_wide_buckets: int = 100_000  # id features with more buckets are hashed into this many for the wide part
    early_stopping_patience: int = 3
    shuffle_buffer: int = 10_000
    seed: int = 42
    skew_tolerance: float = 1e-5
    # Where things go; each defaults to a folder of job_dir, Vertex AI's AIP_* variables win.
    model_dir: str = ""
    checkpoint_dir: str = ""
    tensorboard_dir: str = ""
    backup_dir: str = ""

    def __post_init__(self):
        if self.model not in MODELS:
            raise UsageError(f"--model must be one of {MODELS}, not {self.model!r}")
        for name in ("batch_size", "epochs", "embedding_dim", "max_wide_buckets", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1")
        if self.train_steps is not None and self.train_steps < 1:
            raise UsageError("--train_steps must be >= 1")
        if self.learning_rate <= 0:
            raise UsageError("--learning_rate must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("--dropout must be in [0, 1)")
        if self.model != "linear" and not self.hidden_units:
            raise UsageError(f"--model {self.model} needs --hidden_units")
        if any(u < 1 for u in self.hidden_units):
            raise UsageError("--hidden_units must be positive integers")

    @property
    def steps_per_epoch(self) -> int | None:
        """None: one pass over the train split per epoch."""
        if self.train_steps is None:
            return None
        return -(-self.train_steps // self.epochs)


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.task",
        description="Train a tf_keras model on a preprocessing output directory and export it with its transform.",
    )
    p.add_argument("--data_dir", required=True, help="the preprocessing output directory (OUT)")
    p.add_argument("--job_dir", "--job-dir", dest="job_dir", default=None,
                   help="where checkpoints, logs, metrics.json and the export go (default: parent of $AIP_MODEL_DIR)")
    p.add_argument("--model", choices=MODELS, default=TrainConfig.model)
    p.add_argument("--feature_set", default=None, help="a feature set of the dataset's schema (default: all)")
    p.add_argument("--batch_size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--train_steps", type=int, default=None,
                   help="total training steps over the repeated train split, spread over --epochs evaluations")
    p.add_argument("--learning_rate", type=float, default=TrainConfig.learning_rate)
    p.add_argument("--hidden_units", type=_units, default=TrainConfig.hidden_units, help="e.g. 64,32")
    p.add_argument("--embedding_dim", type=int, default=TrainConfig.embedding_dim)
    p.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    p.add_argument("--max_wide_buckets", type=int, default=TrainConfig.max_wide_buckets)
    p.add_argument("--early_stopping_patience", type=int, default=TrainConfig.early_stopping_patience)
    p.add_argument("--shuffle_buffer", type=int, default=TrainConfig.shuffle_buffer)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--skew_tolerance", type=float, default=TrainConfig.skew_tolerance)
    return p


def _strip(path: str) -> str:
    return path.rstrip("/") if len(path) > 1 else path


def parse_config(argv=None, environ=None) -> TrainConfig:
    """Flags (and AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR) -> TrainConfig."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    aip_model = environ.get("AIP_MODEL_DIR", "")
    job_dir = args.job_dir or (os.path.dirname(_strip(aip_model)) if aip_model else "")
    if not job_dir:
        raise UsageError("--job_dir is required (or run where $AIP_MODEL_DIR is set)")
    job_dir = _strip(job_dir)
    values = {k: v for k, v in vars(args).items() if k != "job_dir"}
    return TrainConfig(
        job_dir=job_dir,
        model_dir=_strip(aip_model) if aip_model else os.path.join(job_dir, "model"),
        checkpoint_dir=_strip(environ.get("AIP_CHECKPOINT_DIR") or os.path.join(job_dir, "checkpoints")),
        tensorboard_dir=_strip(environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(job_dir, "logs")),
        backup_dir=os.path.join(job_dir, "backup"),
        **values,
    )


def configure_logging(level: int = logging.INFO) -> None:
    """For an entry point (never at import): our records at ``level``, the libraries' at WARNING and up.

    The ``tensorflow`` logger is ``tf.get_logger()``; ``absl`` is absl's Python logger, which
    ``absl.logging.set_verbosity`` sets.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
