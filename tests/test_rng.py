"""The seeded scope: explicit generators for our own draws, a locked and forked global state for libraries."""

from __future__ import annotations

import random
import threading

import numpy as np
import torch

from qshield_core import rng
from qshield_core.quantum import CircuitConfig, FeatureEncoder


def test_scope_seeds_restores_and_isolates_the_global_generators():
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    with rng.seeded(5) as gen:
        inside = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
    with rng.seeded(5) as gen:
        again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(inside[0], again[0]) and np.array_equal(inside[1], again[1]) and inside[2] == again[2]
    assert torch.equal(inside[3], again[3])
    assert rng.generator() is None, "no scope is active any more"


def test_paper_projection_draws_from_the_scope_generator_not_the_global_one():
    encoder = FeatureEncoder(10, CircuitConfig.for_classes(10))
    features = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    with rng.seeded(11):
        plain = encoder(features, random_projection=True)
    with rng.seeded(11):
        torch.rand(1000)  # a library drawing from the global generator first changes nothing
        torch.manual_seed(12345)
        after_global_draws = encoder(features, random_projection=True)
    assert torch.equal(plain, after_global_draws)
    expected = encoder.draw_projection(torch.Generator().manual_seed(11))
    std = features.std(-1, keepdim=True, unbiased=False)
    values = ((features - features.mean(-1, keepdim=True)) / (std + 1e-8)) @ expected
    assert torch.allclose(plain, (torch.pi * torch.tanh(values)).reshape(4, -1, 3))


def test_scopes_of_other_threads_wait_for_the_lock():
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with rng.seeded(1):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        inside.wait(5)
        with rng.seeded(2):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]


def test_scopes_nest_in_one_thread():
    with rng.seeded(1) as outer:
        with rng.seeded(2) as inner:
            assert rng.generator() is inner
        assert rng.generator() is outer
