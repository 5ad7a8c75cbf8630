"""Metrics and probes: pure numpy functions, each tested against a reference."""

import warnings

import numpy as np
from scipy import stats as _stats


def r2_score(y_true, y_pred):
  """Coefficient of determination, 1 - SS_res / SS_tot (as scikit-learn)."""
  y_true = np.asarray(y_true, np.float64)
  y_pred = np.asarray(y_pred, np.float64)
  ss_res = np.sum((y_true - y_pred) ** 2)
  ss_tot = np.sum((y_true - y_true.mean()) ** 2)
  if ss_tot == 0:
    return 1.0 if ss_res == 0 else 0.0  # scikit-learn's convention for a constant target
  return float(1.0 - ss_res / ss_tot)


def ridge_path(x, y, alphas):
  """Ridge regressions with an unpenalised intercept, one per alpha: {alpha: (w, b)}.

  Minimises ||y - x w - b||^2 + alpha ||w||^2 (scikit-learn's Ridge objective) through one thin
  SVD of the centred x, so every alpha costs a matrix product and features wider than the
  number of rows (a frozen encoder's whole token grid) cost no (d, d) solve.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
  u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
  uy = u.T @ (y - y_mean)
  out = {}
  for alpha in alphas:
    shrink = s / (s * s + alpha)
    w = vt.T @ (shrink.reshape((-1,) + (1,) * (uy.ndim - 1)) * uy)
    out[float(alpha)] = (w, y_mean - x_mean @ w)
  return out


def ridge_fit(x, y, alpha):
  """One ridge regression (see `ridge_path`); returns (w, b)."""
  return ridge_path(x, y, (alpha,))[float(alpha)]


def _moments(x):
  """Per-feature mean and std (1 where a feature is constant)."""
  x = np.asarray(x, np.float64)
  std = x.std(0)
  return x.mean(0), np.where(std > 0, std, 1.0)


def _standardiser(x):
  mean, std = _moments(x)
  return lambda v: (np.asarray(v, np.float64) - mean) / std


def fit_ridge_probe(train, val, alphas):
  """Per target, a ridge map from standardised features, alpha chosen on val by R2.

  train/val: (features (n, d), targets (n, P) with NaN where missing).
  Returns `predict(features) -> (n, P)` (NaN for a target too sparse to fit)
  and the chosen alphas (P,). Targets missing on the same training rows share one fit.
  """
  w, b, chosen = ridge_probe_weights(train, val, alphas)
  return lambda x: np.asarray(x, np.float64) @ w + b, chosen


def ridge_probe_weights(train, val, alphas):
  """`fit_ridge_probe` as the linear map itself on the raw features: (w (d, P), b (P,), chosen
  alphas (P,)); a target too sparse to fit gets zero weights and a NaN bias and alpha."""
  (xtr, ytr), (xva, yva) = train, val
  mean, std = _moments(xtr)
  standard = lambda v: (np.asarray(v, np.float64) - mean) / std
  xtr, xva = standard(xtr), standard(xva)
  num_targets = ytr.shape[1]
  w, b, chosen = np.zeros((xtr.shape[1], num_targets)), np.full(num_targets, np.nan), np.full(
      num_targets, np.nan)
  present = ~np.isnan(ytr)
  for rows in {present[:, j].tobytes(): present[:, j] for j in range(num_targets)}.values():
    cols = [j for j in range(num_targets) if np.array_equal(present[:, j], rows)]
    if rows.sum() < 2:
      continue
    path = ridge_path(xtr[rows], ytr[rows][:, cols], alphas)
    for k, j in enumerate(cols):
      va = ~np.isnan(yva[:, j])
      if va.sum() < 2:
        continue
      scores = {a: r2_score(yva[va, j], xva[va] @ wa[:, k] + ba[k]) for a, (wa, ba) in path.items()}
      best = max(scores, key=scores.get)   # the first of equal scores, in `alphas` order
      wk, bk = path[best][0][:, k], path[best][1][k]
      # Standardisation folded in: ((x - mean) / std) @ wk + bk == x @ (wk / std) + b.
      w[:, j], b[j], chosen[j] = wk / std, bk - (mean / std) @ wk, best
  return w, b, chosen


def fit_ridge_map(train, val, alphas):
  """One multi-output ridge map from standardised features, alpha chosen on val by mean squared
  error over all outputs (a latent, not separate phenotypes: one alpha for all).

  train/val: (features (n, d), targets (n, ...)). Returns (`predict(features) -> (n, ...)`,
  chosen alpha, {alpha: val MSE}).
  """
  (xtr, ytr), (xva, yva) = train, val
  shape = np.shape(ytr)[1:]
  standard = _standardiser(xtr)
  flat = lambda y: np.asarray(y, np.float64).reshape(len(y), -1)
  fits = ridge_path(standard(xtr), flat(ytr), alphas)
  val_mse = {a: float(np.mean((standard(xva) @ w + b - flat(yva)) ** 2)) for a, (w, b) in fits.items()}
  alpha = min(val_mse, key=val_mse.get)
  w, b = fits[alpha]
  return lambda x: (standard(x) @ w + b).reshape((-1,) + shape), alpha, val_mse


def ridge_probe(train, val, test, alphas, names=None):
  """Linear probe: features -> each target, alpha chosen on val by R2.

  Each of train/val/test is (features (n, d), targets (n, P) with NaN where
  missing). Features are standardised with train statistics. Returns a dict
  {name: {"r2": test R2, "alpha": chosen alpha, "n_test": count}}.
  """
  predict, alphas_chosen = fit_ridge_probe(train, val, alphas)
  xte, yte = test
  return ridge_scores(yte, predict(xte), alphas_chosen, names)


def ridge_scores(yte, pred, alphas_chosen, names=None):
  """`ridge_probe`'s report of test predictions `pred` (n, P) of targets `yte` (NaN: missing)."""
  names = names or [str(i) for i in range(yte.shape[1])]
  out = {}
  for j, name in enumerate(names):
    te = ~np.isnan(yte[:, j])
    if np.isnan(alphas_chosen[j]) or te.sum() < 2:
      out[name] = dict(r2=float("nan"), alpha=float("nan"), n_test=int(te.sum()))
    else:
      out[name] = dict(r2=r2_score(yte[te, j], pred[te, j]), alpha=float(alphas_chosen[j]),
                       n_test=int(te.sum()))
  return out


def top_k(ranks, ks=(1, 5)):
  """{"top<k>": fraction of ranks <= k} for retrieval ranks (1 = the match first), any shape."""
  ranks = np.asarray(ranks)
  return {f"top{k}": float(np.mean(ranks <= k)) for k in ks}


def retrieval_ranks(similarity):
  """Per row, the rank of its matching column (1 = top; ties count against the match)."""
  s = np.asarray(similarity, np.float64)
  true = np.diag(s)[:, None]
  return np.sum(s >= true, axis=1)  # the match itself and every column tied with or above it


def pca_fit(x, k):
  """Principal axes of rows of x: returns (mean (D,), components (D, k))."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  k = min(k, vt.shape[0])
  return mean.astype(np.float32), vt[:k].T.astype(np.float32)


# ---------------------------------------------------------------------------
# Stage 5 evaluation: regression and classification metrics (their bootstrap
# CIs and the per-label reports are in bootstrap.py).
#
# Each metric is a scalar function of 1-D arrays. Most also carry a `rowwise`
# attribute: the same metric along the last axis of (B, n) arrays, returning
# (B,) and NaN (silently) where undefined. `bootstrap.bootstrap_ci` uses it,
# when every array is 1-D, to score a block of resamples at once; the scalar
# functions are thin wrappers around it, so both paths are the same arithmetic.
# ---------------------------------------------------------------------------

def _rows(x):
  """x as float64 with a leading batch axis of one."""
  return np.asarray(x, np.float64).reshape(1, -1)


def _check_same_length(a, b):
  if np.shape(a) != np.shape(b) or np.ndim(a) != 1:
    raise ValueError(f"expected two 1-D arrays of the same length, got shapes "
                     f"{np.shape(a)} and {np.shape(b)}")


def _check_binary(y_true, scores):
  _check_same_length(y_true, scores)
  y = np.asarray(y_true)
  if not np.isin(y, (0, 1)).all():
    raise ValueError("y_true must hold only 0 and 1 (drop missing labels first)")
  if np.isnan(np.asarray(scores, np.float64)).any():
    raise ValueError("scores contain NaN")
  return y.astype(np.float64), np.asarray(scores, np.float64)


def _warn_one_class(fn_name, y):
  n_pos = int(np.sum(y))
  warnings.warn(f"{fn_name}: y_true holds only one class ({n_pos} positive of {y.size}); "
                "the metric is undefined and NaN is returned", RuntimeWarning, stacklevel=3)


def _divide(num, den):
  """num / den elementwise, NaN where den == 0."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


# Regression --------------------------------------------------------------------


def _r2_rows(y_true, y_pred):
  ss_res = np.sum((y_true - y_pred) ** 2, axis=-1)
  ss_tot = np.sum((y_true - y_true.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
  constant = np.where(ss_res == 0, 1.0, 0.0)  # as r2_score for a constant target
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(ss_tot == 0, constant, 1.0 - ss_res / np.where(ss_tot == 0, 1.0, ss_tot))


def _pearson_rows(y_true, y_pred):
  constant = (np.all(y_true == y_true[..., :1], axis=-1) |
              np.all(y_pred == y_pred[..., :1], axis=-1))
  xm = y_true - y_true.mean(axis=-1, keepdims=True)
  ym = y_pred - y_pred.mean(axis=-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    xm = xm / np.linalg.norm(xm, axis=-1, keepdims=True)
    ym = ym / np.linalg.norm(ym, axis=-1, keepdims=True)
    r = np.clip(np.sum(xm * ym, axis=-1), -1.0, 1.0)
  return np.where(constant, np.nan, r)


def _mae_rows(y_true, y_pred):
  return np.mean(np.abs(y_true - y_pred), axis=-1)


def pearson_r(y_true, y_pred):
  """Pearson correlation coefficient (scipy.stats.pearsonr's statistic).

  NaN, with a RuntimeWarning, when either input is constant (every value
  equal, including n < 2), where the coefficient is undefined.
  """
  y_true = np.asarray(y_true, np.float64)
  y_pred = np.asarray(y_pred, np.float64)
  _check_same_length(y_true, y_pred)
  r = float(_pearson_rows(y_true[None], y_pred[None])[0]) if y_true.size else float("nan")
  if np.isnan(r) and not (np.isnan(y_true).any() or np.isnan(y_pred).any()):
    warnings.warn("pearson_r: an input is constant; the correlation is undefined and NaN "
                  "is returned", RuntimeWarning, stacklevel=2)
  return r


def mean_absolute_error(y_true, y_pred):
  """Mean of |y_true - y_pred| (as scikit-learn)."""
  _check_same_length(y_true, y_pred)
  return float(_mae_rows(_rows(y_true), _rows(y_pred))[0])


r2_score.rowwise = _r2_rows
pearson_r.rowwise = _pearson_rows
mean_absolute_error.rowwise = _mae_rows


# Classification ----------------------------------------------------------------


def _roc_auc_rows(y_true, scores):
  ranks = _stats.rankdata(scores, axis=-1)  # average ranks: a tie counts one half
  n = y_true.shape[-1]
  n_pos = y_true.sum(axis=-1)
  n_neg = n - n_pos
  u = np.sum(ranks * y_true, axis=-1) - n_pos * (n_pos + 1) / 2
  return _divide(u, n_pos * n_neg)


def _average_precision_rows(y_true, scores):
  order = np.argsort(-scores, axis=-1, kind="stable")
  s = np.take_along_axis(scores, order, axis=-1)
  y = np.take_along_axis(y_true, order, axis=-1)
  n = y.shape[-1]
  tps = np.cumsum(y, axis=-1)
  # A threshold per distinct score: the last position of each run of tied scores.
  is_last = np.concatenate([s[..., :-1] != s[..., 1:], np.ones(s.shape[:-1] + (1,), bool)],
                           axis=-1)
  at_last = np.where(is_last, tps, 0.0)
  # tps at the previous threshold (tps never decreases, so a running max finds it).
  prev = np.maximum.accumulate(
      np.concatenate([np.zeros(s.shape[:-1] + (1,)), at_last[..., :-1]], axis=-1), axis=-1)
  precision = tps / np.arange(1, n + 1)
  ap = np.sum(np.where(is_last, (tps - prev) * precision, 0.0), axis=-1)
  n_pos = tps[..., -1]
  return np.where((n_pos == 0) | (n_pos == n), np.nan, _divide(ap, n_pos))


def roc_auc(y_true, scores):
  """Area under the ROC curve via the Mann-Whitney U statistic.

  AUROC = P(score of a random positive > score of a random negative), a tie
  counting one half (average ranks), which equals
  sklearn.metrics.roc_auc_score (trapezoidal area) also with tied scores.

  y_true holds 0/1 (missing labels removed beforehand); scores must not be
  NaN. With one class only the AUROC is undefined: returns NaN and issues a
  RuntimeWarning (it does not raise, so a bootstrap or a sweep over labels
  can carry on).
  """
  y, s = _check_binary(y_true, scores)
  if y.size == 0 or y.min() == y.max():
    _warn_one_class("roc_auc", y)
    return float("nan")
  return float(_roc_auc_rows(y[None], s[None])[0])


def average_precision(y_true, scores):
  """Average precision (area under the precision-recall curve, AUPRC).

  scikit-learn's step-wise definition: over the distinct score thresholds t
  in decreasing order, sum_k (R_k - R_{k-1}) P_k, with P, R the precision
  and recall of `scores >= t_k` and R_0 = 0; tied scores enter together at
  one threshold. Equals sklearn.metrics.average_precision_score.

  With one class only returns NaN with a RuntimeWarning (scikit-learn instead
  gives 0 with no positives and 1 with no negatives).
  """
  y, s = _check_binary(y_true, scores)
  if y.size == 0 or y.min() == y.max():
    _warn_one_class("average_precision", y)
    return float("nan")
  return float(_average_precision_rows(y[None], s[None])[0])


roc_auc.rowwise = _roc_auc_rows
average_precision.rowwise = _average_precision_rows


def roc_curve(y_true, scores, drop_intermediate=False):
  """ROC curve points: (fpr, tpr, thresholds), as sklearn.metrics.roc_curve.

  thresholds are np.inf followed by every distinct score in decreasing
  order; the point at threshold t is for predictions `scores >= t` (the inf
  point is (0, 0)). By default every distinct threshold is kept
  (scikit-learn's drop_intermediate=False); drop_intermediate=True drops the
  collinear points exactly as scikit-learn's default does. With one class the
  undefined rate (fpr with no negatives, tpr with no positives) is all NaN,
  with a RuntimeWarning.
  """
  y, s = _check_binary(y_true, scores)
  if y.size == 0:
    raise ValueError("roc_curve of empty arrays")
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
  tps = np.cumsum(y)[last]
  fps = (last + 1) - tps
  thresholds = s[last]
  if drop_intermediate and fps.size > 2:
    keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
    tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
  tps = np.r_[0.0, tps]
  fps = np.r_[0.0, fps].astype(np.float64)
  thresholds = np.r_[np.inf, thresholds]
  if fps[-1] == 0 or tps[-1] == 0:
    _warn_one_class("roc_curve", y)
  fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
  tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
  return fpr, tpr, thresholds


def youden_threshold(y_true, scores):
  """Threshold maximising Youden's J = sensitivity + specificity - 1.

  Candidates are the distinct observed scores; predictions are
  `scores >= threshold`. Among thresholds with equal J the highest is taken
  (fewest positive calls). Choose it on validation data and apply it,
  unchanged, to the test set. One class only: NaN with a RuntimeWarning.
  """
  y, s = _check_binary(y_true, scores)
  if y.size == 0 or y.min() == y.max():
    _warn_one_class("youden_threshold", y)
    return float("nan")
  fpr, tpr, thresholds = roc_curve(y, s)
  j = (tpr - fpr)[1:]  # the inf point (nothing called positive) is not a candidate
  return float(thresholds[1:][np.argmax(j)])


_BINARY_KEYS = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")


def _binary_rows(y_true, scores, threshold):
  """The _BINARY_KEYS metrics along the last axis: (..., 6)."""
  pred = scores >= threshold
  pos = y_true == 1
  tp = np.sum(pred & pos, axis=-1)
  fp = np.sum(pred & ~pos, axis=-1)
  fn = np.sum(~pred & pos, axis=-1)
  tn = np.sum(~pred & ~pos, axis=-1)
  return np.stack([_divide(tp, tp + fn), _divide(tn, tn + fp), _divide(tp, tp + fp),
                   _divide(tn, tn + fn), _divide(2 * tp, 2 * tp + fp + fn),
                   _divide(tp + tn, tp + tn + fp + fn)], axis=-1)


def binary_metrics(y_true, scores, threshold):
  """Metrics of the predictions `scores >= threshold` against 0/1 y_true.

  Returns dict(sensitivity (recall), specificity, ppv (precision), npv, f1,
  accuracy); a zero denominator (e.g. ppv with no positive calls) gives NaN
  without a warning.
  """
  y, s = _check_binary(y_true, scores)
  values = _binary_rows(y, s, threshold)
  return {k: float(v) for k, v in zip(_BINARY_KEYS, values)}


# Release-comparable reporting: a fixed threshold and Wilson intervals -----------------------


def wilson_interval(successes, n, confidence=0.95):
  """Wilson score interval of a binomial proportion (no continuity correction): what
  `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")` gives. n == 0 gives NaNs."""
  if n == 0:
    return float("nan"), float("nan")
  z = _stats.norm.ppf(0.5 + confidence / 2)
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def threshold_report(y_true, scores, threshold=0.5, confidence=0.95):
  """Sensitivity, specificity, accuracy, PPV and NPV of `scores >= threshold`, each with its
  counts and Wilson interval, as the release reports them (NaN where a denominator is 0; the
  release writes 0 there for PPV and NPV)."""
  y, s = _check_binary(y_true, scores)
  pred, pos = s >= threshold, y == 1
  tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & ~pos))
  fn, tn = int(np.sum(~pred & pos)), int(np.sum(~pred & ~pos))
  parts = dict(sensitivity=(tp, tp + fn), specificity=(tn, tn + fp),
               accuracy=(tp + tn, tp + tn + fp + fn), ppv=(tp, tp + fp), npv=(tn, tn + fn))
  out = dict(threshold=float(threshold), tp=tp, fp=fp, fn=fn, tn=tn)
  for name, (k, n) in parts.items():
    low, high = wilson_interval(k, n, confidence)
    out[name] = dict(value=k / n if n else float("nan"), low=low, high=high, n=n)
  return out
