"""Runs a Python module (a Beam pipeline's command) and writes what Beam's Python engine measured
about it: element counts and sampled byte sizes of the PCollections that feed a GroupByKey (the
bytes a runner shuffles), and the per-transform execution times the SDK harness reports.

    python -m bench.beam_metrics --json M.json -m pipeline.preprocess --dataset flights ...

Nothing of the pipeline's own code is touched or imported: the module runs as ``python -m`` would
run it (``runpy``), and two methods of Beam's own runner are wrapped, both in Beam's public API:

- ``FnApiRunner.run_via_runner_api(pipeline_proto, options)``: the pipeline proto every run of the
  in-process engine goes through (``DirectRunner``'s Python engine, or an ``FnApiRunner`` named
  directly), from which the GroupByKeys and their inputs are read; and its ``RunnerResult``, whose
  ``monitoring_infos()`` are Beam's own measurements (``beam:metric:element_count:v1``,
  ``beam:metric:sampled_byte_size:v1`` per PCollection, ``beam:metric:pardo_execution_time:*`` per
  transform).
- ``Pipeline.run``: the number of pipeline runs, in case the command runs several.

Each run's metrics are written to ``--json`` as soon as it ends (the command may leave by
``os._exit``), with the CPU time the extraction itself took, so that it can be subtracted.

Shuffled bytes: for each GroupByKey, CoGroupByKey and (outermost) CombinePerKey of the proto, the
input PCollection's element count times its mean sampled byte size (Beam samples the encoded size
of some elements of every PCollection). A combine is counted at its input: a runner that lifts it
(partial combine before the shuffle, as Dataflow does) may shuffle less.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time

_RUNS: list[dict] = []
_OUT: str | None = None


def _strip(urn: str) -> str:
    return urn.replace("beam:metric:", "").replace(":v1", "")


def summarize(pipeline_proto, monitoring_infos) -> dict:
    """Shuffle inputs and per-transform times from a pipeline proto and its run's monitoring infos."""
    from apache_beam.metrics import monitoring_infos as mi
    from apache_beam.portability import common_urns

    gbk = common_urns.primitives.GROUP_BY_KEY.urn
    cpk = common_urns.composites.COMBINE_PER_KEY.urn
    cogbk = "beam:transform:co_group_by_key:v1"
    transforms = pipeline_proto.components.transforms
    # Which PCollections feed a shuffle, and the name of the transform that shuffles them.
    shuffle_inputs: dict[str, str] = {}
    inside_combine: set[str] = set()
    for t in transforms.values():
        if t.spec.urn == cpk:
            inside_combine.update(t.subtransforms)
    for tid, t in transforms.items():
        if t.spec.urn in (gbk, cogbk, cpk) and tid not in inside_combine:
            for pc in t.inputs.values():
                shuffle_inputs[pc] = t.unique_name
    counts: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    msecs: dict[tuple[str, str], float] = {}
    for info in monitoring_infos:
        labels = info.labels
        if info.urn == mi.ELEMENT_COUNT_URN:
            pc = labels.get(mi.PCOLLECTION_LABEL, "")
            counts[pc] = counts.get(pc, 0) + mi.extract_counter_value(info)
        elif info.urn == mi.SAMPLED_BYTE_SIZE_URN:
            pc = labels.get(mi.PCOLLECTION_LABEL, "")
            d = mi.extract_distribution(info)  # (count, sum, min, max)
            c, s = sizes.get(pc, (0, 0))
            sizes[pc] = (c + d[0], s + d[1])
        elif info.urn in (mi.START_BUNDLE_MSECS_URN, mi.PROCESS_BUNDLE_MSECS_URN, mi.FINISH_BUNDLE_MSECS_URN,
                          mi.TOTAL_MSECS_URN):
            step = labels.get(mi.PTRANSFORM_LABEL, "")
            key = (step, _strip(info.urn))
            msecs[key] = msecs.get(key, 0) + mi.extract_counter_value(info)

    shuffles = []
    for pc, name in shuffle_inputs.items():
        n = counts.get(pc)
        c, total = sizes.get(pc, (0, 0))
        mean = total / c if c else None
        shuffles.append({"transform": name, "pcollection": pc, "elements": n,
                         "mean_bytes": round(mean, 1) if mean is not None else None,
                         "bytes": round(n * mean) if n is not None and mean is not None else None})
    shuffles.sort(key=lambda r: -(r["bytes"] or 0))
    names = {tid: t.unique_name for tid, t in transforms.items()}
    per_transform: dict[str, dict[str, float]] = {}
    for (step, kind), v in msecs.items():
        per_transform.setdefault(names.get(step, step), {})[kind] = v
    return {
        "shuffles": shuffles,
        "shuffle_bytes": sum(r["bytes"] or 0 for r in shuffles),
        "shuffle_elements": sum(r["elements"] or 0 for r in shuffles),
        "shuffles_unmeasured": [r["transform"] for r in shuffles if r["bytes"] is None],
        "transform_msecs": per_transform,
        "transform_msecs_total": sum(v for d in per_transform.values() for k, v in d.items() if k != "total_msecs"),
        "pcollections_measured": len(counts),
        "monitoring_urns": sorted({_strip(i.urn) for i in monitoring_infos}),
    }


def _dump() -> None:
    if _OUT:
        tmp = _OUT + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"runs": _RUNS}, f, indent=1)
        os.replace(tmp, _OUT)


def install() -> None:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    original = fn_runner.FnApiRunner.run_via_runner_api

    def run_via_runner_api(self, pipeline_proto, options):
        result = original(self, pipeline_proto, options)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            entry = summarize(pipeline_proto, list(result.monitoring_infos()))
        except Exception as e:  # noqa: BLE001 - a measurement must not fail the run it measures
            entry = {"error": repr(e)}
        entry["extraction_cpu_s"] = round(time.process_time() - cpu0, 3)
        entry["extraction_wall_s"] = round(time.perf_counter() - wall0, 3)
        _RUNS.append(entry)
        _dump()
        return result

    fn_runner.FnApiRunner.run_via_runner_api = run_via_runner_api


def main() -> None:
    global _OUT
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--json" or args[2] != "-m":
        sys.exit(__doc__)
    _OUT, module, rest = os.path.abspath(args[1]), args[3], args[4:]
    _dump()
    install()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
