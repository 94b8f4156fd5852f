"""Receipts: each prediction's answer carries what was predicted, signed, so that its label can
be taken by any replica of any version of the model, at any time before the receipt expires.

A receipt is a JSON Web Token (RFC 7519) in the JWS compact serialization (RFC 7515) signed with
HS256 (HMAC-SHA256, RFC 7518 section 3.2), so any JWT library can read it. Its claims: `jti` (an
id this server made, unique across processes), `iat` and `exp` (seconds since the epoch),
`model`, `version`, `class` (the predicted class of each row) and `score` (each row's
probability of the positive class). The header's `kid` names the key that signed it.

The keys come from a file (in a cluster, the mounted Secret): one key per line, at least 32
characters each; the first signs, every one verifies, so a key is rotated by putting the new one
first and keeping the old one until the receipts it signed have expired.

Signing is done here, on every prediction: PyJWT's `encode` cost ~21 µs a receipt, this ~4 µs (a
fixed header, orjson and the standard library's HMAC). Verifying, once per label, is PyJWT's
(`jwt.decode` with HS256 alone allowed); the tests check PyJWT reads what is signed here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import orjson

from modelctl.core.errors import UserError
from serving.inputs import ClientError, show

ALGORITHM = "HS256"
MIN_KEY_CHARS = 32
CLAIMS = ("jti", "iat", "exp", "model", "version", "class", "score")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def key_id(key: bytes) -> str:
    """The `kid` of a key: the first 16 hex digits of its SHA-256 (names the key, reveals nothing)."""
    return hashlib.sha256(key).hexdigest()[:16]


def load_keys(path: str) -> list[bytes]:
    """The keys in `path`, one per line (blank lines and `#` comments skipped), the signing key first.

    Raises
    ------
    UserError
        The file cannot be read, holds no key, or a key shorter than MIN_KEY_CHARS characters.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(
            path, f"cannot read the receipt keys ({exc.strerror})", "check --feedback-secret"
        ) from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise UserError(path, "holds no receipt key", "write one key per line (e.g. 'openssl rand -hex 32')")
    short = [number for number, key in enumerate(keys, 1) if len(key) < MIN_KEY_CHARS]
    if short:
        raise UserError(
            path,
            f"key {short[0]} has fewer than {MIN_KEY_CHARS} characters",
            "use a random key of 32 characters or more (e.g. 'openssl rand -hex 32')",
        )
    return [key.encode() for key in keys]


@dataclass(frozen=True)
class Receipt:
    """A verified receipt: what one request predicted, row by row."""

    id: str
    model: str
    version: str
    classes: tuple[str, ...]  # the predicted class of each row
    scores: tuple[float, ...]  # each row's probability of the positive class
    issued: float  # seconds since the epoch
    expires: float

    def issued_at(self) -> str:
        return datetime.fromtimestamp(self.issued, UTC).isoformat(timespec="seconds")


class Receipts:
    """Issues and verifies the receipts of one served version.

    Parameters
    ----------
    keys
        The signing key first, then older keys still verified (see `load_keys`).
    model, version, classes
        The served version and the model's class names (shared by its versions).
    ttl
        Seconds a receipt takes a label after its prediction.
    clock
        Seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        keys: Sequence[bytes],
        model: str,
        version: str,
        classes: Sequence[str],
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model, self.version, self.classes, self.ttl = model, version, tuple(classes), ttl
        self.clock = clock
        self._signing = keys[0]
        self._keys = {key_id(key): key for key in keys}
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": key_id(keys[0])}
        self._header = _b64(orjson.dumps(header)) + b"."
        # A random prefix per process and a counter: unique across replicas without coordination.
        self._prefix = secrets.token_hex(12)
        self._ids = itertools.count(1)

    def issue(self, classes: list[str], scores: list[float]) -> str:
        """A signed receipt for one request's rows: their predicted classes and positive-class scores."""
        now = int(self.clock())
        claims = {
            "jti": f"{self._prefix}{next(self._ids):x}",
            "iat": now,
            "exp": now + math.ceil(self.ttl),
            "model": self.model,
            "version": self.version,
            "class": classes,
            "score": scores,
        }
        signed = self._header + _b64(orjson.dumps(claims))
        return (signed + b"." + _b64(hmac.digest(self._signing, signed, "sha256"))).decode()

    def verify(self, token: object) -> Receipt:
        """The receipt `token` holds, if this model's keys signed it and it has not expired.

        Raises
        ------
        ClientError
            422 (`invalid_receipt`) for a token that is not a receipt, is signed by another key
            or changed, or is of another model; 410 (`expired_receipt`) once it has expired.
        """
        if type(token) is not str or not token:
            raise self._invalid("send the receipt string of the prediction's answer")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if type(kid) is str else None
            if key is None:
                raise self._invalid(
                    "it was signed by a key this server does not hold (a rotated-out key, or another "
                    "model's or stack's); send the receipt as the prediction's answer gave it"
                )
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": list(CLAIMS), "verify_exp": False}
            )
        except jwt.InvalidTokenError as exc:
            raise self._invalid(
                f"it does not verify ({exc}); send the receipt exactly as the prediction's answer gave it"
            ) from None
        receipt = self._receipt(claims)
        if receipt.model != self.model:
            raise self._invalid(
                f"it is a receipt of model {show(receipt.model)}; send it to that model's servers"
            )
        now = self.clock()
        if now >= receipt.expires:
            expired = datetime.fromtimestamp(receipt.expires, UTC).isoformat(timespec="seconds")
            raise ClientError(
                410,
                "expired_receipt",
                f"the receipt of {receipt.id} ({receipt.model} {receipt.version}, predicted at "
                f"{receipt.issued_at()}) expired at {expired}: a prediction takes its label within "
                f"{self.ttl / 86400:g} days; this label cannot be counted",
            )
        return receipt

    def _receipt(self, claims: dict[str, Any]) -> Receipt:
        classes, scores = claims["class"], claims["score"]
        fields_ok = (
            all(type(claims[name]) is str for name in ("jti", "model", "version"))
            and all(type(claims[name]) in (int, float) for name in ("iat", "exp"))
            and type(classes) is list
            and type(scores) is list
            and len(classes) == len(scores) > 0
            and all(name in self.classes for name in classes)
        )
        if not fields_ok:
            raise self._invalid("its claims are not a prediction's; send the receipt the answer gave")
        return Receipt(
            id=str(claims["jti"]),
            model=str(claims["model"]),
            version=str(claims["version"]),
            classes=tuple(str(name) for name in classes),
            scores=tuple(float(score) for score in scores),
            issued=float(claims["iat"]),
            expires=float(claims["exp"]),
        )

    @staticmethod
    def _invalid(why: str) -> ClientError:
        return ClientError(422, "invalid_receipt", f"the receipt is not valid: {why}")
