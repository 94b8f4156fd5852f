"""Synthetic, seeded example data: the same parameters always give the same rows.

Each generator returns features shaped like the real thing (heavy-tailed amounts, counts,
flags, bounded scores) and a label; the feature names and ranges match the model's
signature in models/<model>/model.yaml. A team replaces a generator with its real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # "float", "int" or "bool", as in the model signature
    min: float
    max: float
    categorical: bool  # codes without order: drift detection counts them instead of ranking


@dataclass(frozen=True)
class Table:
    features: list[Feature]
    X: Array
    y: npt.NDArray[np.int64]


class _Columns:
    """Collects columns with their declared range, clipping values into it."""

    def __init__(self) -> None:
        self.features: list[Feature] = []
        self.values: list[Array] = []

    def add(
        self,
        name: str,
        kind: str,
        bounds: tuple[float, float],
        values: npt.NDArray[Any],
        *,
        categorical: bool = False,
    ) -> None:
        low, high = bounds
        rounded = np.round(values) if kind in ("int", "bool") else values
        self.features.append(Feature(name, kind, low, high, categorical or kind == "bool"))
        self.values.append(np.clip(rounded, low, high).astype(np.float64))

    def table(self, y: npt.NDArray[np.int64]) -> Table:
        return Table(self.features, np.column_stack(self.values), y)


def _labels(rng: np.random.Generator, rows: int, rate: float) -> npt.NDArray[np.int64]:
    """Exactly round(rows * rate) positives, in random order."""
    y = np.zeros(rows, dtype=np.int64)
    y[: round(rows * rate)] = 1
    return rng.permutation(y)


def transactions(rows: int, seed: int, fraud_rate: float, stealth: float = 1.0) -> Table:
    """Card transactions; the higher `stealth`, the more frauds look like ordinary traffic."""
    rng = np.random.default_rng(seed)
    y = _labels(rng, rows, fraud_rate)
    # How far each fraud departs from normal behaviour: 0 for legitimate rows, in (0, 1)
    # for frauds, often small, so that some frauds are hard to tell from normal traffic.
    s = y * rng.beta(2.0, stealth, rows)
    c = _Columns()
    avg_amount = rng.lognormal(3.6, 0.8, rows)
    amount = avg_amount * rng.lognormal(0.0, 0.5, rows) * (1 + 2.5 * s * rng.random(rows))
    c.add("amount", "float", (0.0, 50000.0), amount)
    night = rng.random(rows) < 0.1 + 0.5 * s
    c.add("hour", "int", (0, 23), np.where(night, rng.integers(0, 6, rows), rng.integers(6, 24, rows)))
    c.add("day_of_week", "int", (0, 6), rng.integers(0, 7, rows))
    c.add("merchant_risk", "float", (0.0, 1.0), rng.beta(2 + 3 * s, 8 - 3 * s))
    c.add("distance_km", "float", (0.0, 20000.0), rng.exponential(15 + 400 * s))
    c.add("card_age_days", "int", (0, 7300), rng.gamma(2.0, 400 - 250 * s))
    c.add("account_age_days", "int", (0, 18250), rng.gamma(2.5, 700 - 400 * s))
    c.add("txn_count_1h", "int", (0, 100), rng.poisson(0.4 + 2.5 * s))
    c.add("txn_count_24h", "int", (0, 500), rng.poisson(4 + 6 * s))
    c.add("avg_amount_30d", "float", (0.0, 50000.0), avg_amount)
    c.add("amount_ratio", "float", (0.0, 1000.0), amount / avg_amount)
    c.add("is_foreign", "bool", (0, 1), rng.random(rows) < 0.05 + 0.35 * s)
    c.add("is_online", "bool", (0, 1), rng.random(rows) < 0.4 + 0.4 * s)
    c.add("card_present", "bool", (0, 1), rng.random(rows) < 0.55 - 0.4 * s)
    c.add("new_device", "bool", (0, 1), rng.random(rows) < 0.05 + 0.3 * s)
    c.add("ip_risk", "float", (0.0, 1.0), rng.beta(1.5 + 2 * s, 10 - 4 * s))
    c.add("velocity_score", "float", (0.0, 100.0), rng.gamma(2.0 + 2 * s, 2.0))
    c.add("failed_logins_24h", "int", (0, 50), rng.poisson(0.2 + 0.8 * s))
    c.add("chargebacks_90d", "int", (0, 20), rng.poisson(0.05 + 0.3 * s))
    c.add("merchant_category", "int", (0, 19), rng.integers(0, 20, rows), categorical=True)
    c.add("device_trust", "float", (0.0, 1.0), rng.beta(8 - 4 * s, 2 + 2 * s))
    c.add("email_age_days", "int", (0, 10000), rng.gamma(2.0, 600 - 400 * s))
    c.add("address_mismatch", "bool", (0, 1), rng.random(rows) < 0.08 + 0.25 * s)
    c.add("pin_attempts", "int", (0, 10), rng.poisson(1.05 + 0.6 * s))
    c.add("mcc_risk", "float", (0.0, 1.0), rng.beta(2 + s, 6 - s))
    for i in range(1, 6):
        # Anonymised components, like the PCA features of public card-fraud data.
        c.add(f"pca_{i}", "float", (-50.0, 50.0), rng.normal(0.6 * s * (-1) ** i, 1.0 + 0.5 * s))
    return c.table(y)


def churn(rows: int, seed: int, churn_rate: float) -> Table:
    """Subscription customers; churn follows a logistic model of the features."""
    rng = np.random.default_rng(seed)
    c = _Columns()
    tenure = rng.integers(1, 73, rows).astype(np.float64)
    monthly = rng.normal(65, 25, rows).clip(15, 150)
    calls = rng.poisson(1.5, rows).astype(np.float64)
    monthly_contract = (rng.random(rows) < 0.5).astype(np.float64)
    fiber = (rng.random(rows) < 0.4).astype(np.float64)
    late = rng.poisson(0.5, rows).astype(np.float64)
    satisfaction = rng.uniform(1, 5, rows)
    c.add("tenure_months", "int", (0, 120), tenure)
    c.add("monthly_charges", "float", (0.0, 500.0), monthly)
    c.add("total_charges", "float", (0.0, 60000.0), monthly * tenure)
    c.add("support_calls", "int", (0, 50), calls)
    c.add("monthly_contract", "bool", (0, 1), monthly_contract)
    c.add("fiber_optic", "bool", (0, 1), fiber)
    c.add("late_payments", "int", (0, 24), late)
    c.add("satisfaction", "float", (1.0, 5.0), satisfaction)
    logit = (
        -0.04 * tenure + 0.015 * monthly + 0.45 * calls + 1.2 * monthly_contract + 0.5 * fiber + 0.6 * late
    ) - 0.7 * satisfaction
    noisy = logit + rng.logistic(0, 1, rows)
    # The threshold that gives exactly the requested churn rate.
    y = (noisy >= np.quantile(noisy, 1 - churn_rate)).astype(np.int64)
    return c.table(y)


GENERATORS: dict[str, Callable[..., Table]] = {"transactions": transactions, "churn": churn}


def generate(name: str, rows: int, seed: int, **options: Any) -> Table:
    if name not in GENERATORS:
        raise SystemExit(f"params.yaml: data.generator {name!r} is unknown; use one of {sorted(GENERATORS)}")
    return GENERATORS[name](rows=rows, seed=seed, **options)
