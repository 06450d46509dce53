"""An HTTP proxy in front of a test object store that holds one request, so a test can SIGKILL a
writer at an exact point of a commit (``SIGKILL mid-commit``, issue #23):

* ``--when before``: the PUT whose path matches ``--hold`` never reaches the store (the writer is
  killed while its commit is in flight: data files written, no commit);
* ``--when after``: it reaches the store, and the answer is held (the commit landed, the writer
  never hears of it — delta-rs #2279's hidden commit).

In both cases the proxy creates ``--held`` when it holds, and keeps holding until it is stopped.

With ``--throttle``, every request whose path matches is answered as S3 answers a prefix over its
request rate (``503 SlowDown``), the others reach the store: a store error a retry may fix.
Its own process (``python -m bronze_assets_tests.store_proxy``), for the reason in
:func:`bronze_assets_tests.s3.start_moto`."""

from __future__ import annotations

import argparse
import http.client
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


def handler(upstream: str, hold: re.Pattern[str] | None, when: str | None, held: Path | None,
            throttle: re.Pattern[str] | None = None) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _hold(self) -> None:
            assert held is not None
            held.touch()
            while True:  # until the proxy is stopped
                time.sleep(1)

        def _slow_down(self) -> None:
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)

        def _forward(self) -> None:
            body = self._body()
            if throttle is not None and throttle.search(self.path):
                self._slow_down()
                return
            holding = self.command == "PUT" and hold is not None and hold.search(self.path) is not None
            if holding and when == "before":
                self._hold()
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
            finally:
                conn.close()
            if holding:
                self._hold()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

    return Forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--hold", help="regex of the path of the PUT to hold")
    parser.add_argument("--when", choices=("before", "after"), default="before")
    parser.add_argument("--held", type=Path, help="file created when holding")
    parser.add_argument("--throttle", help="regex of the paths answered 503 SlowDown")
    args = parser.parse_args()
    if args.hold and not args.held:
        parser.error("--hold needs --held")
    hold = re.compile(args.hold) if args.hold else None
    throttle = re.compile(args.throttle) if args.throttle else None
    server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                 handler(args.upstream, hold, args.when, args.held, throttle))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
