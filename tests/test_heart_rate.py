"""The heart-rate read-outs of the built-in cohort's ECGs (evaluators/heart_rate.py)."""

import numpy as np
import pytest

from cardionets_jax.data import cohort
from cardionets_jax.data import synthetic
from cardionets_jax.evaluators import heart_rate

HR = synthetic.phenotype_names().index("heart_rate")


def test_rr_read_out_recovers_the_simulated_rate_and_counts_are_whole_beats():
  examples = [cohort.simulate_example(i, seed=3, frames=2, size=8) for i in range(12)]
  ecgs = np.stack([e["ecg"] for e in examples])
  rates = np.array([e["phenotypes"][HR] for e in examples])
  crop = 9 * synthetic.ECG_FS
  out = heart_rate.read_outs(ecgs, synthetic.ECG_FS, crop, 3)
  # 1% beat-to-beat jitter and respiratory arrhythmia of 2.5% around the set rate.
  np.testing.assert_allclose(out[:, 2], rates, rtol=0.04)
  expected_beats = rates / 60.0 * 9.0
  assert np.all(out[:, 0] == np.round(out[:, 0]))
  assert np.all(np.abs(out[:, 0] - expected_beats) <= 1.0 + 0.04 * expected_beats)
  # The average over crops lies between the fewest and the most beats a crop can hold.
  assert np.all((out[:, 1] >= np.floor(expected_beats * 0.96))
                & (out[:, 1] <= np.ceil(expected_beats * 1.04)))


def test_fine_tuned_averages_seeds_per_method_and_fraction():
  def method(init, fraction, r2):
    return {"init": init, "mode": "full", "label_fraction": fraction,
            "phenotypes": {"heart_rate": {"r2": {"value": r2}}}}
  results = {"a1": method("aligned", 0.1, 0.8), "a2": method("aligned", 0.1, 0.9),
             "a3": method("aligned", 1.0, 0.95), "s1": method("scratch", 0.1, 0.5)}
  table = heart_rate.fine_tuned(results)
  assert list(table) == [("aligned", "full"), ("scratch", "full")]
  assert table[("aligned", "full")] == pytest.approx({0.1: 0.85, 1.0: 0.95})
  assert table[("scratch", "full")] == {0.1: 0.5}
