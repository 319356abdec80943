"""Strength sweeps and recommended bands (features/pipeline/calibrate.py) on the tiny model."""
from __future__ import annotations

import pytest

from chat.engine import Engine
from features.pipeline.calibrate import SweepPoint, band, sweep, unsteered
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary


def point(s, rate, cost):
    return SweepPoint(s, rate, cost, 0.0, ())


def test_band_spans_the_strengths_that_pass_both_bounds():
    points = [point(2, 0.0, 1.1), point(4, 0.5, 1.5), point(8, 1.0, 3.9), point(12, 1.0, 9.0)]
    assert band(points) == [4, 8]
    assert band(points, min_rate=0.9) == [8, 8]
    assert band(points, max_cost=1.2) is None


def test_band_stops_at_the_first_failing_strength():
    points = [point(1, 1.0, 2.0), point(2, 1.0, 4.5), point(3, 0.75, 3.0)]
    assert band(points) == [1, 1]


@pytest.fixture(scope="module")
def engine(tiny_lm):
    catalog = Catalog(64, {5: Feature(5, "bridge", 4.0, 0.01)})
    return Engine(tiny_lm, Dictionary.random(32, 64, seed=1, hook_layer=1), catalog, 1, "test")


def test_a_zero_strength_sweep_point_is_the_unsteered_model(engine):
    prompts = ("Hello", "Tell me about your weekend.")
    base = unsteered(engine, prompts, 6)
    (zero, strong) = sweep(engine, 5, "add", ["the"], [0.0, 40.0], prompts, 6, baseline=base)
    assert zero.fluency_cost == pytest.approx(1.0)
    assert zero.samples == tuple(r.text for r in base[0])
    assert strong.samples != zero.samples
