"""The local stack's feedback store and Secret: Debian's redis-server, run as the cluster's
StatefulSet runs Redis (an append-only file written before each answer, no snapshots), and the
files of the `modelctl-feedback` Secret a pod mounts (the receipt keys, the store's password).

The keys and the password are made once per stack and kept across `modelctl up` and `down`, so
receipts issued before a restart still take their labels, as they do in a cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from modelctl.core.contract import RECEIPT_KEYS_FILE, STORE_PASSWORD_FILE
from modelctl.core.errors import UserError
from onebox.processes import Proc

STORE = "feedback-store"


def redis_server() -> str:
    """The path of Debian's redis-server; UserError naming the package when it is missing."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if not found:
        raise UserError("redis-server", "is not installed", "run 'make tools' (Debian package redis-server)")
    return found


def secret_folder(run: Path) -> Path:
    """The Secret's files under `run`, made on first use (mode 0600): the receipt keys, one
    random key (the first line signs), and the store's password."""
    folder = run / "feedback" / "secret"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RECEIPT_KEYS_FILE, STORE_PASSWORD_FILE):
        path = folder / name
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(secrets.token_hex(32) + "\n")
    return folder


def store_proc(run: Path, port: int, log: str) -> Proc:
    """The store's process on 127.0.0.1:`port`, its configuration and data under `run`/feedback."""
    folder = run / "feedback"
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    password = (secret_folder(run) / STORE_PASSWORD_FILE).read_text(encoding="utf-8").strip()
    config = folder / "redis.conf"
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(store_config(port, password, data))
    return Proc(
        name=STORE,
        kind="store",
        argv=[redis_server(), str(config)],
        port=port,
        health=store_url(port),
        log=log,
        fingerprint=STORE,
    )


def store_config(port: int, password: str, data: Path) -> str:
    """redis.conf of the store: local only, a password, every claim in the append-only file
    before it is answered (a label taken is never forgotten by a restart), no snapshots."""
    return (
        f"bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\n"
        f'dir {data}\nappendonly yes\nappendfsync always\nsave ""\ndaemonize no\nlogfile ""\n'
    )


def store_url(port: int) -> str:
    """The store's URL, as servers are given it (they read the password from the Secret's file)."""
    return f"redis://127.0.0.1:{port}/0"


def local_argv(argv: list[str], run: Path, port: int) -> list[str]:
    """A rendered server command with the cluster's store and Secret mount made this machine's."""
    local = {"--feedback-store": store_url(port), "--feedback-secret": str(secret_folder(run))}
    return [local.get(argv[index - 1], value) if index else value for index, value in enumerate(argv)]
