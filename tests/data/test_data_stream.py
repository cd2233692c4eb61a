"""WindowStream: deterministic, seamless across epochs, resumable from a JSON state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from muomni.data import WindowStream
from muomni.errors import DataError


def test_takes_concatenate_to_one_take() -> None:
    a, b = WindowStream(50, seed=3), WindowStream(50, seed=3)
    pieces = np.concatenate([a.take(8), a.take(8), a.take(0), a.take(37), a.take(60)])
    whole = b.take(16 + 37 + 60)
    assert pieces.dtype == np.int64 and np.array_equal(pieces, whole)


def test_each_epoch_is_a_seeded_permutation_and_epochs_join_seamlessly() -> None:
    stream = WindowStream(10, seed=5)
    first = stream.take(7)
    assert (stream.epoch, stream.position) == (0, 7)
    second = stream.take(7)
    assert (stream.epoch, stream.position) == (1, 4)
    got = np.concatenate([first, second])
    assert sorted(got[:10].tolist()) == list(range(10))
    assert np.array_equal(got[:10], np.random.default_rng([5, 0]).permutation(10))
    assert np.array_equal(got[10:], np.random.default_rng([5, 1]).permutation(10)[:4])
    stream.take(6)
    assert (stream.epoch, stream.position) == (2, 0)
    many = WindowStream(10, seed=5).take(30).reshape(3, 10)
    assert all(sorted(row) == list(range(10)) for row in many.tolist())
    assert not np.array_equal(many[0], many[1])  # a new order every epoch


def test_seed_decides_the_order() -> None:
    assert np.array_equal(WindowStream(100, seed=1).take(100), WindowStream(100, seed=1).take(100))
    assert not np.array_equal(WindowStream(100, seed=1).take(100), WindowStream(100, seed=2).take(100))


@pytest.mark.parametrize("k", [0, 1, 3, 9, 11])
def test_save_and_restore_continue_identically(k: int) -> None:
    stream = WindowStream(13, seed=7)
    for _ in range(k):
        stream.take(5)
    state = json.loads(json.dumps(stream.state_dict()))  # as a checkpoint stores it
    assert all(type(v) is int for v in state.values())
    expected = [stream.take(n).tolist() for n in (4, 13, 30, 1)]
    fresh = WindowStream(13, seed=7)
    fresh.load_state_dict(state)
    assert (fresh.epoch, fresh.position) == (state["epoch"], state["position"])
    assert [fresh.take(n).tolist() for n in (4, 13, 30, 1)] == expected


def test_state_for_other_data_is_refused() -> None:
    state = WindowStream(13, seed=7).state_dict()
    with pytest.raises(DataError, match="sampler state is for 13 windows with seed 7 but the data has 12"):
        WindowStream(12, seed=7).load_state_dict(state)
    with pytest.raises(DataError, match="seed 8"):
        WindowStream(13, seed=8).load_state_dict(state)
    with pytest.raises(DataError, match="malformed"):
        WindowStream(13, seed=7).load_state_dict({"epoch": 1})
    with pytest.raises(DataError, match="out of range"):
        WindowStream(13, seed=7).load_state_dict({**state, "position": 13})


def test_permutation_is_drawn_once_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = np.random.default_rng

    def counting(seed: object) -> np.random.Generator:
        calls.append(seed)
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", counting)
    stream = WindowStream(1000, seed=0)
    for _ in range(1500):
        stream.take(1)
    assert calls == [[0, 0], [0, 1]]


def test_needs_a_window() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        WindowStream(0, seed=0)
