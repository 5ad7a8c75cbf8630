"""Stage 5 metrics and bootstrap CIs against scikit-learn / scipy references."""

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from cardionets_jax import bootstrap
from cardionets_jax import evaluate


def _binary_data(seed, n=200, ties=False):
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < 0.3).astype(int)
  y[:2] = [0, 1]  # both classes present
  scores = y * rng.uniform(0.2, 1.0) + rng.normal(size=n)
  if ties:
    scores = np.round(scores, 1)
  return y, scores


# Regression --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pearson_and_mae_match_references(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=60) * 3 + 1
  pred = 0.5 * y + rng.normal(scale=seed + 0.5, size=60)
  assert evaluate.pearson_r(y, pred) == pytest.approx(stats.pearsonr(y, pred).statistic, abs=1e-12)
  assert evaluate.mean_absolute_error(y, pred) == pytest.approx(
      metrics.mean_absolute_error(y, pred), abs=1e-12)


def test_regression_hand_checked():
  assert evaluate.pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
  assert evaluate.pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert evaluate.pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
  assert evaluate.mean_absolute_error([0, 1, 2], [1, 1, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("x, y", [(np.ones(5), np.arange(5.0)), (np.arange(5.0), np.full(5, 2.0))])
def test_pearson_constant_input_is_nan_with_warning(x, y):
  with pytest.warns(RuntimeWarning, match="constant"):
    assert np.isnan(evaluate.pearson_r(x, y))


# Classification ----------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_and_ap_match_sklearn(seed, ties):
  y, s = _binary_data(seed, ties=ties)
  if ties:
    assert len(np.unique(s)) < len(s) // 2  # ties really are present
  assert evaluate.roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
  assert evaluate.average_precision(y, s) == pytest.approx(
      metrics.average_precision_score(y, s), abs=1e-12)


def test_auroc_and_ap_hand_checked():
  # Positives at 0.8 and 0.4, negatives at 0.4, 0.1: pairs 1, 1, 0.5 (tie), 1 -> 3.5 / 4.
  y, s = [1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]
  assert evaluate.roc_auc(y, s) == pytest.approx(0.875)
  # Thresholds 0.8: P=1, R=1/2; 0.4: P=2/3, R=1 -> AP = 1/2 + 1/2 * 2/3.
  assert evaluate.average_precision(y, s) == pytest.approx(0.5 + 1 / 3)
  assert evaluate.roc_auc([0, 1], [0.3, 0.3]) == pytest.approx(0.5)
  assert evaluate.average_precision([0, 1], [0.3, 0.3]) == pytest.approx(0.5)
  assert evaluate.roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
  assert evaluate.roc_auc([1, 0], [0.1, 0.9]) == 0.0


@pytest.mark.parametrize("fn", [evaluate.roc_auc, evaluate.average_precision,
                                evaluate.youden_threshold])
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_is_nan_with_warning(fn, label):
  with pytest.warns(RuntimeWarning, match="one class"):
    assert np.isnan(fn(np.full(6, label), np.linspace(0, 1, 6)))


def test_labels_outside_01_and_nan_scores_raise():
  with pytest.raises(ValueError, match="0 and 1"):
    evaluate.roc_auc([0, 1, -1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="NaN"):
    evaluate.average_precision([0, 1, 1], [0.1, np.nan, 0.3])


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_roc_curve_matches_sklearn(seed, ties, drop):
  y, s = _binary_data(seed, n=80, ties=ties)
  fpr, tpr, thr = evaluate.roc_curve(y, s, drop_intermediate=drop)
  ref = metrics.roc_curve(y, s, drop_intermediate=drop)
  for got, want in zip((fpr, tpr, thr), ref):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  if not drop:
    assert len(thr) == len(np.unique(s)) + 1


def test_roc_curve_one_class_warns():
  with pytest.warns(RuntimeWarning, match="one class"):
    fpr, tpr, _ = evaluate.roc_curve([1, 1, 1], [0.1, 0.5, 0.9])
  assert np.isnan(fpr).all() and np.allclose(tpr, [0, 1 / 3, 2 / 3, 1])


def test_youden_separable_data_is_perfect():
  rng = np.random.default_rng(0)
  y = np.r_[np.zeros(30), np.ones(20)].astype(int)
  s = np.r_[rng.uniform(0, 0.4, 30), rng.uniform(0.6, 1, 20)]
  t = evaluate.youden_threshold(y, s)
  assert t == s[y == 1].min()  # the highest threshold reaching the maximum
  m = evaluate.binary_metrics(y, s, t)
  assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0 and m["accuracy"] == 1.0


def test_youden_tied_maxima_take_the_highest_threshold():
  # J = 0.5 at t = 0.4 (tpr 1/2, fpr 0) and at t = 0.2 (tpr 1, fpr 1/2).
  assert evaluate.youden_threshold([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.4


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False), (3, True)])
def test_youden_equals_brute_force(seed, ties):
  y, s = _binary_data(seed, n=120, ties=ties)
  best_j, best_t = -np.inf, None
  for t in np.sort(np.unique(s))[::-1]:  # highest first: ties keep the highest threshold
    pred = s >= t
    j = pred[y == 1].mean() + (~pred[y == 0]).mean() - 1
    if j > best_j + 1e-12:
      best_j, best_t = j, t
  assert evaluate.youden_threshold(y, s) == best_t


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False)])
def test_binary_metrics_match_sklearn(seed, ties):
  y, s = _binary_data(seed, ties=ties)
  for t in (np.median(s), 0.3, s.max()):
    got = evaluate.binary_metrics(y, s, t)
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    kw = dict(zero_division=np.nan)
    want = dict(sensitivity=metrics.recall_score(y, pred, **kw), specificity=tn / (tn + fp),
                ppv=metrics.precision_score(y, pred, **kw), npv=tn / (tn + fn),
                f1=metrics.f1_score(y, pred, **kw), accuracy=metrics.accuracy_score(y, pred))
    assert set(got) == set(want)
    for key in want:
      assert got[key] == pytest.approx(want[key], abs=1e-12, nan_ok=True), key


def test_binary_metrics_hand_checked_and_zero_denominators():
  m = evaluate.binary_metrics([1, 1, 0, 0, 0], [0.9, 0.2, 0.6, 0.1, 0.3], 0.5)
  # tp=1 fn=1 fp=1 tn=2
  assert m == pytest.approx(dict(sensitivity=0.5, specificity=2 / 3, ppv=0.5, npv=2 / 3,
                                 f1=0.5, accuracy=0.6))
  none_called = evaluate.binary_metrics([0, 1, 0], [0.1, 0.2, 0.3], 0.9)
  assert np.isnan(none_called["ppv"]) and none_called["specificity"] == 1.0
  all_called = evaluate.binary_metrics([0, 1, 0], [0.1, 0.2, 0.3], 0.0)
  assert np.isnan(all_called["npv"]) and all_called["sensitivity"] == 1.0
  no_pos = evaluate.binary_metrics([0, 0], [0.1, 0.9], 0.5)
  assert np.isnan(no_pos["sensitivity"]) and no_pos["specificity"] == 0.5 and no_pos["ppv"] == 0
  assert no_pos["f1"] == 0.0  # 2tp + fp + fn = 1 > 0
  only_tn = evaluate.binary_metrics([0, 0], [0.1, 0.2], 0.5)
  assert np.isnan(only_tn["f1"]) and np.isnan(only_tn["ppv"]) and only_tn["npv"] == 1.0


# Bootstrap ---------------------------------------------------------------------


def _mean(x):
  return float(np.mean(x))


def test_bootstrap_is_deterministic_and_contains_estimate():
  y, s = _binary_data(0, n=150)
  a = bootstrap.bootstrap_ci(evaluate.roc_auc, (y, s), n_boot=300, seed=7)
  b = bootstrap.bootstrap_ci(evaluate.roc_auc, (y, s), n_boot=300, seed=7)
  c = bootstrap.bootstrap_ci(evaluate.roc_auc, (y, s), n_boot=300, seed=8)
  assert a == b and a != c
  assert a["value"] == evaluate.roc_auc(y, s)
  assert a["low"] < a["value"] < a["high"] and a["n_boot_valid"] == 300


def test_bootstrap_mean_ci_width_matches_normal_theory():
  x = np.random.default_rng(0).normal(size=400)
  ci = bootstrap.bootstrap_ci(_mean, (x,), n_boot=1000, seed=0)
  width = ci["high"] - ci["low"]
  assert width == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)
  assert ci["low"] < ci["value"] < ci["high"]


def test_bootstrap_resamples_by_subject_and_percentiles():
  """Reference: draw the indices the documented way and take the percentiles."""
  rng = np.random.default_rng(3)
  y = rng.normal(size=40)
  p = y + rng.normal(size=40)
  ci = bootstrap.bootstrap_ci(evaluate.r2_score, (y, p), n_boot=200, alpha=0.1, seed=3)
  draw = np.random.default_rng(3)
  vals = []
  for _ in range(200):
    i = draw.integers(0, 40, size=40)
    vals.append(metrics.r2_score(y[i], p[i]))  # the same i for both arrays (pairing kept)
  low, high = np.percentile(vals, [5, 95])
  assert ci["low"] == pytest.approx(low, abs=1e-10)
  assert ci["high"] == pytest.approx(high, abs=1e-10)


@pytest.mark.parametrize("metric", [evaluate.r2_score, evaluate.pearson_r,
                                    evaluate.mean_absolute_error, evaluate.roc_auc,
                                    evaluate.average_precision])
def test_bootstrap_vectorised_path_equals_per_resample_loop(metric):
  y, s = _binary_data(4, n=30, ties=True)  # small: some resamples are one class / constant
  y = y.astype(float)
  fast = bootstrap.bootstrap_ci(metric, (y, s), n_boot=300, seed=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    slow = bootstrap.bootstrap_ci(lambda a, b: metric(a, b), (y, s), n_boot=300, seed=1)
  assert fast["n_boot_valid"] == slow["n_boot_valid"]
  for key in ("value", "low", "high"):
    assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_bootstrap_skips_and_counts_one_class_resamples():
  y = np.zeros(20, int)
  y[0] = 1  # one positive in 20: P(resample without it) = 0.95**20 ~ 0.36
  s = np.random.default_rng(0).normal(size=20) + y
  ci = bootstrap.bootstrap_ci(evaluate.roc_auc, (y, s), n_boot=500, seed=0)
  skipped = 500 - ci["n_boot_valid"]
  assert 0.25 * 500 < skipped < 0.5 * 500
  draw = np.random.default_rng(0)
  expected = sum(y[draw.integers(0, 20, size=20)].sum() == 0 for _ in range(500))
  assert skipped == expected
  assert not np.isnan(ci["low"]) and not np.isnan(ci["high"])


def test_bootstrap_all_resamples_invalid():
  with pytest.warns(RuntimeWarning, match="one class"):
    ci = bootstrap.bootstrap_ci(evaluate.roc_auc, (np.ones(10), np.arange(10.0)), n_boot=50)
  assert ci["n_boot_valid"] == 0 and np.isnan(ci["value"]) and np.isnan(ci["low"])


def test_paired_bootstrap_diff():
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.4).astype(int)
  good = y * 2.0 + rng.normal(size=300)
  bad = y * 0.3 + rng.normal(size=300)
  diff = bootstrap.paired_bootstrap_diff(evaluate.roc_auc, (y, good), (y, bad), n_boot=300)
  assert diff["value"] == pytest.approx(evaluate.roc_auc(y, good) - evaluate.roc_auc(y, bad))
  assert 0 < diff["low"] < diff["value"] < diff["high"]
  reverse = bootstrap.paired_bootstrap_diff(evaluate.roc_auc, (y, bad), (y, good), n_boot=300)
  assert reverse["high"] < 0
  same = bootstrap.paired_bootstrap_diff(evaluate.roc_auc, (y, good), (y, good.copy()), n_boot=300)
  assert same["value"] == 0 and same["low"] == 0 and same["high"] == 0
  assert same["n_boot_valid"] == 300


def test_paired_bootstrap_diff_equals_per_resample_reference():
  rng = np.random.default_rng(1)
  y = rng.normal(size=50)
  pa, pb = y + rng.normal(size=50), y + 2 * rng.normal(size=50)
  diff = bootstrap.paired_bootstrap_diff(evaluate.pearson_r, (y, pa), (y, pb), n_boot=200, seed=5)
  draw = np.random.default_rng(5)
  vals = []
  for _ in range(200):
    i = draw.integers(0, 50, size=50)
    vals.append(stats.pearsonr(y[i], pa[i]).statistic - stats.pearsonr(y[i], pb[i]).statistic)
  np.testing.assert_allclose([diff["low"], diff["high"]], np.percentile(vals, [2.5, 97.5]),
                             atol=1e-10)


# Reports -----------------------------------------------------------------------


def test_regression_report_drops_missing_rows_per_phenotype():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(60, 3))
  pred = y + rng.normal(size=(60, 3))
  y[::5, 0] = np.nan
  y[:20, 2] = np.nan
  rep = bootstrap.regression_report(y, pred, ["lvedv", "lvef", "rvedv"], n_boot=100, seed=2)
  assert list(rep) == ["lvedv", "lvef", "rvedv"]
  assert [rep[k]["n"] for k in rep] == [48, 60, 40]
  for j, name in enumerate(rep):
    keep = ~np.isnan(y[:, j])
    for key, fn in (("r2", evaluate.r2_score), ("pearson_r", evaluate.pearson_r),
                    ("mae", evaluate.mean_absolute_error)):
      want = bootstrap.bootstrap_ci(fn, (y[keep, j], pred[keep, j]), n_boot=100, seed=2)
      got = rep[name][key]
      assert set(got) == {"value", "low", "high", "n_boot_valid"}
      for k in ("value", "low", "high", "n_boot_valid"):
        assert got[k] == pytest.approx(want[k], abs=1e-12)
  assert rep["lvedv"]["r2"]["value"] == pytest.approx(
      metrics.r2_score(y[~np.isnan(y[:, 0]), 0], pred[~np.isnan(y[:, 0]), 0]))


def test_classification_report_drops_missing_and_uses_thresholds():
  rng = np.random.default_rng(1)
  y = (rng.random((80, 3)) < 0.35).astype(float)
  s = y * 1.5 + rng.normal(size=(80, 3))
  y[::4, 0] = -1
  y[:10, 1] = np.nan
  y[:, 2] = np.where(np.arange(80) < 40, -1, 0)  # one class among the labelled rows
  thresholds = np.array([0.5, 0.7, 0.0])
  with pytest.warns(RuntimeWarning, match="one class"):
    rep = bootstrap.classification_report(y, s, ["dcm", "hcm", "rare"], thresholds,
                                          n_boot=100, seed=4)
  assert [rep[k]["n"] for k in rep] == [60, 70, 40]
  for j, name in enumerate(["dcm", "hcm"]):
    keep = (y[:, j] == 0) | (y[:, j] == 1)
    yt, st = y[keep, j], s[keep, j]
    entry = rep[name]
    assert entry["n_positive"] == int(yt.sum())
    assert entry["threshold"] == thresholds[j]
    assert entry["auroc"]["value"] == pytest.approx(metrics.roc_auc_score(yt, st))
    assert entry["auprc"]["value"] == pytest.approx(metrics.average_precision_score(yt, st))
    for key, fn in (("auroc", evaluate.roc_auc), ("auprc", evaluate.average_precision)):
      want = bootstrap.bootstrap_ci(fn, (yt, st), n_boot=100, seed=4)
      assert entry[key] == pytest.approx(want)
    point = evaluate.binary_metrics(yt, st, thresholds[j])
    for key, value in point.items():
      assert entry[key]["value"] == pytest.approx(value, nan_ok=True)
      want = bootstrap.bootstrap_ci(lambda a, b: evaluate.binary_metrics(a, b, thresholds[j])[key],
                                    (yt, st), n_boot=100, seed=4)
      assert entry[key] == pytest.approx(want, nan_ok=True)
  rare = rep["rare"]
  assert rare["n_positive"] == 0 and np.isnan(rare["auroc"]["value"])
  assert rare["auroc"]["n_boot_valid"] == 0 and np.isnan(rare["auprc"]["low"])
  assert rare["specificity"]["value"] == pytest.approx(np.mean(s[40:, 2] < 0.0))
  assert np.isnan(rare["sensitivity"]["value"])


def test_classification_report_with_youden_thresholds_from_validation():
  rng = np.random.default_rng(2)
  yv = (rng.random((100, 2)) < 0.4).astype(int)
  sv = yv * 2.0 + rng.normal(size=(100, 2))
  thresholds = [evaluate.youden_threshold(yv[:, j], sv[:, j]) for j in range(2)]
  rep = bootstrap.classification_report(yv, sv, ["a", "b"], thresholds, n_boot=50)
  for j, name in enumerate("ab"):
    assert rep[name]["threshold"] == thresholds[j]
    j_stat = rep[name]["sensitivity"]["value"] + rep[name]["specificity"]["value"] - 1
    assert j_stat > 0.5


def test_a_nan_point_value_has_a_nan_interval_even_when_resamples_are_finite():
  # A metric undefined on the full data (NaN) but defined on some resamples.
  flaky = lambda x: float("nan") if len(np.unique(x)) == len(x) else float(np.mean(x))
  ci = bootstrap.bootstrap_ci(flaky, (np.arange(8.0),), n_boot=100)
  assert np.isnan(ci["value"]) and ci["n_boot_valid"] > 0
  assert np.isnan(ci["low"]) and np.isnan(ci["high"])


def test_classification_ci_methods_counts_and_stratified_resamples():
  rng = np.random.default_rng(3)
  y = np.r_[np.ones(6), np.zeros(44)]
  s = rng.normal(size=50) + 1.2 * y
  reports = {m: bootstrap.classification_report(y[:, None], s[:, None], ["cm"], n_boot=400, seed=1,
                                                method=m)["cm"] for m in bootstrap.METHODS}
  for m, r in reports.items():
    assert (r["n"], r["n_positive"], r["n_negative"]) == (50, 6, 44)
    assert r["auroc"]["value"] == pytest.approx(metrics.roc_auc_score(y, s))
    assert r["auroc"]["low"] < r["auroc"]["value"] < r["auroc"]["high"], m
  # Plain resampling loses every positive now and then (0.88**50 of the time per draw is tiny,
  # but counts vary); stratified resampling keeps 6 positives in every resample: no NaN AUROC.
  assert reports["stratified"]["auroc"]["n_boot_valid"] == 400
  for idx in bootstrap._resample_blocks(50, 20, 0, strata=y):
    assert (y[idx].sum(axis=1) == 6).all()
  # BCa moves the percentile interval by the same resamples' bias and skew: the same draws as
  # the percentile method, a different interval.
  assert reports["bca"]["auroc"]["n_boot_valid"] == reports["percentile"]["auroc"]["n_boot_valid"]
  assert reports["bca"]["auroc"]["low"] != reports["percentile"]["auroc"]["low"]
  with pytest.raises(ValueError, match="method"):
    bootstrap.classification_report(y[:, None], s[:, None], method="normal")

