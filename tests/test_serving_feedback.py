"""Receipts: their keys, rotation, and what a verifier refuses; the store's claim is atomic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelctl.core.errors import UserError
from serving.feedback import LabelStore, stored_label
from serving.inputs import ClientError
from serving.receipts import Receipts, load_keys
from tests.conftest import FeedbackStore, run_fresh

CLASSES = ["legit", "fraud"]
OLD, NEW = b"o" * 32, b"n" * 40


def receipts(keys: list[bytes], now: float = 1_000_000.0, version: str = "v1.0.0") -> Receipts:
    return Receipts(keys, "fraud-detection", version, CLASSES, ttl=7 * 86400, clock=lambda: now)


def test_keys_are_one_per_line_the_first_signs(tmp_path: Path) -> None:
    path = tmp_path / "receipt-keys"
    path.write_text(f"# rotated 2026-11\n{NEW.decode()}\n\n{OLD.decode()}\n")
    assert load_keys(str(path)) == [NEW, OLD]
    path.write_text("short\n")
    with pytest.raises(UserError, match="key 1 has fewer than 32 characters"):
        load_keys(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(UserError, match="holds no receipt key"):
        load_keys(str(path))


def test_a_rotated_key_still_verifies_what_it_signed() -> None:
    before = receipts([OLD]).issue(["fraud"], [0.8])
    rotated = receipts([NEW, OLD])
    assert rotated.verify(before).classes == ("fraud",)
    assert rotated.verify(rotated.issue(["legit"], [0.1])).classes == ("legit",)
    with pytest.raises(ClientError, match="a key this server does not hold") as refused:
        receipts([NEW]).verify(before)
    assert refused.value.status == 422


def test_a_receipt_expires_after_its_lifetime_and_not_before() -> None:
    token = receipts([OLD], now=1_000_000).issue(["fraud"], [0.8])
    week = 7 * 86400
    assert receipts([OLD], now=1_000_000 + week - 1).verify(token).expires == 1_000_000 + week
    with pytest.raises(ClientError, match="expired at") as refused:
        receipts([OLD], now=1_000_000 + week).verify(token)
    assert refused.value.status == 410


def test_receipt_ids_are_unique_across_issuers() -> None:
    issued = [receipts([OLD]) for _ in range(3)]
    ids = {r.verify(r.issue(["fraud"], [0.5])).id for r in issued for _ in range(100)}
    assert len(ids) == 300


def test_two_replicas_claiming_one_label_at_once_count_it_once(feedback_store: FeedbackStore) -> None:
    receipt = receipts([OLD], now=1_000_000).verify(receipts([OLD]).issue(["fraud"], [0.9]))
    label = stored_label(["fraud"], None)

    async def race() -> list[bytes | None]:
        # Eight clients, as eight replicas would be: one connection each.
        password = (feedback_store.secret / "store-password").read_text().strip()
        stores = [LabelStore(feedback_store.url, password) for _ in range(8)]
        try:
            return await asyncio.gather(*(store.claim(receipt, label, 1_000_000) for store in stores))
        finally:
            for store in stores:
                await store.close()

    answers = run_fresh(race())
    assert answers.count(None) == 1
    assert set(answers) - {None} == {label}


def test_a_store_url_must_be_redis() -> None:
    with pytest.raises(UserError, match="is not a Redis URL"):
        LabelStore("http://127.0.0.1:6379")
