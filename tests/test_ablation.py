"""Paired comparison of align runs: seed means of held-out metrics, paired CIs, the CLI."""

import os

import numpy as np
import pytest
from sklearn import metrics

from cardionets_jax.evaluators import ablation


def _write_run(path, phenotypes, noise, rng):
  os.makedirs(os.path.join(path, "align"))
  n = len(phenotypes)
  np.savez(os.path.join(path, "align", "heldout.npz"), phenotypes=phenotypes,
           probe=phenotypes + noise * rng.normal(size=phenotypes.shape),
           random_init_probe=phenotypes * 0, labels=np.zeros((n, 1), np.int8),
           ranks=rng.integers(1, int(1 + 40 * noise), size=n), phenotype_names=np.array(["a", "b"]))


def test_arms_are_seed_means_and_the_first_arm_is_compared_paired(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.normal(size=(90, 2))
  dirs = {arm: [str(tmp_path / f"{arm}{s}") for s in range(2)] for arm in ("good", "bad")}
  for arm, noise in (("good", 0.3), ("bad", 1.0)):
    for d in dirs[arm]:
      _write_run(d, y, noise, rng)
  arms = {arm: ablation.load_arm(d) for arm, d in dirs.items()}
  out = ablation.compare(arms, n_boot=200)
  for arm in arms:
    r2 = np.mean([np.mean([metrics.r2_score(y[:, p], arms[arm]["probe"][:, s, p]) for p in range(2)])
                  for s in range(2)])
    assert np.isclose(out["metrics"]["mean phenotype R2 (ridge probe)"][arm]["value"], r2)
    assert np.isclose(out["metrics"]["retrieval top-1"][arm]["value"], np.mean(arms[arm]["ranks"] == 1))
  diff = out["differences"]["mean phenotype R2 (ridge probe)"]["good - bad"]
  assert diff["low"] > 0 and out["seeds"] == {"good": 2, "bad": 2}
  assert "good - bad" in ablation.table(out)


def test_runs_on_another_cohort_are_refused(tmp_path):
  rng = np.random.default_rng(1)
  _write_run(str(tmp_path / "a"), rng.normal(size=(20, 2)), 0.5, rng)
  _write_run(str(tmp_path / "b"), rng.normal(size=(20, 2)), 0.5, rng)
  with pytest.raises(ValueError, match="held-out subjects differ"):
    ablation.load_arm([str(tmp_path / "a"), str(tmp_path / "b")])
