"""A real GCS JSON API server on loopback for ``gs://`` tests, and the environment that points every client at it.

``GcsEmulator(workdir)`` starts two subprocesses on free 127.0.0.1 ports and stops them on exit:

* gcp-storage-emulator (PyPI), in memory, with the bucket already created. Python clients reach it
  directly through ``STORAGE_EMULATOR_HOST``: google-cloud-storage, and so Beam's GcsIO /
  ``FileSystems`` with ``gs://`` paths.
* ``tests/gcs_proxy.py``, an HTTPS proxy for TensorFlow's own ``gs://`` file system, which has no
  endpoint setting (see that file). ``HTTPS_PROXY`` and ``CURL_CA_BUNDLE`` send TensorFlow's libcurl
  there; the proxy holds a certificate from a CA made here for this run only.

``emulator.env`` is what a process needs: the two above, plus a fake Application Default Credentials
file (an ``authorized_user`` whose token refresh the proxy answers), an empty gcloud config dir,
and the GCE metadata server pointed at a closed loopback port, so that no credential lookup waits,
retries, or leaves the machine. Tests run the code under test in a subprocess with this environment.

    with GcsEmulator(tmp_path) as gcs:
        gcs.upload("raw/x.csv", local_file)
        subprocess.run([...], env=gcs.env, timeout=...)
        assert gcs.exists("out/manifest.json")

``missing_requirements()`` names what is absent so a test can skip with the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
PROXY_SCRIPT = HERE / "gcs_proxy.py"
TLS_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
PROJECT = "emulator-project"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10


def missing_requirements() -> list[str]:
    """Why the emulator cannot run here (empty when it can)."""
    missing = []
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        missing.append("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    if importlib.util.find_spec("cryptography") is None:
        missing.append("cryptography is not installed")
    return missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tls_files(directory: pathlib.Path, hosts=TLS_HOSTS) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A one-run CA and a certificate for ``hosts`` signed by it: (ca.pem, leaf+ca chain.pem, leaf key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcs emulator test CA (one run)")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, chain_path, key_path = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, chain_path, key_path


class GcsEmulator:
    """gcp-storage-emulator plus the TLS proxy, as a context manager; see the module docstring."""

    def __init__(self, workdir: pathlib.Path, bucket: str = "bucket"):
        self.workdir = pathlib.Path(workdir)
        self.bucket = bucket
        self.emulator_port = 0
        self.proxy_port = 0
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> GcsEmulator:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator_port = free_port()
        self._spawn(
            "emulator",
            [
                sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                "--port", str(self.emulator_port), "--in-memory", "--default-bucket", self.bucket,
            ],
        )
        self._wait_until(self._emulator_up, "gcp-storage-emulator did not answer")

        ca, chain, key = write_tls_files(self.workdir)
        self.proxy_port = free_port()
        proxy = self._spawn(
            "proxy",
            [
                sys.executable, str(PROXY_SCRIPT), "--port", str(self.proxy_port),
                "--upstream", f"127.0.0.1:{self.emulator_port}", "--cert", str(chain), "--key", str(key),
            ],
            stdout=subprocess.PIPE,
        )
        line = proxy.stdout.readline().strip()  # the proxy prints "ready" once it listens, or dies
        if line != b"ready":
            raise RuntimeError(f"gcs proxy did not start: {line!r}; see {self.workdir / 'proxy.log'}")

        gcloud = self.workdir / "gcloud"
        gcloud.mkdir(exist_ok=True)
        adc = self.workdir / "adc.json"
        adc.write_text(json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "quota_project_id": PROJECT,
        }))
        closed = f"127.0.0.1:{free_port()}"  # nothing listens there: a metadata-server probe fails at once
        proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.env = {
            **os.environ,
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.emulator_port}",
            "HTTPS_PROXY": proxy_url,
            "https_proxy": proxy_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(ca),
            "REQUESTS_CA_BUNDLE": str(ca),
            "GOOGLE_APPLICATION_CREDENTIALS": str(adc),
            "CLOUDSDK_CONFIG": str(gcloud),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "GCE_METADATA_HOST": closed,
            "GCE_METADATA_IP": closed,
            "NO_GCE_CHECK": "True",
        }
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
            self.env.pop(name, None)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT_S)
            if proc.stdout:
                proc.stdout.close()
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def _spawn(self, name: str, cmd: list[str], stdout=None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "all_proxy")}
        proc = subprocess.Popen(cmd, stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        self._procs.append(proc)
        return proc

    def _wait_until(self, ready, message: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{message} within {START_TIMEOUT_S}s; see the logs in {self.workdir}")

    def _emulator_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.emulator_port}/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self, name: str) -> str:
        """The emulator's or the proxy's log so far ("emulator" or "proxy")."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- direct JSON API calls (no client library), for setting up and checking ----------------
    def _api(self, method: str, path: str, data: bytes | None = None, headers=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.emulator_port}{path}", data=data, method=method, headers=headers or {}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def upload(self, name: str, source: pathlib.Path | bytes) -> None:
        """Puts ``source`` (a local file or bytes) at ``gs://BUCKET/name``."""
        data = source if isinstance(source, bytes) else pathlib.Path(source).read_bytes()
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._api("POST", f"/upload/storage/v1/b/{self.bucket}/o?{query}", data, {"Content-Type": "application/octet-stream"})

    def list(self, prefix: str = "") -> dict[str, int]:
        """``{object name: size}`` under ``prefix``."""
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(self._api("GET", f"/storage/v1/b/{self.bucket}/o?{query}"))
        return {o["name"]: int(o["size"]) for o in listing.get("items") or []}

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        return self._api("GET", f"/storage/v1/b/{self.bucket}/o/{quoted}?alt=media")

    def exists(self, name: str) -> bool:
        with contextlib.suppress(urllib.error.HTTPError):
            quoted = urllib.parse.quote(name, safe="")
            self._api("GET", f"/storage/v1/b/{self.bucket}/o/{quoted}")
            return True
        return False
