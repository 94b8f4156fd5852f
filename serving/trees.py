"""Tree ensembles evaluated as bitvector tables in numpy: a few array operations per batch.

treelite's GTIL walks every tree node by node for every row (~15–20 µs a row for 150
trees of 15 leaves on the 2-core benchmark machine); this evaluates the same treelite model
with the QuickScorer idea (Lucchese et al., "QuickScorer: a fast algorithm to rank documents
with additive ensembles of regression trees", SIGIR 2015), vectorized over rows and trees:

- Leaves are numbered left to right in each tree. A split that sends a row right rules out
  the leaves of its left subtree: its *mask* has their bits cleared. A row's exit leaf is
  the lowest bit left set once the masks of every split that sends it right are ANDed.
- A split `x <= t` sends x right when t < x, so for one feature the splits that send x right
  are those with the smallest thresholds: a prefix of the feature's sorted thresholds. Each
  prefix's AND, per tree, is precomputed: a table row per distinct threshold, and one for a
  missing value (the splits that send it right).
- A batch is then: count, per row and feature, the thresholds below the value (one binary
  search of (feature, value) pairs, as complex numbers, which numpy orders lexicographically
  when neither part is NaN, among the sorted (feature, threshold) pairs; missing values are
  sent to their own row apart); gather one table row per feature and AND them (packed in
  64-bit words); take each tree's lowest set bit, its leaf value, and sum.

Models it does not cover (categorical splits, other comparisons, leaf vectors, more than
64 leaves a tree, more than one output) get None, and GTIL serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from serving.loader import Matrix

WORD_BITS = 64


def _lowest_bits() -> npt.NDArray[np.uint8]:
    """The position of the lowest set bit of every 16-bit number (0 for 0, never looked up)."""
    numbers = np.arange(1 << 16)
    lowest = numbers & -numbers
    table = np.zeros(1 << 16, dtype=np.uint8)
    table[1:] = np.log2(lowest[1:]).astype(np.uint8)
    return table


_LOWEST_BIT = _lowest_bits()


# treelite's model fields (its serialization spec v4): node kinds, comparison, task.
_LEAF, _NUMERICAL = 0, 1
_LESS_EQUAL = 3
_BINARY_CLASSIFIER = 0


@dataclass(frozen=True)
class _Split:
    tree: int
    feature: int
    threshold: float
    mask: int  # the tree's leaf bits, with those of the split's left subtree cleared
    missing_left: bool


@dataclass(frozen=True)
class _Tree:
    splits: list[_Split]
    leaf_values: list[float]


def _walk(fields: dict[str, npt.NDArray[Any]], tree: int) -> _Tree | None:
    """Leaves in left-to-right order and every split's mask; None for anything but `<=` splits
    and scalar leaves."""
    kinds, left, right = fields["node_type"].tolist(), fields["cleft"].tolist(), fields["cright"].tolist()
    if fields["leaf_vector_end"].any():
        return None
    leaf_values: list[float] = []
    spans: list[tuple[int, int, int]] = []  # (split node, first leaf of its left subtree, end)
    stack: list[tuple[int, bool]] = [(0, False)]  # (node, its left subtree is done)
    firsts: dict[int, int] = {}
    while stack:
        node, left_done = stack.pop()
        if kinds[node] == _LEAF:
            leaf_values.append(float(fields["leaf_value"][node]))
        elif kinds[node] != _NUMERICAL or fields["cmp"][node] != _LESS_EQUAL:
            return None
        elif not left_done:
            firsts[node] = len(leaf_values)
            stack += [(node, True), (left[node], False)]
        else:
            spans.append((node, firsts[node], len(leaf_values)))
            stack.append((right[node], False))
    if len(leaf_values) > WORD_BITS:
        return None
    full = (1 << len(leaf_values)) - 1
    splits = [
        _Split(
            tree,
            int(fields["split_index"][node]),
            float(fields["threshold"][node]) + 0.0,  # -0.0 and 0.0 compare equal: one threshold
            full & ~(((1 << (end - first)) - 1) << first),
            bool(fields["default_left"][node]),
        )
        for node, first, end in spans
    ]
    return _Tree(splits, leaf_values)


class TreeTables:
    """A binary classifier's trees as bitvector tables; `predict_proba` as treelite's GTIL gives it.

    Built from a treelite model's fields (see `tree_tables`). Rows: (n, features)
    float64, NaN going where each split sends missing values.
    """

    def __init__(self, trees: list[_Tree], width: int, base_score: float, features: int) -> None:
        count = len(trees)
        self.features = features
        leaves = max(len(tree.leaf_values) for tree in trees)
        bits = next(b for b in (8, 16, 32, 64) if leaves <= b)
        self._dtype = np.dtype(f"<u{bits // 8}")
        per_word = WORD_BITS // bits
        self._columns = -(-count // per_word) * per_word  # whole 64-bit words per table row
        self._leaf_base = np.arange(count, dtype=np.intp) * width
        values = np.zeros((count, width))
        for index, tree in enumerate(trees):
            values[index, : len(tree.leaf_values)] = tree.leaf_values
        self._values = values.ravel()
        self._count = count
        self._base = base_score
        splits = [split for tree in trees for split in tree.splits]
        used = sorted({split.feature for split in splits})
        self._used = np.array(used, dtype=np.intp)
        thresholds: list[float] = []
        starts, offsets, tables = [], [], []
        row = 0
        for feature in used:
            mine = sorted((s for s in splits if s.feature == feature), key=lambda s: s.threshold)
            distinct = sorted({s.threshold for s in mine})
            starts.append(len(thresholds))
            thresholds.extend(distinct)
            offsets.append(row)
            table = self._prefix_table(mine, distinct)
            tables.append(table)
            row += len(table)
        # (feature rank, threshold) as complex numbers, sorted: numpy compares them lexicographically.
        self._keys = np.empty(len(thresholds), dtype=np.complex128)
        self._keys.real = np.repeat(np.arange(len(used)), np.diff([*starts, len(thresholds)]))
        self._keys.imag = thresholds
        self._ranks = np.arange(len(used), dtype=np.float64)
        self._starts = np.array(starts, dtype=np.intp)
        self._offsets = np.array(offsets, dtype=np.intp)
        # The missing-value row of each feature: its table's last.
        self._missing_rows = self._offsets + np.array([len(t) - 1 for t in tables], dtype=np.intp)
        self._row_shift = self._offsets - self._starts  # from a search position to a table row
        self._table = np.ascontiguousarray(np.concatenate(tables)).view(np.uint64)

    def _prefix_table(self, splits: list[_Split], distinct: list[float]) -> npt.NDArray[Any]:
        """Row k: per tree, the AND of the masks of the splits whose threshold is one of the k
        smallest; then a row for a missing value (the splits that send it right)."""
        ones = np.iinfo(self._dtype).max
        table = np.full((len(distinct) + 2, self._columns), ones, dtype=self._dtype)
        current = table[0].copy()
        position = 0
        for k, threshold in enumerate(distinct, start=1):
            while position < len(splits) and splits[position].threshold == threshold:
                split = splits[position]
                current[split.tree] &= self._dtype.type(split.mask)
                position += 1
            table[k] = current
        for split in splits:
            if not split.missing_left:
                table[-1, split.tree] &= self._dtype.type(split.mask)
        return table

    def margins(self, rows: Matrix) -> npt.NDArray[np.float64]:
        """(n,) raw scores: the base score plus every tree's exit leaf value."""
        if rows.ndim != 2 or rows.shape[1] != self.features:
            raise ValueError(f"rows must have shape (n, {self.features}), not {rows.shape}")
        queries = np.empty((len(rows), len(self._ranks)), dtype=np.complex128)
        queries.real = self._ranks
        queries.imag = rows[:, self._used]
        # Keys before (feature, value): the feature's start plus its thresholds below the value.
        index = np.searchsorted(self._keys, queries) + self._row_shift
        if np.isnan(rows.sum()):  # NaN (or inf - inf) somewhere: find which values are missing
            index = np.where(np.isnan(queries.imag), self._missing_rows, index)
        words = np.bitwise_and.reduce(self._table[index], axis=1)
        exits = words.view(self._dtype)[:, : self._count]
        if self._dtype.itemsize <= 2:
            leaf = _LOWEST_BIT[exits]
        else:
            lowest = exits & (~exits + self._dtype.type(1))  # the lowest set bit alone
            leaf = np.frexp(lowest.astype(np.float64))[1] - 1  # its position: float64 holds 2**k exactly
        margin: npt.NDArray[np.float64] = self._values[leaf + self._leaf_base].sum(axis=1) + self._base
        return margin

    def predict_proba(self, rows: Matrix) -> Matrix:
        """(n, 2): the sigmoid of the margins for the positive class, its complement first."""
        margins = self.margins(rows)
        proba = np.empty((len(margins), 2))
        expit(margins, out=proba[:, 1])  # as scikit-learn's binomial loss computes it
        np.subtract(1.0, proba[:, 1], out=proba[:, 0])
        return proba


def tree_tables(model: Any) -> TreeTables | None:
    """Tables for a `treelite.Model`, read through its field accessors, or None if they cannot
    express it: only binary classifiers with a sigmoid, `<=` splits and scalar leaves."""
    header = model.get_header_accessor()
    if (
        header.get_field("task_type")[0] != _BINARY_CLASSIFIER
        or header.get_field("num_target")[0] != 1
        or header.get_field("postprocessor") != "sigmoid"
        or header.get_field("sigmoid_alpha")[0] != 1.0
        or header.get_field("average_tree_output")[0]
        or len(header.get_field("base_scores")) != 1
        or model.num_tree == 0
    ):
        return None
    names = ("node_type", "cleft", "cright", "split_index", "default_left", "leaf_value", "threshold", "cmp")
    trees = []
    for index in range(model.num_tree):
        accessor = model.get_tree_accessor(index)
        fields = {name: accessor.get_field(name) for name in (*names, "leaf_vector_end")}
        tree = _walk(fields, index)
        if tree is None:
            return None
        trees.append(tree)
    if not any(tree.splits for tree in trees):
        return None  # constant: nothing to tabulate
    width = max(len(tree.leaf_values) for tree in trees)
    return TreeTables(trees, width, float(header.get_field("base_scores")[0]), model.num_feature)
