"""The probe-free phenotype read-out: blood-pool areas per frame."""

import numpy as np
import pytest

from cardionets_jax.data import synthetic
from cardionets_jax.evaluators import areas


def disc_cine(radii, size=32, blood=210.0, background=90.0):
  yy, xx = np.mgrid[:size, :size] - size / 2
  cine = np.full((len(radii), size, size), background, np.float32)
  for t, r in enumerate(radii):
    cine[t][xx ** 2 + yy ** 2 < r ** 2] = blood
  return cine


def test_a_shrinking_blood_pool_reads_its_areas_at_any_intensity_scale():
  cine = disc_cine([10, 9, 7, 8, 10])
  inside = lambda r: int(np.sum(disc_cine([r])[0] > 150))
  got = areas.readout(cine[None])
  assert got["ed_area"][0] == inside(10) and got["es_area"][0] == inside(7)
  np.testing.assert_allclose(got["ef"], [1 - inside(7) / inside(10)])
  # A cine in [-1, 1] (as generated) or with another gain and offset reads the same.
  for scaled in (cine / 127.5 - 1.0, 0.6 * cine + 30.0):
    assert {k: v[0] for k, v in areas.readout(scaled[None]).items()} == {
        k: v[0] for k, v in got.items()}


def test_on_the_simulators_cines_the_proxies_follow_the_true_phenotypes():
  subjects = [synthetic.simulate_subject(0, i, frames=25, size=48) for i in range(60)]
  cines = np.stack([s["cmr"] for s in subjects])
  phenotypes = np.stack([s["phenotypes"] for s in subjects])
  result, per_subject = areas.agreement({"true_cine": cines}, phenotypes,
                                        synthetic.phenotype_names(), n_boot=100)
  r = result["true_cine"]
  assert r["ef_vs_lvef"]["value"] > 0.7 and r["ed_area_vs_lvedv"]["value"] > 0.7
  assert r["ef_vs_lvef"]["low"] > 0.5
  assert len(per_subject["true_cine"]["ef"]) == 60
  assert r["ef_mean"] == pytest.approx(np.mean(per_subject["true_cine"]["ef"]))
  assert 0.1 < r["ef_mean"] < 0.6 and 0 < r["ef_sd"] < 0.2   # hearts eject part of their blood
  # Shuffling the cines against the phenotypes breaks it.
  shuffled, _ = areas.agreement({"x": cines[::-1]}, phenotypes, synthetic.phenotype_names(),
                                n_boot=10)
  assert abs(shuffled["x"]["ef_vs_lvef"]["value"]) < 0.4
