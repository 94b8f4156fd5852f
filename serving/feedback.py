"""Which predictions took their label: one Redis key per labelled receipt, kept until the receipt
has expired, so a label counts once whichever replica takes it, and whenever.

A prediction is remembered by its receipt (serving/receipts.py), which the application holds, not
by a server: replicas keep no memory of predictions. Only taking a label needs shared state, and
only until the receipt expires, since an expired receipt is refused anyway: the store's memory is
bounded by the labels taken within one receipt lifetime. The claim is one atomic Redis command,
`SET key label NX GET EX ttl` (Redis 7.0+), so two replicas taking the same label at once cannot
both count it: the second gets the label the first stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis.asyncio
from redis.exceptions import RedisError

from modelctl.core.contract import RECEIPT_KEYS_FILE, STORE_PASSWORD_FILE
from modelctl.core.errors import UserError
from serving.inputs import ClientError
from serving.options import Settings
from serving.receipts import Receipt, Receipts, load_keys

KEY_PREFIX = "modelctl:label:"
# Receipt expiry is judged by each replica's clock; the key outlives it by this much, so that a
# replica whose clock is up to this far behind another's still finds the label taken.
CLOCK_SKEW_S = 3600
TIMEOUT_S = 2.0


def stored_label(labels: list[str], value: float | None) -> bytes:
    """What the store keeps of a label: the request's labels and its value, as JSON."""
    return orjson.dumps([labels, value])


def label_path(
    settings: Settings, model: str, version: str, classes: Sequence[str]
) -> tuple[Receipts, LabelStore] | None:
    """The receipts and the store of a server with `--feedback-secret` and `--feedback-store`; None
    without either (the server then issues no receipts and takes no labels).

    Raises
    ------
    UserError
        One is given without the other, or the secret folder's files cannot be read.
    """
    if not settings.feedback_secret and not settings.feedback_store:
        return None
    if not (settings.feedback_secret and settings.feedback_store):
        given = "--feedback-secret" if settings.feedback_secret else "--feedback-store"
        raise UserError(
            given, "is given alone", "give both --feedback-secret and --feedback-store, or neither"
        )
    folder = Path(settings.feedback_secret)
    keys = load_keys(str(folder / RECEIPT_KEYS_FILE))
    password_file = folder / STORE_PASSWORD_FILE
    password = password_file.read_text(encoding="utf-8").strip() if password_file.is_file() else ""
    receipts = Receipts(keys, model, version, classes, ttl=settings.feedback_ttl_s)
    return receipts, LabelStore(settings.feedback_store, password)


class LabelStore:
    """The labels taken, in Redis at `url` (`redis://host:port/db`), with `password` if not empty."""

    def __init__(self, url: str, password: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise UserError(url, "is not a Redis URL", "give --feedback-store as redis://host:port/db")
        self.where = f"{parts.hostname}:{parts.port or 6379}"  # never the password a URL may hold
        self._redis = redis.asyncio.Redis.from_url(
            url, password=password or None, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )

    async def claim(self, receipt: Receipt, label: bytes, now: float) -> bytes | None:
        """Take `receipt`'s label: None when taken now (count it), else the label taken before.

        Raises
        ------
        ClientError
            503 (`feedback_store`) when the store cannot be reached or refuses: nothing is
            counted, and the label can be sent again.
        """
        ttl = max(math.ceil(receipt.expires - now), 1) + CLOCK_SKEW_S
        try:
            before = await self._redis.set(KEY_PREFIX + receipt.id, label, nx=True, get=True, ex=ttl)
        except RedisError as exc:
            raise ClientError(
                503,
                "feedback_store",
                f"the feedback store at {self.where} did not answer ({exc}); nothing was counted: "
                "send the label again later",
            ) from None
        return before if isinstance(before, bytes) else None

    async def close(self) -> None:
        await self._redis.aclose()
