import numpy as np
import pytest
from sklearn import linear_model
from sklearn import metrics
from sklearn import preprocessing

from cardionets_jax import evaluate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_r2_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=50)
  pred = y + rng.normal(scale=seed + 0.1, size=50)
  assert evaluate.r2_score(y, pred) == pytest.approx(metrics.r2_score(y, pred), abs=1e-12)


def test_r2_constant_target_follows_sklearn():
  y = np.ones(5)
  assert evaluate.r2_score(y, y) == metrics.r2_score(y, y)
  assert evaluate.r2_score(y, y + 1) == metrics.r2_score(y, y + 1)


@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("n, d", [(80, 6), (30, 200)])   # more features than rows: a token grid
def test_ridge_matches_sklearn(alpha, n, d):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(n, d)) * np.linspace(1, 6, d) + 3.0
  y = x @ rng.normal(size=d) + 2.0 + rng.normal(size=n)
  w, b = evaluate.ridge_fit(x, y, alpha)
  ref = linear_model.Ridge(alpha=alpha).fit(x, y)
  np.testing.assert_allclose(w, ref.coef_, rtol=1e-7, atol=1e-10)
  assert b == pytest.approx(ref.intercept_, rel=1e-8)
  path = evaluate.ridge_path(x, np.stack([y, -y], 1), (alpha, 2 * alpha))
  np.testing.assert_allclose(path[alpha][0][:, 1], -ref.coef_, rtol=1e-7, atol=1e-10)
  ref2 = linear_model.Ridge(alpha=2 * alpha).fit(x, y)
  np.testing.assert_allclose(path[2 * alpha][0][:, 0], ref2.coef_, rtol=1e-7, atol=1e-10)


def test_ridge_map_equals_sklearn_at_the_alpha_with_least_val_error():
  rng = np.random.default_rng(5)
  mixing = rng.normal(size=(8, 3 * 4))
  def split(n):
    x = rng.normal(size=(n, 8)) * np.arange(1, 9) + 1.0
    return x, (x @ mixing + 3.0 * rng.normal(size=(n, 12))).reshape(n, 3, 4)
  (xtr, ytr), val, (xte, _) = split(60), split(40), split(10)
  alphas = (0.01, 10.0, 1e5)
  predict, alpha, val_mse = evaluate.fit_ridge_map((xtr, ytr), val, alphas)
  scaler = preprocessing.StandardScaler().fit(xtr)
  refs = {a: linear_model.Ridge(alpha=a).fit(scaler.transform(xtr), ytr.reshape(60, -1))
          for a in alphas}
  ref_mse = {a: metrics.mean_squared_error(val[1].reshape(40, -1),
                                           r.predict(scaler.transform(val[0])))
             for a, r in refs.items()}
  np.testing.assert_allclose([val_mse[a] for a in alphas], [ref_mse[a] for a in alphas], rtol=1e-8)
  assert alpha == min(ref_mse, key=ref_mse.get) != 1e5   # a huge alpha predicts the mean only
  np.testing.assert_allclose(predict(xte), refs[alpha].predict(scaler.transform(xte)).reshape(10, 3, 4),
                             rtol=1e-7, atol=1e-9)


def test_ridge_probe_recovers_linear_targets_and_skips_missing():
  rng = np.random.default_rng(4)
  def split(n):
    x = rng.normal(size=(n, 10))
    y = np.stack([x[:, 0] * 2 + 0.1 * rng.normal(size=n), rng.normal(size=n)], axis=1)
    y[::7, 0] = np.nan  # missing values are skipped, not imputed
    return x, y
  out = evaluate.ridge_probe(split(300), split(100), split(100), alphas=(0.1, 10.0),
                             names=["signal", "noise"])
  assert out["signal"]["r2"] > 0.95
  assert out["noise"]["r2"] < 0.1
  assert out["signal"]["n_test"] == 100 - len(range(0, 100, 7))


def test_ridge_probe_weights_are_sklearns_standardised_ridge_on_the_raw_features():
  # What a finetune head starts from (LP-FT): the probe's map with the standardisation folded in.
  rng = np.random.default_rng(6)
  def split(n):
    x = rng.normal(size=(n, 5)) * np.arange(1, 6) + 2.0
    y = np.stack([x @ rng.normal(size=5) + rng.normal(size=n), rng.normal(size=n)], axis=1)
    y[::4, 1] = np.nan
    return x, y
  train, val = split(40), split(30)
  alphas = (0.1, 10.0, 1e4)
  w, b, chosen = evaluate.ridge_probe_weights(train, val, alphas)
  scaler = preprocessing.StandardScaler().fit(train[0])
  for j in range(2):
    rows, va = ~np.isnan(train[1][:, j]), ~np.isnan(val[1][:, j])
    refs = {a: linear_model.Ridge(alpha=a).fit(scaler.transform(train[0][rows]), train[1][rows, j])
            for a in alphas}
    r2 = {a: metrics.r2_score(val[1][va, j], r.predict(scaler.transform(val[0][va])))
          for a, r in refs.items()}
    assert chosen[j] == max(r2, key=r2.get)
    np.testing.assert_allclose(val[0] @ w[:, j] + b[j],
                               refs[chosen[j]].predict(scaler.transform(val[0])), rtol=1e-8)
  predict, _ = evaluate.fit_ridge_probe(train, val, alphas)
  np.testing.assert_allclose(predict(val[0]), val[0] @ w + b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_release_threshold_report_wilson_intervals_match_scipy(seed):
  from scipy import stats
  rng = np.random.default_rng(seed)
  y = (rng.random(57) < 0.3).astype(int)
  p = np.clip(0.35 * y + rng.random(57) * 0.65, 0, 1)
  r = evaluate.threshold_report(y, p, 0.5)
  pred = p >= 0.5
  tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
  fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
  assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (tp, fp, fn, tn)
  for name, (k, n) in dict(sensitivity=(tp, tp + fn), specificity=(tn, tn + fp),
                           accuracy=(tp + tn, len(y)), ppv=(tp, tp + fp), npv=(tn, tn + fn)).items():
    ci = stats.binomtest(int(k), int(n)).proportion_ci(method="wilson")
    np.testing.assert_allclose([r[name]["low"], r[name]["high"]], [ci.low, ci.high], atol=1e-12)
    assert r[name]["value"] == k / n and r[name]["n"] == n
  # No positive call: PPV's denominator is 0, its value and interval NaN.
  none = evaluate.threshold_report(y, np.zeros(57), 0.5)
  assert none["ppv"]["n"] == 0 and np.isnan(none["ppv"]["value"]) and np.isnan(none["ppv"]["low"])
