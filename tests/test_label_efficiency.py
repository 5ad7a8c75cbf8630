"""The label-efficiency comparison: seed-averaged metrics with subject CIs, paired differences."""

import os

import numpy as np
from sklearn import metrics

from cardionets_jax.evaluators import label_efficiency


def _sweep(rng, n=150, fractions=(0.1, 1.0), seeds=(0, 1)):
  """Test predictions of three methods whose quality is ordered cmr > aligned > scratch."""
  y = rng.normal(size=(n, 3))
  y[::10, 2] = np.nan                                  # a phenotype missing for some subjects
  labels = np.stack([rng.random(n) < 0.3, rng.random(n) < 0.2], 1).astype(np.int8)
  labels[::13, 1] = -1
  noise = {"cmr": 0.3, "aligned": 0.6, "scratch": 1.2}
  preds, results = {}, {}
  for f in fractions:
    for s in seeds:
      for init, sd in noise.items():
        sd = sd / np.sqrt(f)
        name = f"{init}-full@{f:g}-s{s}"
        results[name] = dict(init=init, mode="full", label_fraction=f, seed=s)
        preds[name] = dict(phenotypes=y, labels=labels,
                           phenotypes_pred=np.nan_to_num(y) + sd * rng.normal(size=y.shape),
                           probs=1 / (1 + np.exp(-(labels * 2 - 1) / sd - rng.normal(size=labels.shape))))
  return preds, results, y, labels


def test_values_are_seed_means_of_sklearn_metrics_and_differences_are_paired():
  rng = np.random.default_rng(0)
  preds, results, y, labels = _sweep(rng)
  out = label_efficiency.compare(preds, results, ["cm", "ph"], n_boot=200)
  assert out["label_fractions"] == [0.1, 1.0] and out["seeds"] == [0, 1]
  assert list(out["metrics"]["mean phenotype R2"]) == ["cmr", "aligned", "scratch"]
  for init in ("cmr", "aligned", "scratch"):
    for f in ("0.1", "1"):
      names = [n for n, r in results.items() if r["init"] == init and f"{r['label_fraction']:g}" == f]
      r2 = np.mean([np.mean([metrics.r2_score(y[~np.isnan(y[:, p]), p],
                                              preds[n]["phenotypes_pred"][~np.isnan(y[:, p]), p])
                             for p in range(3)]) for n in names])
      ci = out["metrics"]["mean phenotype R2"][init][f]
      assert np.isclose(ci["value"], r2) and ci["low"] < r2 < ci["high"]
      known = labels[:, 1] >= 0
      auc = np.mean([metrics.roc_auc_score(labels[known, 1], preds[n]["probs"][known, 1])
                     for n in names])
      assert np.isclose(out["metrics"]["ph AUROC"][init][f]["value"], auc)
  diff = out["differences"]["mean phenotype R2"]
  for f in ("0.1", "1"):
    a, s = (out["metrics"]["mean phenotype R2"][i][f]["value"] for i in ("aligned", "scratch"))
    assert np.isclose(diff["aligned - scratch"][f]["value"], a - s)
    assert diff["aligned - scratch"][f]["low"] > 0          # clearly better: the CI excludes zero
    assert diff["aligned - cmr"][f]["high"] < 0
  # Paired: the difference's CI is narrower than the two methods' CIs put side by side.
  m = out["metrics"]["mean phenotype R2"]
  width = lambda ci: ci["high"] - ci["low"]
  assert width(diff["aligned - scratch"]["1"]) < width(m["aligned"]["1"]) + width(m["scratch"]["1"])


def test_linear_probes_are_their_own_line_and_the_table_and_figure_are_written(tmp_path):
  rng = np.random.default_rng(1)
  preds, results, _, _ = _sweep(rng, fractions=(0.01, 0.1), seeds=(0,))
  for name in [n for n, r in results.items() if r["init"] == "cmr"]:
    results[name.replace("full", "linear")] = dict(results[name], mode="linear")
    preds[name.replace("full", "linear")] = preds[name]
  out = label_efficiency.compare(preds, results, ["cm", "ph"], n_boot=50)
  assert list(out["metrics"]["cm AUROC"]) == ["cmr", "cmr (linear)", "aligned", "scratch"]
  table = label_efficiency.table(out)
  assert table.count("\n") == 2 + 3 * 2 - 1                    # header, rule, 3 metrics x 2
  assert "| mean phenotype R2 | 0.01 |" in table and "aligned - scratch" in table
  path = tmp_path / "le.png"
  label_efficiency.figure(path, out)
  assert path.stat().st_size > 10_000


def test_saved_predictions_of_two_runs_merge_into_one_comparison(tmp_path):
  import json
  rng = np.random.default_rng(2)
  preds, results, _, _ = _sweep(rng, fractions=(0.1,), seeds=(0,))
  runs = {"full": [n for n in results if not n.startswith("cmr")],
          "linear": [n for n in results if n.startswith("cmr")]}
  for run, names in runs.items():
    os.makedirs(tmp_path / run / "finetune")
    label_efficiency.save_predictions(tmp_path / run / "finetune" / label_efficiency.PREDICTIONS,
                                      {n: preds[n] for n in names})
    methods = {n: dict(results[n], diseases={"cm": {}, "ph": {}}) for n in names}
    (tmp_path / run / "finetune" / "results.json").write_text(json.dumps({"methods": methods}))
  merged_preds, merged = {}, {}
  for run in runs:
    p, r = label_efficiency.load_run(str(tmp_path / run))
    merged_preds.update(p), merged.update(r)
  assert sorted(merged) == sorted(results)
  for name in results:
    for field in ("phenotypes", "labels", "phenotypes_pred", "probs"):
      np.testing.assert_array_equal(merged_preds[name][field], preds[name][field])
  direct = label_efficiency.compare(preds, results, ["cm", "ph"], n_boot=50)
  assert label_efficiency.compare(merged_preds, merged, ["cm", "ph"], n_boot=50) == direct
