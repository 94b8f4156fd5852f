"""`python -m onebox.sinks`: where the local Alertmanager delivers, one file per message.

An SMTP server (aiosmtpd) stores each email as `<time>-<id>.eml`; an HTTP server stores each
webhook or Slack post as `<time>-<receiver>-<id>.json`. Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


def store(mailbox: Path, suffix: str, data: bytes) -> Path:
    """Write one message atomically, named so a listing sorts by arrival."""
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}{suffix}"
    handle, temporary = tempfile.mkstemp(dir=mailbox, prefix=".incoming-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    target = mailbox / name
    os.replace(temporary, target)
    return target


class MailboxHandler:
    """aiosmtpd handler: every accepted message becomes one .eml file."""

    def __init__(self, mailbox: Path) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        header = f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        store(self.mailbox, ".eml", header + content)
        return "250 Message accepted for delivery"


def webhook_server(mailbox: Path, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            receiver = self.path.strip("/").replace("/", "-") or "webhook"
            store(mailbox, f"-{receiver}.json", body)
            self._answer(200, b'{"stored": true}\n')

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/healthz" else 404, b"{}\n")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            print(f"webhook: {format % args}", flush=True)

    return ThreadingHTTPServer((HOST, port), Handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onebox.sinks", description=__doc__)
    parser.add_argument("--mailbox", type=Path, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--webhook-port", type=int, required=True)
    args = parser.parse_args(argv)
    args.mailbox.mkdir(parents=True, exist_ok=True)
    smtp = Controller(MailboxHandler(args.mailbox), hostname=HOST, port=args.smtp_port)
    smtp.start()
    http = webhook_server(args.mailbox, args.webhook_port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(
        f"sinks: smtp {HOST}:{args.smtp_port}, webhook {HOST}:{args.webhook_port} -> {args.mailbox}",
        flush=True,
    )
    stopped.wait()
    http.shutdown()
    smtp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
