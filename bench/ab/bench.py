"""A/B experiment benchmark: the experiment analysis's error rates and sample sizes, and
`modelctl ab plan`'s prediction of them, against a naive repeated z-test.

Every run draws labelled requests one by one (each to the treatment with probability equal to
its share, correct with its arm's accuracy) and looks every 100 labels, up to a horizon; the
analysis (`modelctl.core.analysis.experiment`: `estimate`, `compare`, `verdict`, exactly as
`ab analyze` calls them) stops the run at its first decision. The naive z-test is a
fixed-sample two-sided test at alpha re-run at every look.

    python -m bench.ab.bench [--runs 1000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from statistics import NormalDist

import numpy as np

from modelctl.core.analysis import experiment

LOOK_EVERY = 100
ALPHA = 0.05
EFFECT = 0.02
POWER = experiment.DEFAULT_POWER
# (control accuracy, treatment accuracy, treatment share): the two cells, then others.
CELLS = (
    (0.90, 0.90, 0.5),
    (0.90, 0.92, 0.5),
    (0.90, 0.92, 0.2),
    (0.90, 0.93, 0.5),
    (0.80, 0.80, 0.5),
    (0.80, 0.82, 0.5),
    (0.90, 0.88, 0.5),
)
RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass(frozen=True)
class Run:
    """How one simulated experiment ended: its decision ("none" by the horizon) and labels then."""

    decision: str  # treatment | control | equivalent | none
    labels: int


@dataclass(frozen=True)
class Cell:
    control: float
    treatment: float
    share: float

    @property
    def planned(self) -> int:
        """`ab plan`'s labelled requests for this cell's true difference (at least EFFECT)."""
        labels = experiment.required_labels(
            self.control * (1 - self.control),
            self.treatment * (1 - self.treatment),
            self.share,
            difference=max(abs(self.treatment - self.control), EFFECT),
            effect=EFFECT,
            alpha=ALPHA,
            power=POWER,
        )
        assert labels is not None
        return labels


def _counts(cell: Cell, rng: np.random.Generator, horizon: int) -> tuple[np.ndarray, ...]:
    """Cumulative (labels, correct) per arm at each look."""
    looks = horizon // LOOK_EVERY
    to_treatment = rng.binomial(LOOK_EVERY, cell.share, looks)
    to_control = LOOK_EVERY - to_treatment
    right_t = rng.binomial(to_treatment, cell.treatment)
    right_c = rng.binomial(to_control, cell.control)
    return tuple(np.cumsum(a) for a in (to_control, right_c, to_treatment, right_t))


def run_analysis(cell: Cell, rng: np.random.Generator, horizon: int) -> Run:
    """One simulated experiment through the analysis's own functions, stopped at its decision."""
    n_c, right_c, n_t, right_t = _counts(cell, rng, horizon)
    for look in range(n_c.size):
        control = _accuracy(int(right_c[look]), int(n_c[look]))
        treatment = _accuracy(int(right_t[look]), int(n_t[look]))
        found = experiment.verdict(experiment.compare(control, treatment, EFFECT, ALPHA), EFFECT)
        if found is not None:
            return Run(found, (look + 1) * LOOK_EVERY)
    return Run("none", horizon)


def run_naive(cell: Cell, rng: np.random.Generator, horizon: int) -> Run:
    """A two-sided z-test at alpha at every look, as a dashboard refreshed daily invites."""
    n_c, right_c, n_t, right_t = _counts(cell, rng, horizon)
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    for look in range(n_c.size):
        p_c, p_t = right_c[look] / n_c[look], right_t[look] / n_t[look]
        se = math.sqrt(p_c * (1 - p_c) / n_c[look] + p_t * (1 - p_t) / n_t[look])
        if se > 0 and abs(p_t - p_c) > z * se:
            return Run("treatment" if p_t > p_c else "control", (look + 1) * LOOK_EVERY)
    return Run("none", horizon)


def _accuracy(correct: int, labels: int) -> experiment.Estimate:
    return experiment.estimate("accuracy", {("y", "y"): correct, ("y", "n"): labels - correct}, "y")


def simulate(cell: Cell, runs: int, seed: int, horizon: int, naive: bool = False) -> list[Run]:
    """`runs` experiments of `cell` (deterministic for a seed: numpy's PCG64, no BLAS)."""
    rng = np.random.default_rng(seed)
    method = run_naive if naive else run_analysis
    return [method(cell, rng, horizon) for _ in range(runs)]


def horizon(cell: Cell) -> int:
    """Looks go on to twice the plan (of the smallest effect, for equal arms)."""
    return 2 * math.ceil(cell.planned / LOOK_EVERY) * LOOK_EVERY


def row(cell: Cell, runs: list[Run], naive: list[Run]) -> str:
    better = (
        "treatment" if cell.treatment > cell.control else "control" if cell.treatment < cell.control else None
    )
    share = {
        d: sum(r.decision == d for r in runs) / len(runs)
        for d in ("treatment", "control", "equivalent", "none")
    }
    right = share[better] if better else 0.0
    wrong = (
        share["treatment"] + share["control"] - right
    )  # a winner that is not the better arm (any winner when equal)
    decided = sorted(r.labels for r in runs if r.decision != "none")
    p80 = decided[math.ceil(0.8 * len(runs)) - 1] if len(decided) >= math.ceil(0.8 * len(runs)) else None
    within = (
        sum(r.decision == better and r.labels <= cell.planned for r in runs) / len(runs)
        if better
        else sum(r.decision == "equivalent" and r.labels <= cell.planned for r in runs) / len(runs)
    )
    naive_wrong = sum(r.decision not in ("none", better) for r in naive) / len(naive)
    median = statistics.median(decided) if decided else math.nan
    return (
        f"| {cell.control:.2f} | {cell.treatment:.2f} | {cell.share:.0%} | {right:.1%} | {wrong:.1%} | "
        f"{share['equivalent']:.1%} | {share['none']:.1%} | {median:,.0f} | "
        f"{'-' if p80 is None else f'{p80:,}'} | {cell.planned:,} | {within:.1%} | {naive_wrong:.1%} |"
    )


HEADER = (
    "| control | treatment | treatment share | right winner | false winner | equivalent | undecided "
    "| median labels | 80th pct labels | plan | concluded within plan | naive false winner |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 runs per cell")
    args = parser.parse_args()
    runs = 100 if args.quick else args.runs
    began = time.perf_counter()
    rows = []
    for index, (control, treatment, share) in enumerate(CELLS):
        cell = Cell(control, treatment, share)
        limit = horizon(cell)
        rows.append(
            row(cell, simulate(cell, runs, index, limit), simulate(cell, runs, index, limit, naive=True))
        )
        print(rows[-1], flush=True)
    head = (
        f"A/B analysis benchmark: {runs} runs per cell, {date.today()}, {platform.machine()}, "
        f"{time.perf_counter() - began:.0f} s; alpha {ALPHA}, smallest effect {EFFECT}, "
        f"a look every {LOOK_EVERY} labels up to twice the plan, plan at power {POWER}"
    )
    RESULTS.write_text(f"# A/B analysis benchmark\n\n{head}\n\n{HEADER}\n" + "\n".join(rows) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
