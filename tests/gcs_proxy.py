"""A loopback HTTPS proxy that lets TensorFlow's built-in ``gs://`` client talk to gcp-storage-emulator.

TensorFlow's GCS file system (libcurl inside libtensorflow_framework) has no endpoint setting: it
always calls ``https://www.googleapis.com/storage/v1/...``, ``.../upload/storage/v1/...`` and
``https://storage.googleapis.com/BUCKET/OBJECT``, and it ignores ``STORAGE_EMULATOR_HOST``. It
does honour ``HTTPS_PROXY`` and ``CURL_CA_BUNDLE``, like any libcurl client. So the test points
``HTTPS_PROXY`` here; this proxy answers ``CONNECT``, terminates TLS itself with a certificate for
those host names signed by a throw-away CA (the bundle ``CURL_CA_BUNDLE`` names) and forwards each
request, as plain HTTP, to the emulator on loopback. It never opens a connection anywhere else: a
``CONNECT`` to any other host is refused with 403 (Beam's DirectRunner, for one, tries to download
its Prism runner from GitHub), and a plain request for one gets a 502.

What it fixes on the way, each a gap between the emulator and the real service that TensorFlow hits:

* request bodies are de-chunked and sent with ``Content-Length`` (the emulator is HTTP/1.0);
* ``Expect: 100-continue`` is answered at once instead of after curl's one-second wait;
* a zero-byte ``uploadType=media`` upload (TensorFlow creating a "directory" object ``dir/``) is
  re-sent as ``uploadType=multipart``: the emulator's media upload fails on an empty body;
* requests reach the emulator with its own address as Host, so the ``mediaLink`` it stores for
  an object TensorFlow wrote works for Python clients, and the resumable-upload ``Location`` it
  builds from that Host is rewritten to ``https://<the host curl asked for>/...``, so curl comes
  back through this proxy;
* ``GET /storage/v1/b/BUCKET/storageLayout`` (TensorFlow's bucket check), which the emulator
  lacks, is answered from ``GET /storage/v1/b/BUCKET``;
* the OAuth token endpoints (``oauth2.googleapis.com/token``, ``www.googleapis.com/oauth2/v{3,4}/token``)
  answer a fixed bearer token, so clients holding the fake credentials file get one without any
  other server.

Run: ``python tests/gcs_proxy.py --port P --upstream 127.0.0.1:E --cert leaf+ca.pem --key key.pem``;
it prints ``ready`` once listening and logs one line per request to stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse

EMULATED_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
TOKEN_PATHS = {("oauth2.googleapis.com", "/token"), ("www.googleapis.com", "/oauth2/v3/token"), ("www.googleapis.com", "/oauth2/v4/token")}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding", "te", "trailer", "upgrade", "expect", "content-length"}
MAX_LINE = 65536
MAX_BODY = 1 << 30
IDLE_TIMEOUT_S = 120
UPSTREAM_TIMEOUT_S = 120
FAKE_TOKEN = "emulator-access-token"


class ProtocolError(Exception):
    pass


def read_head(rfile) -> tuple[str, list[tuple[str, str]]] | None:
    """The request line and headers, or None at a clean end of the connection."""
    line = rfile.readline(MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between requests
        line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise ProtocolError("request line too long")
    headers = []
    while True:
        h = rfile.readline(MAX_LINE + 1)
        if not h:
            raise ProtocolError("connection closed inside the headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def header(headers, name: str, default: str | None = None) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


def read_body(rfile, headers) -> bytes:
    if (header(headers, "transfer-encoding") or "").lower() == "chunked":
        parts, total = [], 0
        while True:
            size_line = rfile.readline(MAX_LINE + 1)
            if not size_line:
                raise ProtocolError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise ProtocolError("body too large")
            parts.append(rfile.read(size))
            rfile.readline(MAX_LINE + 1)
    length = int(header(headers, "content-length") or 0)
    if length > MAX_BODY:
        raise ProtocolError("body too large")
    return rfile.read(length) if length else b""


def send_response(wfile, status: int, reason: str, headers, body: bytes, head_only: bool = False) -> None:
    out = [f"HTTP/1.1 {status} {reason}\r\n"]
    out += [f"{k}: {v}\r\n" for k, v in headers if k.lower() not in HOP_BY_HOP]
    out.append(f"Content-Length: {len(body)}\r\n\r\n")
    wfile.write("".join(out).encode("latin-1"))
    if not head_only:
        wfile.write(body)
    wfile.flush()


def json_response(status: int, reason: str, payload) -> tuple[int, str, list, bytes]:
    return status, reason, [("Content-Type", "application/json; charset=UTF-8")], json.dumps(payload).encode()


class Proxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._lock = threading.Lock()  # the emulator serves one request at a time; queue here, not in its backlog

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, str, list, bytes]:
        out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        with self._lock:
            conn = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT_S)
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in out_headers:
                    conn.putheader(k, v)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            finally:
                conn.close()

    def handle(self, host: str, method: str, target: str, headers, body: bytes) -> tuple[int, str, list, bytes]:
        url = urllib.parse.urlsplit(target)
        path = url.path or "/"
        if (host, path) in TOKEN_PATHS:
            return json_response(200, "OK", {"access_token": FAKE_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
        if host not in EMULATED_HOSTS:
            return json_response(502, "Bad Gateway", {"error": f"gcs_proxy: {host} is not emulated; nothing leaves loopback"})
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        parts = path.split("/")
        if method == "GET" and len(parts) == 6 and path.startswith("/storage/v1/b/") and parts[5] == "storageLayout":
            status, reason, h, data = self.forward("GET", "/storage/v1/b/" + parts[4], headers, b"")
            if status != 200:
                return status, reason, h, data
            bucket = json.loads(data)
            return json_response(200, "OK", {
                "kind": "storage#storageLayout",
                "bucket": bucket.get("name", urllib.parse.unquote(parts[4])),
                "location": bucket.get("location", "US"),
                "locationType": bucket.get("locationType", "multi-region"),
            })
        if method == "POST" and path.startswith("/upload/storage/v1/b/") and query.get("uploadType") == ["media"] and not body:
            body, content_type = empty_multipart(query.get("name", [""])[0], header(headers, "content-type"))
            query["uploadType"] = ["multipart"]
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"] + [("Content-Type", content_type)]
            target = path + "?" + urllib.parse.urlencode(query, doseq=True)
        else:
            target = path + (("?" + url.query) if url.query else "")
        # The emulator builds mediaLink and the resumable-upload Location from the Host header: give it
        # its own address, so the links it stores work for Python clients, and point Location back here.
        upstream = "{}:{}".format(*self.upstream)
        headers = [(k, v) for k, v in headers if k.lower() != "host"] + [("Host", upstream)]
        status, reason, h, data = self.forward(method, target, headers, body)
        own = f"http://{upstream}/"
        h = [(k, f"https://{host}/" + v[len(own):] if k.lower() == "location" and v.startswith(own) else v) for k, v in h]
        return status, reason, h, data


def empty_multipart(name: str, content_type: str | None) -> tuple[bytes, str]:
    boundary = "gcs_proxy_empty_upload"
    meta = json.dumps({"name": name})
    body = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
        f"--{boundary}\r\nContent-Type: {content_type or 'application/octet-stream'}\r\n\r\n\r\n"
        f"--{boundary}--\r\n"
    )
    return body.encode(), f"multipart/related; boundary={boundary}"


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        self.connection.settimeout(IDLE_TIMEOUT_S)
        try:
            head = read_head(self.rfile)
            if head is None:
                return
            line, headers = head
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                host = target.rsplit(":", 1)[0].lower()
                if host not in EMULATED_HOSTS:  # e.g. Beam fetching its Prism runner from GitHub
                    log(f"CONNECT {target} refused: not emulated")
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                tls = self.server.tls.wrap_socket(self.connection, server_side=True)
                tls.settimeout(IDLE_TIMEOUT_S)
                self.serve(tls.makefile("rb"), tls.makefile("wb"), host, None)
                try:
                    tls.unwrap()
                except (OSError, ValueError):
                    pass
            else:  # plain HTTP: absolute-form proxy request or a direct one
                self.serve(self.rfile, self.wfile, None, (line, headers))
        except (OSError, ssl.SSLError, ProtocolError, ValueError) as e:
            log(f"connection error: {type(e).__name__}: {e}")

    def serve(self, rfile, wfile, tunnel_host: str | None, first) -> None:
        while True:
            if first is not None:
                (line, headers), first = first, None
            else:
                head = read_head(rfile)
                if head is None:
                    return
                line, headers = head
            method, target, version = line.split(" ", 2)
            host = tunnel_host or urllib.parse.urlsplit(target).hostname or (header(headers, "host") or "").split(":")[0]
            host = host.lower()
            if (header(headers, "expect") or "").lower() == "100-continue":
                wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                wfile.flush()
            body = read_body(rfile, headers)
            started = time.monotonic()
            try:
                status, reason, h, data = self.server.proxy.handle(host, method, target, headers, body)
            except (OSError, http.client.HTTPException) as e:
                status, reason, h, data = json_response(502, "Bad Gateway", {"error": f"gcs_proxy: upstream failed: {e}"})
            log(f"{method} https://{host}{target if target.startswith('/') else urllib.parse.urlsplit(target).path} "
                f"{len(body)}B -> {status} {len(data)}B {1000 * (time.monotonic() - started):.0f}ms")
            send_response(wfile, status, reason, h, data, head_only=method == "HEAD")
            if (header(headers, "connection") or "").lower() == "close" or version == "HTTP/1.0":
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, proxy: Proxy, tls: ssl.SSLContext):
        super().__init__(address, Handler)
        self.proxy = proxy
        self.tls = tls


def log(message: str) -> None:
    print(f"gcs_proxy {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of gcp-storage-emulator (loopback)")
    parser.add_argument("--cert", required=True, help="PEM: the leaf certificate followed by its CA")
    parser.add_argument("--key", required=True, help="PEM: the leaf's private key")
    args = parser.parse_args(argv)
    up_host, up_port = args.upstream.rsplit(":", 1)
    if up_host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--upstream must be on loopback")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    tls.set_alpn_protocols(["http/1.1"])
    server = Server(("127.0.0.1", args.port), Proxy((up_host, int(up_port))), tls)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(UPSTREAM_TIMEOUT_S)
    sys.exit(main())
