"""Metrics and probes: pure numpy functions, each tested against a reference."""

import numpy as np


def r2_score(y_true, y_pred):
  """Coefficient of determination, 1 - SS_res / SS_tot (as scikit-learn)."""
  y_true = np.asarray(y_true, np.float64)
  y_pred = np.asarray(y_pred, np.float64)
  ss_res = np.sum((y_true - y_pred) ** 2)
  ss_tot = np.sum((y_true - y_true.mean()) ** 2)
  if ss_tot == 0:
    return 1.0 if ss_res == 0 else 0.0  # scikit-learn's convention for a constant target
  return float(1.0 - ss_res / ss_tot)


def standardize(train, *others):
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return [(x - mean) / std for x in (train,) + others]


def ridge_fit(x, y, alpha):
  """Ridge regression with an unpenalised intercept; returns (w, b).

  Minimises ||y - x w - b||^2 + alpha ||w||^2 (scikit-learn's Ridge objective).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
  xc = x - x_mean
  w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
  return w, y_mean - x_mean @ w


def ridge_probe(train, val, test, alphas, names=None):
  """Linear probe: features -> each target, alpha chosen on val by R2.

  Each of train/val/test is (features (n, d), targets (n, P) with NaN where
  missing). Features are standardised with train statistics. Returns a dict
  {name: {"r2": test R2, "alpha": chosen alpha, "n_test": count}}.
  """
  (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
  xtr, xva, xte = standardize(np.asarray(xtr, np.float64), np.asarray(xva, np.float64),
                              np.asarray(xte, np.float64))
  names = names or [str(i) for i in range(ytr.shape[1])]
  out = {}
  for j, name in enumerate(names):
    tr, va, te = (~np.isnan(ytr[:, j]), ~np.isnan(yva[:, j]), ~np.isnan(yte[:, j]))
    if tr.sum() < 2 or va.sum() < 2 or te.sum() < 2:
      out[name] = dict(r2=float("nan"), alpha=float("nan"), n_test=int(te.sum()))
      continue
    best = None
    for alpha in alphas:
      w, b = ridge_fit(xtr[tr], ytr[tr, j], alpha)
      score = r2_score(yva[va, j], xva[va] @ w + b)
      if best is None or score > best[0]:
        best = (score, alpha, w, b)
    _, alpha, w, b = best
    out[name] = dict(r2=r2_score(yte[te, j], xte[te] @ w + b), alpha=float(alpha),
                     n_test=int(te.sum()))
  return out


def retrieval_topk(similarity, ks=(1, 5)):
  """Fraction of rows whose matching column (the diagonal) ranks in the top k.

  Ties count against the match: its rank is the number of columns scoring at
  least as high, itself excluded, plus one.
  """
  s = np.asarray(similarity, np.float64)
  true = np.diag(s)[:, None]
  rank = np.sum(s >= true, axis=1)  # the match itself and every column tied with or above it
  return {f"top{k}": float(np.mean(rank <= k)) for k in ks}


def pca_fit(x, k):
  """Principal axes of rows of x: returns (mean (D,), components (D, k))."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  k = min(k, vt.shape[0])
  return mean.astype(np.float32), vt[:k].T.astype(np.float32)
