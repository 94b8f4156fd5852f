"""The feedback memory stays bounded in size and age, and a prediction is labelled once."""

from __future__ import annotations

from serving.feedback import PredictionMemory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_memory_forgets_the_oldest_beyond_its_capacity() -> None:
    memory = PredictionMemory(capacity=3, ttl=60, clock=Clock())
    for index in range(5):
        memory.remember(f"r{index}", [index % 2])
    assert len(memory) == 3
    assert memory.take("r0") is None
    assert memory.take("r1") is None
    assert memory.take("r4") == (0,)


def test_memory_counts_rows_so_large_batches_stay_bounded() -> None:
    memory = PredictionMemory(capacity=5, ttl=60, clock=Clock())
    memory.remember("small", [1])
    memory.remember("batch", [0, 1, 0, 1])
    assert len(memory) == 5
    memory.remember("another", [1, 1])
    assert len(memory) == 2
    assert memory.take("small") is None
    assert memory.take("batch") is None
    assert memory.take("another") == (1, 1)
    assert len(memory) == 0


def test_memory_forgets_predictions_older_than_its_ttl() -> None:
    clock = Clock()
    memory = PredictionMemory(capacity=100, ttl=10, clock=clock)
    memory.remember("old", [1])
    clock.now = 6
    memory.remember("new", [0])
    clock.now = 11
    assert memory.take("old") is None
    assert memory.take("new") == (0,)


def test_a_prediction_is_labelled_once() -> None:
    memory = PredictionMemory(capacity=10, ttl=10, clock=Clock())
    memory.remember("r", [1, 0])
    assert memory.take("r") == (1, 0)
    assert memory.take("r") is None
