"""Online predictions over the TensorFlow Serving REST API, on RAW inputs (the model carries the transform).

    python -m trainer.serve --model_dir models/flights [--host 127.0.0.1] [--port 8501] [--model_name flights]

    POST /v1/models/<name>:predict   {"instances": [{...raw features...}, ...]}   (row format)
                                     {"inputs": {"feature": [...], ...}}           (columnar format)
                                     {"signature_name": "serving_tf_example", "instances": [{"b64": "..."}]}
    GET  /v1/models/<name>            model status
    GET  /v1/models/<name>/metadata   signatures, inputs and outputs
    POST /v1/models/<name>/events     {"records": [raw line, ...], "layout": ..., "header": ...} or {"events": [...]}
    GET  /v1/models/<name>/windows    the window store: events received, stored, duplicates, late, rejected

With a window store (``--window_store memory``, the default for a dataset with windowed features),
``serving_default`` row-format requests get the windowed features an instance leaves out filled from
the events posted before its prediction time, by the pipeline's own code (pipeline.online); the
response adds ``windows``, per instance: the names filled, their values, the store's watermark and
whether the windows may be incomplete.

The request bodies are those of TensorFlow Serving and Vertex AI, so clients move there unchanged.
Bad requests (malformed JSON, a missing required feature, a wrong type, an unknown field, too many
rows, too large a body) get a 400 naming the problem; request content is only ever parsed as JSON.
Concurrent ``serving_default`` requests are batched into one model call when they arrive together.
TensorFlow is imported where the model is loaded and called, so request handling imports without it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from pipeline.online.windows import DATASETS as WINDOWED_DATASETS  # noqa: E402
from pipeline.online.windows import BadEvents, OnlineWindows  # noqa: E402
from schemas import get_schema  # noqa: E402
from trainer.config import configure_logging  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
MAX_BODY_BYTES = 4 << 20
MAX_ROWS = 10_000
SERVING_INFO = os.path.join("assets.extra", "serving.json")


class BadRequest(ValueError):
    """A client error; the message names the field."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # "float" | "int" | "string"
    optional: bool


def _kind(tf_dtype) -> str:
    if tf_dtype.is_floating:
        return "float"
    if tf_dtype.is_integer:
        return "int"
    return "string"


class LoadedModel:
    """A SavedModel, its signatures' inputs, and which raw features may be missing."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        from trainer.export import resolve_export_dir

        self.export_dir = resolve_export_dir(model_dir)
        self.model = tf.saved_model.load(self.export_dir)
        self.version = os.path.basename(os.path.realpath(self.export_dir))
        info = _serving_info(model_dir, self.export_dir)
        optional = set(info.get("optional_features", ()))
        self.info = info
        self.inputs: dict[str, dict[str, InputSpec]] = {}
        self.outputs: dict[str, dict] = {}
        for sig_name, fn in self.model.signatures.items():
            _, kwargs = fn.structured_input_signature
            self.inputs[sig_name] = {n: InputSpec(n, _kind(s.dtype), n in optional) for n, s in kwargs.items()}
            self.outputs[sig_name] = fn.structured_outputs

    def predict(self, signature: str, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn = self.model.signatures[signature]
        out = fn(**{k: tf.constant(v) for k, v in columns.items()})
        return {k: v.numpy() for k, v in out.items()}


def _serving_info(model_dir: str, export_dir: str) -> dict:
    """What the export says about its inputs (assets.extra/serving.json) and, from the job's
    metrics.json, the dataset; without serving.json the dataset's schema says which inputs are optional."""
    import tensorflow as tf

    info: dict = {}
    metrics = os.path.join(model_dir, "metrics.json")
    if tf.io.gfile.exists(metrics):
        with tf.io.gfile.GFile(metrics) as f:
            info["dataset"] = json.load(f).get("dataset")
    path = os.path.join(export_dir, SERVING_INFO)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            return {**info, **json.load(f)}
    if not info.get("dataset"):
        logger.warning("no %s nor a metrics.json naming the dataset: every input is taken as required", SERVING_INFO)
        return info
    schema = get_schema(info["dataset"])
    return {**info, "optional_features": [n for n in schema.feature_names if not schema.columns[n].required]}


# ------------------------------------------------------------------ request -> tensors
def _value(spec: InputSpec, value, where: str):
    if isinstance(value, dict) and set(value) == {"b64"}:
        if spec.dtype != "string":
            raise BadRequest(f"{where}: 'b64' is only for string inputs, {spec.name!r} is {spec.dtype}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise BadRequest(f"{where}: invalid base64 in {spec.name!r}") from None
    if value is None:
        if not spec.optional:
            raise BadRequest(f"{where}: required feature {spec.name!r} is null")
        return math.nan if spec.dtype == "float" else ""
    if spec.dtype == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"{where}: feature {spec.name!r} must be a number, got {type(value).__name__}")
        return float(value)
    if spec.dtype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{where}: feature {spec.name!r} must be an integer, got {type(value).__name__}")
        return value
    if not isinstance(value, str):
        raise BadRequest(f"{where}: feature {spec.name!r} must be a string, got {type(value).__name__}")
    return value.encode("utf-8")


def _missing_value(spec: InputSpec, where: str):
    if not spec.optional:
        raise BadRequest(f"{where}: missing required feature {spec.name!r}")
    return math.nan if spec.dtype == "float" else ""


def _array(spec: InputSpec, values: list) -> np.ndarray:
    dtype = {"float": np.float32, "int": np.int64, "string": object}[spec.dtype]
    return np.asarray(values, dtype=dtype)


def parse_request(body: dict, specs: dict[str, InputSpec]) -> tuple[dict[str, np.ndarray], int, bool]:
    """A TF Serving request body -> (columns, rows, row_format)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'instances' or 'inputs'")
    unknown_keys = set(body) - {"instances", "inputs", "signature_name"}
    if unknown_keys:
        raise BadRequest(f"unknown request field(s) {sorted(unknown_keys)}")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("the request must have exactly one of 'instances' (rows) or 'inputs' (columns)")
    single = len(specs) == 1
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest("'instances' must be a non-empty list")
        _check_rows(len(rows))
        columns: dict[str, list] = {name: [] for name in specs}
        for i, row in enumerate(rows):
            where = f"instances[{i}]"
            if single and not (isinstance(row, dict) and set(row) <= set(specs)):
                row = {next(iter(specs)): row}  # a single-input signature takes bare values ({"b64": ...})
            if not isinstance(row, dict):
                raise BadRequest(f"{where}: must be an object of feature -> value")
            unknown = sorted(set(row) - set(specs))
            if unknown:
                raise BadRequest(f"{where}: unknown feature(s) {unknown}; expected {sorted(specs)}")
            for name, spec in specs.items():
                columns[name].append(_value(spec, row[name], where) if name in row else _missing_value(spec, where))
        return {n: _array(specs[n], v) for n, v in columns.items()}, len(rows), True
    inputs = body["inputs"]
    if single and (not isinstance(inputs, dict) or set(inputs) == {"b64"}):
        inputs = {next(iter(specs)): inputs}
    if not isinstance(inputs, dict):
        raise BadRequest("'inputs' must be an object of feature -> list of values")
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise BadRequest(f"inputs: unknown feature(s) {unknown}; expected {sorted(specs)}")
    lengths = {n: len(v) for n, v in inputs.items() if isinstance(v, list)}
    if len(lengths) != len(inputs) or len(set(lengths.values())) != 1:
        raise BadRequest("inputs: every feature must be a list, all of the same length")
    n = next(iter(lengths.values()))
    _check_rows(n)
    columns = {}
    for name, spec in specs.items():
        if name in inputs:
            columns[name] = _array(spec, [_value(spec, v, f"inputs[{name!r}][{i}]") for i, v in enumerate(inputs[name])])
        else:
            columns[name] = _array(spec, [_missing_value(spec, "inputs")] * n)
    return columns, n, False


def _check_rows(n: int) -> None:
    if n > MAX_ROWS:
        raise BadRequest(f"{n} rows in one request; the limit is {MAX_ROWS}")


def format_response(outputs: dict[str, np.ndarray], n: int, row_format: bool) -> dict:
    flat = {k: v.reshape(n, -1) for k, v in outputs.items()}

    def cell(a, i):
        values = a[i].tolist()
        return values[0] if len(values) == 1 else values

    if row_format:
        if len(flat) == 1:
            only = next(iter(flat.values()))
            return {"predictions": [cell(only, i) for i in range(n)]}
        return {"predictions": [{k: cell(a, i) for k, a in flat.items()} for i in range(n)]}
    return {"outputs": {k: [cell(a, i) for i in range(n)] for k, a in flat.items()}}


def _model_error(e: Exception) -> str:
    """The line of a TensorFlow error that says what was wrong, not "Graph execution error:"."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at node", "[[", "File "))]
    return (useful[0] if useful else lines[0] if lines else type(e).__name__)[:300]


# ------------------------------------------------------------------ batching
class Batcher:
    """Joins concurrent requests of one signature into a single model call (up to max_rows rows).

    One model call runs at a time; the requests that queued up meanwhile (the event loop keeps
    reading and parsing them while the call runs in a thread) go together into the next call. A
    lone request is not held back: with the default ``max_wait_s=0`` nothing waits for company
    (a fixed wait of even 2 ms would be most of a single row's latency); ``max_wait_s > 0`` waits
    that long for more requests when the queue is empty.
    """

    def __init__(self, model: LoadedModel, signature: str, max_rows: int = 1024, max_wait_s: float = 0.0):
        self._model = model
        self._signature = signature
        self._max_rows = max_rows
        self._max_wait = max_wait_s
        self._queue: asyncio.Queue | None = None

    async def predict(self, columns: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((columns, n, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            rows = batch[0][1]
            deadline = loop.time() + self._max_wait
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()  # already waiting: joins without delay
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                batch.append(item)
                rows += item[1]
            names = batch[0][0].keys()
            joined = {k: np.concatenate([c[k] for c, _, _ in batch]) for k in names}
            try:
                outputs = await loop.run_in_executor(None, self._model.predict, self._signature, joined)
            except Exception as e:  # noqa: BLE001 - the error goes back to the request that caused it
                if len(batch) == 1:
                    batch[0][2].set_exception(e)
                    continue
                # One bad request (e.g. an unparseable tf.Example) fails the whole joined call: ask each
                # request alone, so that only the bad one fails and the others get their predictions.
                for columns, _, future in batch:
                    try:
                        alone = await loop.run_in_executor(None, self._model.predict, self._signature, columns)
                    except Exception as e_alone:  # noqa: BLE001
                        future.set_exception(e_alone)
                    else:
                        future.set_result(alone)
                continue
            start = 0
            for _, n, future in batch:
                future.set_result({k: v[start:start + n] for k, v in outputs.items()})
                start += n


# ------------------------------------------------------------------ app
def create_app(model: LoadedModel, model_name: str, windows: OnlineWindows | None = None):
    """The app; with ``windows``, predict fills the windowed features from its store, and
    ``POST .../events`` feeds it, ``GET .../windows`` reports on it."""
    batchers = {sig: Batcher(model, sig) for sig in model.inputs}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def check_name(request: Request) -> JSONResponse | None:
        name = request.path_params["name"]
        if name != model_name:
            return error(404, f"model {name!r} not found; this server serves {model_name!r}")
        return None

    async def status(request: Request):
        return check_name(request) or JSONResponse({"model_version_status": [
            {"version": model.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]})

    async def metadata(request: Request):
        if (resp := check_name(request)) is not None:
            return resp
        sigs = {
            sig: {
                "inputs": {n: {"dtype": s.dtype, "optional": s.optional} for n, s in specs.items()},
                "outputs": {n: {"dtype": o.dtype.name, "shape": o.shape.as_list()} for n, o in model.outputs[sig].items()},
            }
            for sig, specs in model.inputs.items()
        }
        return JSONResponse({"model_spec": {"name": model_name, "version": model.version},
                             "metadata": {"signature_def": sigs, "serving": model.info}})

    async def predict(request: Request):
        if (resp := check_name(request)) is not None:
            return resp
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES):
            return error(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                return error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"malformed JSON: {e}")
        signature = body.get("signature_name", DEFAULT_SIGNATURE) if isinstance(body, dict) else DEFAULT_SIGNATURE
        if signature not in model.inputs:
            return error(400, f"unknown signature_name {signature!r}; available: {sorted(model.inputs)}")
        filled = None
        if (windows is not None and signature == DEFAULT_SIGNATURE and isinstance(body, dict)
                and isinstance(body.get("instances"), list)):
            try:  # the client's own input is judged first, as it came
                parse_request({**body, "instances": windows.without_context(body["instances"])}, model.inputs[signature])
                instances, filled = windows.fill(body["instances"])
            except (BadRequest, BadEvents) as e:
                return error(400, str(e))
            body = {**body, "instances": instances}
        try:
            columns, n, row_format = parse_request(body, model.inputs[signature])
        except BadRequest as e:
            return error(400, str(e))
        try:
            outputs = await batchers[signature].predict(columns, n)
        except Exception as e:  # noqa: BLE001 - e.g. an unparseable tf.Example: the client's input, a 400
            return error(400, f"the model rejected the input: {_model_error(e)}")
        request.state.rows = n
        response = format_response(outputs, n, row_format)
        if filled is not None:
            response["windows"] = filled
        return JSONResponse(response)

    async def read_json(request: Request):
        """The request's JSON body, or an error response."""
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                return None, error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(raw), None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, error(400, f"malformed JSON: {e}")

    async def events(request: Request):
        if (resp := check_name(request)) is not None:
            return resp
        if windows is None:
            return error(404, "this server keeps no window store (its model has no windowed features)")
        body, resp = await read_json(request)
        if resp is not None:
            return resp
        try:
            result = windows.ingest(body)
        except BadEvents as e:
            return error(400, str(e))
        request.state.rows = result["rows"]
        return JSONResponse(result)

    async def window_status(request: Request):
        if (resp := check_name(request)) is not None:
            return resp
        if windows is None:
            return error(404, "this server keeps no window store (its model has no windowed features)")
        return JSONResponse(windows.status())

    def logged(handler):
        async def wrapper(request: Request):
            started = time.perf_counter()
            response = await handler(request)
            rows = getattr(request.state, "rows", 0)
            logger.info("%s %s %d rows=%d %.1fms", request.method, request.url.path, response.status_code, rows,
                        (time.perf_counter() - started) * 1000)
            return response

        return wrapper

    return Starlette(routes=[
        Route("/v1/models/{name}", logged(status), methods=["GET"]),
        Route("/v1/models/{name}/metadata", logged(metadata), methods=["GET"]),
        Route("/v1/models/{name}:predict", logged(predict), methods=["POST"]),
        Route("/v1/models/{name}/events", logged(events), methods=["POST"]),
        Route("/v1/models/{name}/windows", logged(window_status), methods=["GET"]),
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="the trainer's --job_dir, or an export directory")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--model_name", help="the <name> in /v1/models/<name> (default: the dataset, else 'model')")
    parser.add_argument("--window_store", default="memory",
                        help="where the windowed features' events are kept: 'memory' (this process), "
                             "redis://HOST:PORT/DB (shared by replicas; Memorystore), or 'none' to leave the windowed "
                             "features to the caller")
    parser.add_argument("--window_minutes", type=int,
                        help="the windows' length (default: the preprocessing run's, from the model, else 60)")
    parser.add_argument("--allowed_lateness_minutes", type=int,
                        help="how long after its kind's latest event an event is still stored (default: a day); "
                             "the store keeps the window plus this")
    parser.add_argument("--freshness_tolerance_seconds", type=int, default=300,
                        help="an instance whose prediction time is this far past the latest event is flagged incomplete")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: its C++ INFO notes off, unless set
    configure_logging()
    try:
        model = LoadedModel(args.model_dir)
    except FileNotFoundError as e:
        parser.error(f"--model_dir {e}")
    name = args.model_name or model.info.get("dataset") or "model"
    windows = None
    dataset = model.info.get("dataset")
    if args.window_store != "none" and dataset in WINDOWED_DATASETS:
        minutes = args.window_minutes or model.info.get("window_minutes") or 60
        try:
            lateness = None if args.allowed_lateness_minutes is None else args.allowed_lateness_minutes * 60
            windows = OnlineWindows(dataset, minutes * 60, args.window_store, tolerance_s=args.freshness_tolerance_seconds,
                                    lateness_s=lateness)
        except Exception as e:  # noqa: BLE001 - a wrong flag or an unreachable Redis: a usage error, said plainly
            parser.error(f"--window_store {args.window_store}: {e}")
        logger.info("windowed features filled from a %d-minute window store (%s); events to POST %s",
                    minutes, args.window_store, f"/v1/models/{name}/events")
    logger.info("serving %s as %r on http://%s:%d/v1/models/%s", model.export_dir, name, args.host, args.port, name)
    uvicorn.run(create_app(model, name, windows), host=args.host, port=args.port, log_level="warning",
                limit_concurrency=256, timeout_keep_alive=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
