"""Bootstrap confidence intervals of the evaluate.py metrics, and the per-label reports.

Kept apart from the point metrics: these resample subjects and score whole blocks of resamples at
once through each metric's `rowwise` form, so every CI here is the same arithmetic as the metric
in evaluate.py, recomputed on np.random.default_rng(seed) resamples.
"""

import warnings

import numpy as np

from cardionets_jax.evaluate import (_BINARY_KEYS, _average_precision_rows, _binary_rows,
                                     _roc_auc_rows, average_precision, binary_metrics,
                                     mean_absolute_error, pearson_r, r2_score, roc_auc)


# Bootstrap ---------------------------------------------------------------------


METHODS = ("percentile", "stratified", "bca")


def _resample_blocks(n, n_boot, seed, strata=None, block_elements=1 << 20):
  """Blocks of bootstrap index rows (b, n), drawn one resample at a time.

  Each resample is its own rng.integers call (one per stratum when `strata` is given: each
  stratum is resampled within itself, so its size is the same in every resample), so the indices
  depend only on (n, n_boot, seed, strata), never on the block size.
  """
  rng = np.random.default_rng(seed)
  groups = None if strata is None else [np.flatnonzero(strata == v) for v in np.unique(strata)]
  draw = ((lambda: rng.integers(0, n, size=n)) if groups is None else
          (lambda: np.concatenate([g[rng.integers(0, len(g), size=len(g))] for g in groups])))
  per_block = max(1, min(n_boot, block_elements // max(n, 1)))
  done = 0
  while done < n_boot:
    b = min(per_block, n_boot - done)
    yield np.stack([draw() for _ in range(b)])
    done += b


def _bootstrap_samples(stat_rows, arrays, n_boot, seed, strata=None):
  """stat_rows(*resampled arrays, each (b, n, ...)) -> (b, K), over all resamples."""
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError("every array must index the same subjects (same length)")
  out = []
  for idx in _resample_blocks(n, n_boot, seed, strata):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")  # NaN resamples are counted, not warned about
      out.append(np.asarray(stat_rows(*[a[idx] for a in arrays]), np.float64).reshape(len(idx), -1))
  return np.concatenate(out, axis=0)


def _jackknife(stat_rows, arrays, block=256):
  """(n, K) leave-one-out values of stat_rows, evaluated in blocks of rows."""
  n = len(arrays[0])
  out = []
  for start in range(0, n, block):
    rows = np.arange(start, min(start + block, n))
    idx = np.stack([np.delete(np.arange(n), i) for i in rows])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")
      out.append(np.asarray(stat_rows(*[a[idx] for a in arrays]), np.float64).reshape(len(rows), -1))
  return np.concatenate(out, axis=0)


def _percentile_ci(value, samples, alpha, jackknife=None):
  """The percentile interval, or with `jackknife` values the BCa one (Efron 1987): the
  percentiles moved by the bias of the resamples (z0) and the skew of the jackknife (a). A NaN
  point value gives a NaN interval: an undefined metric has no interval either."""
  valid = samples[~np.isnan(samples)]
  levels = np.array([alpha / 2, 1 - alpha / 2])
  if jackknife is not None and valid.size and np.isfinite(value):
    jk = jackknife[np.isfinite(jackknife)]
    d = jk.mean() - jk
    a = (d ** 3).sum() / (6.0 * (d ** 2).sum() ** 1.5) if (d ** 2).sum() > 0 else 0.0
    share = (np.sum(valid < value) + 0.5 * np.sum(valid == value)) / valid.size
    z0 = _ndtri(np.clip(share, 1.0 / (valid.size + 1), valid.size / (valid.size + 1)))
    z = _ndtri(levels)
    levels = _ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
  if valid.size == 0 or not np.isfinite(value):
    low = high = float("nan")
  else:
    low, high = (float(q) for q in np.percentile(valid, 100 * levels))
  return dict(value=float(value), low=low, high=high, n_boot_valid=int(valid.size))


def _ndtr(x):
  from scipy import special  # pylint: disable=import-outside-toplevel
  return special.ndtr(x)


def _ndtri(p):
  from scipy import special  # pylint: disable=import-outside-toplevel
  return special.ndtri(p)


def _nan_ci():
  return dict(value=float("nan"), low=float("nan"), high=float("nan"), n_boot_valid=0)


def _metric_rows(metric_fn, arrays):
  """A (b, n, ...) -> (b, 1) evaluator for metric_fn: its `rowwise` if usable, else a loop."""
  rowwise = getattr(metric_fn, "rowwise", None)
  if rowwise is not None and all(a.ndim == 1 for a in arrays):
    return lambda *blocks: rowwise(*[np.asarray(b, np.float64) for b in blocks])[:, None]
  return lambda *blocks: np.array([[metric_fn(*[b[i] for b in blocks])]
                                   for i in range(len(blocks[0]))], np.float64)


def bootstrap_ci(metric_fn, arrays, n_boot=1000, alpha=0.05, seed=0):
  """Percentile bootstrap confidence interval of metric_fn(*arrays).

  arrays: a tuple of arrays indexed by subject along their first axis.
  Subjects are resampled with replacement, the same indices for every array;
  the metric is recomputed on each of n_boot resamples (np.random.default_rng(
  seed), so the result is deterministic) and the (alpha/2, 1 - alpha/2)
  percentiles (numpy's linear interpolation) of the resampled values form the
  interval. Resamples where the metric is NaN (e.g. one class only for
  roc_auc) are skipped; n_boot_valid counts the others, and low/high are NaN
  if there are none.

  A metric_fn with a `rowwise` attribute (the metrics of evaluate.py) is
  evaluated on blocks of resamples at once; any other callable is called once
  per resample (warnings it raises on resamples are silenced).

  Returns dict(value=metric on the full data, low, high, n_boot_valid).
  """
  arrays = tuple(np.asarray(a) for a in arrays)
  if len(arrays[0]) == 0:
    return _nan_ci()
  value = metric_fn(*arrays)
  samples = _bootstrap_samples(_metric_rows(metric_fn, arrays), arrays, n_boot, seed)
  return _percentile_ci(value, samples[:, 0], alpha)


def paired_bootstrap_diff(metric_fn, arrays_a, arrays_b, n_boot=1000, alpha=0.05, seed=0):
  """Bootstrap CI of metric_fn(*arrays_a) - metric_fn(*arrays_b).

  arrays_a and arrays_b index the same subjects (e.g. (y, scores of method
  A)) and (y, scores of method B)); each resample draws one set of subjects
  and scores both methods on it, so the interval accounts for the pairing.
  A CI entirely above zero supports "A beats B". Same conventions and return
  dict as bootstrap_ci; a resample is skipped when either metric is NaN.
  """
  arrays_a = tuple(np.asarray(a) for a in arrays_a)
  arrays_b = tuple(np.asarray(a) for a in arrays_b)
  if len(arrays_a[0]) == 0:
    return _nan_ci()
  value = metric_fn(*arrays_a) - metric_fn(*arrays_b)
  rows_a = _metric_rows(metric_fn, arrays_a)
  rows_b = _metric_rows(metric_fn, arrays_b)
  k = len(arrays_a)
  samples = _bootstrap_samples(lambda *blocks: rows_a(*blocks[:k]) - rows_b(*blocks[k:]),
                               arrays_a + arrays_b, n_boot, seed)
  return _percentile_ci(value, samples[:, 0], alpha)


# Reports -----------------------------------------------------------------------


def regression_report(y_true, y_pred, names=None, n_boot=1000, seed=0, alpha=0.05):
  """Per-phenotype R2, Pearson r and MAE with bootstrap CIs.

  y_true: (N, P) with NaN where missing; y_pred: (N, P). Rows missing for a
  phenotype are dropped for it alone. Returns {name: {"r2": ci, "pearson_r":
  ci, "mae": ci, "n": count}} with each ci a bootstrap_ci dict; the three
  metrics of a phenotype share the same resamples (each equals
  bootstrap_ci(metric, (y_true[m, j], y_pred[m, j]), n_boot, alpha, seed)).
  """
  y_true = np.asarray(y_true, np.float64)
  y_pred = np.asarray(y_pred, np.float64)
  if y_true.shape != y_pred.shape or y_true.ndim != 2:
    raise ValueError(f"expected (N, P) y_true and y_pred, got {y_true.shape} and {y_pred.shape}")
  names = list(names) if names is not None else [str(j) for j in range(y_true.shape[1])]
  metrics = (("r2", r2_score), ("pearson_r", pearson_r), ("mae", mean_absolute_error))
  stat_rows = lambda yt, yp: np.stack([fn.rowwise(yt, yp) for _, fn in metrics], axis=-1)
  out = {}
  for j, name in enumerate(names):
    keep = ~np.isnan(y_true[:, j])
    yt, yp = y_true[keep, j], y_pred[keep, j]
    entry = dict(n=int(keep.sum()))
    if yt.size == 0:
      entry.update({key: _nan_ci() for key, _ in metrics})
    else:
      samples = _bootstrap_samples(stat_rows, (yt, yp), n_boot, seed)
      for k, (key, fn) in enumerate(metrics):
        entry[key] = _percentile_ci(fn(yt, yp), samples[:, k], alpha)
    out[name] = entry
  return out


def classification_report(y_true, scores, names=None, thresholds=None, n_boot=1000, seed=0,
                          alpha=0.05, method="percentile"):
  """Per-label AUROC, AUPRC and threshold metrics, each with a bootstrap CI.

  y_true: (N, L) of 1, 0, or -1 (or NaN) where missing; scores: (N, L);
  thresholds: (L,) decision thresholds chosen on validation data (e.g. by
  youden_threshold), applied as `scores >= threshold`; None skips the
  threshold metrics. Returns {name: {"auroc": ci, "auprc": ci, "threshold":
  t, "sensitivity": ci, "specificity": ci, "ppv": ci, "npv": ci, "f1": ci,
  "accuracy": ci, "n": count, "n_positive", "n_negative"}} where every ci is a
  bootstrap_ci dict (the threshold metrics too, the threshold held fixed).
  All metrics of a label share the resamples of bootstrap_ci with the same n_boot and seed. A
  label with one class in its non-missing rows gets NaN AUROC/AUPRC (and a warning), NaN CIs.
  `method`: "percentile" resamples subjects, "stratified" positives and negatives apart, "bca"
  corrects the percentile interval with a jackknife (benchmarks/bootstrap_coverage.py).
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {METHODS}")
  y_true = np.asarray(y_true, np.float64)
  scores = np.asarray(scores, np.float64)
  if y_true.shape != scores.shape or y_true.ndim != 2:
    raise ValueError(f"expected (N, L) y_true and scores, got {y_true.shape} and {scores.shape}")
  names = list(names) if names is not None else [str(j) for j in range(y_true.shape[1])]
  if thresholds is not None:
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (y_true.shape[1],))
  out = {}
  for j, name in enumerate(names):
    keep = (y_true[:, j] == 0) | (y_true[:, j] == 1)
    yt, s = y_true[keep, j], scores[keep, j]
    entry = dict(n=int(keep.sum()), n_positive=int(yt.sum()), n_negative=int((yt == 0).sum()))
    t = float("nan") if thresholds is None else float(thresholds[j])
    use_t = thresholds is not None and not np.isnan(t)
    if thresholds is not None:
      entry["threshold"] = t
    keys = ("auroc", "auprc") + (_BINARY_KEYS if thresholds is not None else ())
    if yt.size == 0:
      entry.update({key: _nan_ci() for key in keys})
      out[name] = entry
      continue

    def stat_rows(yb, sb, t=t, use_t=use_t):
      cols = [_roc_auc_rows(yb, sb)[:, None], _average_precision_rows(yb, sb)[:, None]]
      if use_t:
        cols.append(_binary_rows(yb, sb, t))
      elif thresholds is not None:
        cols.append(np.full((len(yb), len(_BINARY_KEYS)), np.nan))
      return np.concatenate(cols, axis=-1)

    samples = _bootstrap_samples(stat_rows, (yt, s), n_boot, seed,
                                 yt if method == "stratified" else None)
    jackknife = _jackknife(stat_rows, (yt, s)) if method == "bca" else None
    values = [roc_auc(yt, s), average_precision(yt, s)]
    if thresholds is not None:
      point = binary_metrics(yt, s, t) if use_t else dict.fromkeys(_BINARY_KEYS, float("nan"))
      values += [point[key] for key in _BINARY_KEYS]
    for k, key in enumerate(keys):
      entry[key] = _percentile_ci(values[k], samples[:, k], alpha,
                                  None if jackknife is None else jackknife[:, k])
    out[name] = entry
  return out
