"""Security checks: request content is data, never code; no credentials in logs or outputs; no pickles.

- The server gets a live pickle (one that creates a file when unpickled), as the raw body, in
  base64 as a tf.Example and in every string feature, and Python, YAML and jsonpickle code in every
  field, key, signature and model name: it answers 200 or a 4xx, never a 5xx, and the file is never
  created.
- The serving and pipeline code calls none of eval/exec/compile, pickle, marshal, shelve, dill,
  yaml.load or np.load(allow_pickle=True) (an AST check, so comments and strings do not count).
- A preprocessing run and a training run with fake secrets in the environment (a service-account
  key file, AWS keys) and in Beam's options (--service_account_email, --s3_secret_access_key, ...)
  leave no trace of them in manifest.json, rejected/, excluded/, any other output file, the
  metrics or the logs.
- Stages hand data over as TFRecords, JSON lines and SavedModels: no output is a pickle.
"""

from __future__ import annotations

import ast
import base64
import gzip
import json
import logging
import os
import pathlib
import pickle
import pickletools
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_flights_parse import BTS_HEADER, bts_row
from tests.test_load import PREDICT
from tests.test_serving import _raw_test_rows, _train, post, server


class _Live:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _status(url, body=None, raw=None, headers=None):
    import urllib.error
    import urllib.request

    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def security_model(flights_out, tmp_path_factory):
    return _train(flights_out, tmp_path_factory.mktemp("security_job"))


def test_request_content_is_never_evaluated_nor_unpickled(security_model, flights_out, tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    blob = pickle.dumps(_Live(command))
    # The payload is live: unpickled in another process, it creates its file.
    control = tmp_path / "control"
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=pickle.dumps(_Live(f"touch {control}")), check=True, timeout=60)
    assert control.exists()

    code = f"__import__('os').system('{command}')"
    yaml_code = f'!!python/object/apply:os.system ["{command}"]'
    b64 = base64.b64encode(blob).decode()
    _, instances = _raw_test_rows(flights_out, n=1)
    good = instances[0]
    strings = [k for k, v in good.items() if isinstance(v, str)]
    numbers = [k for k, v in good.items() if not isinstance(v, str)]
    ids = [k for k in strings if k != "dep_time_local"]  # a time the transform parses: garbage there is a 400
    assert ids and numbers
    # The windowed features sent (null where a window is empty), so that the server need not place the
    # instance in time (an unknown origin airport is a 400 there, as preprocessing rejects it).
    good = {**good, **{n: good.get(n) for n in ("avg_dep_delay", "avg_taxi_out", "avg_arr_delay")}}

    with server(security_model, tmp_path / "server.log") as (base, proc):
        url = base + PREDICT
        cases = [  # (what, body or raw bytes, headers, allowed statuses)
            ("pickle as the body", blob, {"Content-Type": "application/octet-stream"}, {400}),
            ("pickle as the body, pickle content type", blob, {"Content-Type": "application/x-python-pickle"}, {400}),
            ("pickle as a tf.Example", {"signature_name": "serving_tf_example", "instances": [{"b64": b64}]}, None,
             {400}),
            ("pickle in every string feature", {"instances": [{**good, **{k: {"b64": b64} for k in strings}}]}, None,
             {200, 400}),
            ("pickle in the columnar format", {"inputs": {**{k: [v] for k, v in good.items()},
                                                          **{k: [{"b64": b64}] for k in strings}}}, None, {200, 400}),
            ("pickle in every id feature (the model sees the bytes)",
             {"instances": [{**good, **{k: {"b64": b64} for k in ids}}]}, None, {200}),
            ("code in every string feature", {"instances": [{**good, **{k: code for k in strings}}]}, None, {200, 400}),
            ("code in every id feature (the model sees the string)",
             {"instances": [{**good, **{k: code for k in ids}}]}, None, {200}),
            ("code in every field", {"instances": [{k: code for k in good}]}, None, {400}),
            ("code in every numeric field", {"instances": [{**good, **{k: code for k in numbers}}]}, None, {400}),
            ("code as a feature name", {"instances": [{**good, code: 1}]}, None, {400}),
            ("code as the signature", {"signature_name": code, "instances": [good]}, None, {400}),
            ("code as the body", code.encode(), None, {400}),
            ("code as a JSON string body", json.dumps(code).encode(), None, {400}),
            ("YAML tag as the body", yaml_code.encode(), {"Content-Type": "application/x-yaml"}, {400}),
            ("YAML tag in a feature", {"instances": [{**good, strings[0]: yaml_code}]}, None, {200, 400}),
            ("jsonpickle object", {"py/object": "os.system", "py/reduce": [{"py/function": "os.system"}, command]},
             None, {400}),
            ("jsonpickle in instances", {"instances": [{"py/reduce": [{"py/function": "os.system"}, [command]]}]},
             None, {400}),
        ]
        answers = {}
        for what, body, headers, allowed in cases:
            raw = body if isinstance(body, bytes) else None
            status, text = _status(url, None if raw is not None else body, raw, headers)
            answers[what] = status if status == 200 else f"{status} {json.loads(text)['error'][:100]}"
            assert status in allowed, (what, status, text[:300])
        import urllib.parse

        status, _ = _status(base + "/v1/models/" + urllib.parse.quote(code, safe="") + ":predict", {"instances": [good]})
        answers["code as the model name"] = status
        assert status == 404
        status, body = post(url, {"instances": [good]})
        assert status == 200 and len(body["predictions"]) == 1
        assert proc.poll() is None
    print("\n" + json.dumps(answers, indent=1))
    assert not marker.exists(), "request content was executed"
    log = (tmp_path / "server.log").read_text()
    assert blob.hex() not in log and b64 not in log  # the log has one line per request, never its content


# ------------------------------------------------------------------ static: no eval, exec or unpickling
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
FORBIDDEN_ATTRS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
                   ("pd", "read_pickle"), ("pandas", "read_pickle"), ("torch", "load"), ("joblib", "load")}


def _code_files():
    files = [REPO / "trainer" / "serve.py", *sorted((REPO / "pipeline").rglob("*.py"))]
    files += sorted((REPO / "schemas").glob("*.py"))
    return files


def _violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{where}: imports {module}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{where}: calls {func.id}()")
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if (owner, func.attr) in FORBIDDEN_ATTRS or (owner in FORBIDDEN_MODULES):
                    found.append(f"{where}: calls {owner}.{func.attr}()")
                if func.attr == "literal_eval" or func.attr in ("eval", "exec") and owner in ("builtins", None):
                    found.append(f"{where}: calls .{func.attr}()")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where}: allow_pickle={ast.unparse(kw.value)}")
    return found


def test_serving_and_pipeline_code_never_evaluates_nor_unpickles():
    files = _code_files()
    assert len(files) > 10
    violations = [v for f in files for v in _violations(f)]
    assert not violations, violations


def test_the_static_check_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle\nimport yaml\nfrom dill import loads\nimport marshal, shelve\n"
                   "from cloudpickle import dumps\nimport jsonpickle.unpickler\n"
                   "def f(body):\n    eval(body)\n    exec(body)\n    compile(body, 'x', 'exec')\n"
                   "    __import__(body)\n    yaml.load(body)\n    pickle.loads(body)\n"
                   "    import numpy as np\n    np.load(body, allow_pickle=True)\n")
    found = _violations(bad)
    assert len(found) == 13, found


# ------------------------------------------------------------------ credentials and pickles in outputs
FAKE_PRIVATE_KEY = "FAKE-PRIVATE-KEY-MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-s3cr3t"
FAKE_SECRETS = {
    "private key": FAKE_PRIVATE_KEY,
    "key id": "fakekeyid0123456789abcdef0123456789abcd",
    "client email": "fake-sa-s3cr3t@fake-project-s3cr3t.iam.gserviceaccount.com",
    "aws secret": "fakeAWSs3cr3tKEYwJalrXUtnFEMIK7MDENGbPxRfiCY",
    "aws key id": "AKIAFAKES3CR3T000000",
    "aws session": "FAKEsessionTOKENs3cr3tIQoJb3JpZ2luX2VjE",
    "beam s3 secret": "fakeBeamS3s3cr3tOption",
    "beam s3 key id": "AKIAFAKEBEAMOPTION00",
    "service account option": "fake-worker-s3cr3t@fake-project.iam.gserviceaccount.com",
    "impersonation": "fake-impersonated-s3cr3t@fake-project.iam.gserviceaccount.com",
    "kms key": "projects/fake/locations/us/keyRings/fake/cryptoKeys/fake-kms-s3cr3t",
}


def _fake_credentials(tmp_path, monkeypatch):
    key = {
        "type": "service_account",
        "project_id": "fake-project-s3cr3t",
        "private_key_id": FAKE_SECRETS["key id"],
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{FAKE_PRIVATE_KEY}\n-----END PRIVATE KEY-----\n",
        "client_email": FAKE_SECRETS["client email"],
        "token_uri": "https://127.0.0.1:9/token",  # never reachable: nothing may try to use it
    }
    path = tmp_path / "fake-key.json"
    path.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_SECRETS["aws key id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRETS["aws secret"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_SECRETS["aws session"])
    return path


def _files(root: pathlib.Path):
    return sorted(p for p in root.rglob("*") if p.is_file())


def _contents(path: pathlib.Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data += gzip.decompress(data)
        except OSError:
            pass
    return data


def _is_pickle(data: bytes) -> bool:
    """A pickle of protocol 2 or later: its header, then opcodes that parse to the final STOP."""
    if len(data) < 3 or data[0] != 0x80 or data[1] not in range(2, 6) or data[-1:] != b".":
        return False
    try:
        for _ in pickletools.genops(data):  # reads opcodes, runs nothing
            pass
    except Exception:  # noqa: BLE001 - not a pickle
        return False
    return True


def _pickles(root: pathlib.Path) -> list[str]:
    found = []
    for p in _files(root):
        data = p.read_bytes()
        unzipped = b""
        if data[:2] == b"\x1f\x8b":
            try:
                unzipped = gzip.decompress(data)
            except OSError:
                pass
        if p.suffix in (".pkl", ".pickle", ".pickled", ".dill") or _is_pickle(data) or _is_pickle(unzipped):
            found.append(str(p.relative_to(root)))
    return found


def _secrets_in(text: bytes) -> list[str]:
    return [name for name, secret in FAKE_SECRETS.items() if secret.encode() in text]


def test_no_credentials_in_logs_manifest_or_outputs_and_no_pickles(tmp_path, monkeypatch, caplog, capfd):
    from pipeline.preprocess import run

    _fake_credentials(tmp_path, monkeypatch)
    rows = [bts_row(FL_NUM=str(i), FL_DATE=f"2015-01-0{1 + i % 3}", CRS_DEP_TIME=f"{6 + i % 14:02d}00",
                    DEP_TIME=f"{6 + i % 14:02d}10", DEP_DELAY="10.00", CRS_ARR_TIME=f"{9 + i % 14:02d}00",
                    ARR_TIME=f"{9 + i % 14:02d}05", ARR_DELAY="5.00") for i in range(60)]
    bad = [bts_row(DEP_DELAY="five"), bts_row(CANCELLED="1.00", DEP_TIME="", DEP_DELAY="", ARR_TIME="",
                                              ARR_DELAY="")]
    raw = tmp_path / "flights.csv"
    raw.write_text("\n".join([BTS_HEADER, *rows, *bad]) + "\n")
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    m = run(["--dataset", "flights", "--input", str(raw), "--output_dir", str(out), "--split_by", "hour",
             "--service_account_email", FAKE_SECRETS["service account option"],
             "--impersonate_service_account", FAKE_SECRETS["impersonation"],
             "--s3_access_key_id", FAKE_SECRETS["beam s3 key id"],
             "--s3_secret_access_key", FAKE_SECRETS["beam s3 secret"],
             "--dataflow_kms_key", FAKE_SECRETS["kms key"]])
    assert m["reconciled"] and m["rows_rejected"] == 1 and m["rows_excluded"] == 1 and m["rows_written"] == 60

    # Train on it too, with the same environment: metrics.json, checkpoints and the export.
    job = tmp_path / "job"
    _train(out, job)

    captured = capfd.readouterr()
    logs = (caplog.text + captured.out + captured.err).encode()
    assert len(caplog.records) > 10  # the logs were captured
    leaks = {}
    for name, text in [("logs", logs)] + [(str(p.relative_to(tmp_path)), _contents(p))
                                          for root in (out, job) for p in _files(root)]:
        if found := _secrets_in(text):
            leaks[name] = found
    assert not leaks, leaks
    manifest = (out / "manifest.json").read_text()
    assert set(json.loads(manifest)["options"]) == {"window_minutes", "split_by", "split_fractions", "airports",
                                                   "runner"}  # an allow-list, no Beam option
    assert list((out / "rejected").glob("*.jsonl")) and list((out / "excluded").glob("*.jsonl"))

    # No stage hands data over as a pickle: TFRecords, JSON lines, SavedModels and checkpoints only.
    assert not _pickles(out) and not _pickles(job), (_pickles(out), _pickles(job))
    kinds = {p.name.split(".", 1)[-1] if "." in p.name else p.name for p in _files(out)}
    assert {"tfrecord.gz", "jsonl", "json", "pb"} <= kinds, kinds


def test_the_pickle_check_finds_pickles(tmp_path):
    (tmp_path / "a.bin").write_bytes(pickle.dumps({"x": [1, 2]}))
    (tmp_path / "b.gz").write_bytes(gzip.compress(pickle.dumps(list(range(5)), protocol=5)))
    (tmp_path / "c.pkl").write_bytes(b"anything")
    (tmp_path / "d.tfrecord").write_bytes(b"\x80\x00\x00\x00\x00\x00\x00\x00" + os.urandom(200))
    (tmp_path / "e.json").write_text("{}")
    assert _pickles(tmp_path) == ["a.bin", "b.gz", "c.pkl"]
