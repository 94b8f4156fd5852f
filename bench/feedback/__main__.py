"""`python -m bench.feedback`: what the label path costs, against its baselines in the same run.

- per prediction: signing a receipt (serving/receipts.py), against serializing the same answer
  with orjson (what every prediction pays already);
- per label: verifying the receipt and claiming the label in a real Redis (Debian's
  redis-server, configured as the local stack and the cluster run it: append-only file fsynced
  before each answer), against a bare Redis GET round trip on the same connection (the floor);
- memory: what a replica keeps per outstanding prediction (tracemalloc over issued receipts),
  and what the store keeps per label taken (Redis' used_memory over the claims), scaled to a
  week at 1,000 predictions a second.

Any claim that does not count a fresh label, or a store error, fails the run (exit 1).
Writes the table to bench/feedback/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import redis
import redis.asyncio

from onebox import feedback, processes
from serving.feedback import LabelStore, stored_label
from serving.receipts import Receipts

HERE = Path(__file__).resolve().parent
CLASSES = ["legit", "fraud"]
TTL = 35 * 86400
ROUNDS, PER_ROUND = 5, 20_000
LABELS = 20_000
WEEK_PREDICTIONS = 1_000 * 7 * 86400


def per_call_us(work: Callable[[], object], n: int = PER_ROUND) -> float:
    """The median over ROUNDS of the mean µs per call of `work`."""
    means = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            work()
        means.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(means)


def prediction_costs(receipts: Receipts) -> tuple[float, float]:
    answer = {
        "model": "fraud-detection", "version": "v1.0.0", "request_id": "9f1c2a3b4c5d6e7f-1a2b",
        "prediction": "legit", "probability": [0.9268, 0.0732], "timestamp": "2026-12-06T06:16:14.381269+00:00",
    }  # fmt: skip
    baseline = per_call_us(lambda: orjson.dumps(answer))
    receipt = per_call_us(lambda: receipts.issue(["legit"], [0.0732]))
    return baseline, receipt


def replica_bytes(receipts: Receipts, n: int = 100_000) -> float:
    """Bytes a replica still holds per receipt issued (the receipts themselves go to the clients)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        receipts.issue(["legit"], [0.0732])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return max(after - before, 0) / n


async def label_costs(url: str, password: str, receipts: Receipts) -> tuple[float, float, float]:
    """(µs per bare GET, µs per verify + claim, store bytes per label)."""
    store = LabelStore(url, password)
    bare = redis.asyncio.Redis.from_url(url, password=password)
    tokens = [receipts.issue(["fraud"], [0.91]) for _ in range(LABELS)]
    label = stored_label(["fraud"], None)
    sync = redis.Redis.from_url(url, password=password)
    used_before = int(sync.info("memory")["used_memory"])
    started = time.perf_counter()
    for _ in range(LABELS):
        await bare.get("modelctl:bench:absent")
    get_us = (time.perf_counter() - started) / LABELS * 1e6
    started = time.perf_counter()
    for token in tokens:
        receipt = receipts.verify(token)
        if await store.claim(receipt, label, receipts.clock()) is not None:
            raise SystemExit(f"a fresh label was not counted: {receipt.id}")
    claim_us = (time.perf_counter() - started) / LABELS * 1e6
    per_label = (int(sync.info("memory")["used_memory"]) - used_before) / LABELS
    await store.close()
    await bare.aclose()
    sync.close()
    return get_us, claim_us, per_label


def main() -> int:
    keys = [os.urandom(32).hex().encode()]
    receipts = Receipts(keys, "fraud-detection", "v1.0.0", CLASSES, ttl=TTL)
    run = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    proc = feedback.store_proc(run, processes.free_port(), str(run / "store.log"))
    processes.start(proc, dict(os.environ), run)
    try:
        processes.wait_until_healthy(proc, 30)
        password = (feedback.secret_folder(run) / "store-password").read_text().strip()
        answer_us, receipt_us = prediction_costs(receipts)
        held = replica_bytes(receipts)
        get_us, claim_us, per_label = asyncio.run(
            label_costs(feedback.store_url(proc.port), password, receipts)
        )
    finally:
        processes.stop(proc)
    week_gb = per_label * WEEK_PREDICTIONS / 1e9
    rows = [
        ("per prediction: sign its receipt", f"{receipt_us:.1f} µs", f"orjson answer: {answer_us:.1f} µs"),
        ("per label: verify + claim in Redis", f"{claim_us:.0f} µs", f"bare Redis GET: {get_us:.0f} µs"),
        ("replica memory per outstanding prediction", f"{held:.2f} bytes", "(the receipt is the client's)"),
        ("store memory per label taken (until expiry)", f"{per_label:.0f} bytes", ""),
        ("a week at 1,000 predictions/s, every one labelled", f"store {week_gb:.1f} GB, replicas 0", ""),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    table = "\n".join(
        ["| what | label path | baseline, same run |", "|---|---|---|"]
        + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    )
    text = f"# bench/feedback, {when} (load average {load:.1f})\n\n{table}\n"
    (HERE / "RESULTS.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
