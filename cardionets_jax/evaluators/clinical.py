"""Phenotype regression and disease screening, reported as the paper does: R2, Pearson r and MAE
per phenotype, AUROC, AUPRC, sensitivity, specificity, PPV, NPV and F1 per disease (thresholds
chosen on validation by Youden's J), each with a bootstrap CI over subjects; tables and figures."""

import csv
import warnings

import numpy as np

from cardionets_jax import bootstrap
from cardionets_jax import evaluate
from cardionets_jax import plots


def report_method(method, val, test, meta, n_boot, ci_method="percentile"):
  """Test metrics with bootstrap CIs (`ci_method`: bootstrap.METHODS); thresholds chosen on
  validation (Youden)."""
  out = dict(init=method.init, mode=method.mode, label_fraction=method.fraction, seed=method.seed)
  if test["phenotypes_pred"] is not None:
    out["phenotypes"] = bootstrap.regression_report(test["phenotypes"], test["phenotypes_pred"],
                                                    meta.phenotype_names, n_boot=n_boot,
                                                    seed=method.seed)
  if test["probs"] is None:
    return out
  thresholds = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for j in range(len(meta.label_names)):
      known = val["labels"][:, j] >= 0
      y, s = val["labels"][known, j], val["probs"][known, j]
      thresholds.append(evaluate.youden_threshold(y, s) if len(np.unique(y)) == 2 else 0.5)
  out["diseases"] = bootstrap.classification_report(test["labels"], test["probs"], meta.label_names,
                                                    np.asarray(thresholds), n_boot=n_boot,
                                                    seed=method.seed, method=ci_method)
  out["diseases_release"] = release_report(test, meta.label_names)
  return out


RELEASE_METRICS = ("sensitivity", "specificity", "accuracy", "ppv", "npv")


def release_report(preds, label_names):
  """The release's way (for side-by-side tables): threshold 0.5, Wilson 95% CIs."""
  out = {}
  for j, name in enumerate(label_names):
    known = preds["labels"][:, j] >= 0
    y, s = preds["labels"][known, j], preds["probs"][known, j]
    if len(y):
      out[name] = evaluate.threshold_report(y, s, 0.5)
  return out


def _value(d):
  return d["value"] if isinstance(d, dict) else d


def _metric(result, kind, target, metric):
  """result[kind][target][metric], or NaN for a task the method has no head for."""
  return result.get(kind, {}).get(target, {}).get(metric, {"value": float("nan")})


def summary_table(results, meta):
  """Rows: phenotypes (R2) and diseases (AUROC); columns: methods. Seeds are averaged."""
  groups = {}
  for name, r in results.items():
    groups.setdefault(f"{r['init']}-{r['mode']}@{r['label_fraction']:g}", []).append(r)
  rows = []
  for p in meta.phenotype_names:
    rows.append((f"{p} R2", {g: [_metric(r, "phenotypes", p, "r2") for r in rs]
                             for g, rs in groups.items()}))
  for d in meta.label_names:  # the counts say how far a CI can be trusted (the test split's)
    counts = {(r["diseases"][d]["n_positive"], r["diseases"][d].get("n_negative"))
              for r in results.values() if d in r.get("diseases", {})}
    label = f"{d} AUROC" + "".join(f" ({p} pos / {n} neg)" for p, n in sorted(counts, key=str))
    rows.append((label, {g: [_metric(r, "diseases", d, "auroc") for r in rs]
                         for g, rs in groups.items()}))
  mean_r2 = {g: [{"value": float(np.nanmean([_value(_metric(r, "phenotypes", p, "r2"))
                                             for p in meta.phenotype_names] or [np.nan]))}
                 for r in rs] for g, rs in groups.items()}
  rows.insert(len(meta.phenotype_names), ("mean phenotype R2", mean_r2))
  return list(groups), rows


def _cell(cis):
  values = [_value(c) for c in cis]
  if len(cis) == 1 and "low" in cis[0]:
    c = cis[0]
    return f"{c['value']:.3f} ({c['low']:.3f}-{c['high']:.3f})"
  if len(values) > 1:
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"
  return f"{values[0]:.3f}"


def write_tables(workdir, results, meta):
  columns, rows = summary_table(results, meta)
  lines = ["| target | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for label, cells in rows:
    lines.append(f"| {label} | " + " | ".join(_cell(cells[c]) for c in columns) + " |")
  with open(workdir.file("finetune", "results.md"), "w") as f:
    f.write("Test split; 95% bootstrap CIs over subjects (one seed) or mean ± sd over seeds.\n\n")
    f.write("\n".join(lines) + "\n")
    release = release_table(results)
    if release:
      f.write("\nRelease-comparable (as the authors report): threshold 0.5, Wilson 95% CIs; "
              "not the validation-chosen thresholds above.\n\n" + "\n".join(release) + "\n")
  with open(workdir.file("finetune", "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "init", "mode", "label_fraction", "seed", "target", "metric", "value",
                "low", "high", "n", "n_positive", "n_negative"])
    for name, r in results.items():
      head = [name, r["init"], r["mode"], r["label_fraction"], r["seed"]]
      for kind in ("phenotypes", "diseases"):
        for target, metrics in r.get(kind, {}).items():
          for metric, v in metrics.items():
            if isinstance(v, dict) and "value" in v:
              w.writerow(head + [target, metric, v["value"], v.get("low"), v.get("high"),
                                 metrics.get("n"), metrics.get("n_positive"), metrics.get("n_negative")])
  return "\n".join(lines)


def release_table(results):
  """Markdown rows: one per (method, disease), the RELEASE_METRICS at threshold 0.5."""
  lines = []
  for name, r in results.items():
    for disease, m in r.get("diseases_release", {}).items():
      cells = [f"{m[k]['value']:.3f} ({m[k]['low']:.3f}-{m[k]['high']:.3f})" for k in RELEASE_METRICS]
      lines.append(f"| {name} | {disease} | " + " | ".join(cells) + " |")
  if not lines:
    return []
  return (["| method | disease | " + " | ".join(RELEASE_METRICS) + " |",
           "|---|---|" + "---|" * len(RELEASE_METRICS)] + lines)


def write_figures(workdir, test_preds, meta):
  plt = plots.pyplot()
  n = len(meta.label_names)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
  for j, name in enumerate(meta.label_names):
    ax = axes[0, j]
    for method, p in test_preds.items():
      if p["probs"] is None:
        continue
      known = p["labels"][:, j] >= 0
      y, s = p["labels"][known, j], p["probs"][known, j]
      if len(np.unique(y)) < 2:
        continue
      fpr, tpr, _ = evaluate.roc_curve(y, s)
      ax.plot(fpr, tpr, label=f"{method} (AUROC {evaluate.roc_auc(y, s):.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(title=name, xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  fig.savefig(workdir.file("finetune", "roc_curves.png"), dpi=110)
  plt.close(fig)

  method, p = next(((m, p) for m, p in test_preds.items() if p["phenotypes_pred"] is not None),
                   (None, None))
  names = meta.phenotype_names
  if p is None or not names:
    return
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
  for j, name in enumerate(names):
    ax = axes[j // cols, j % cols]
    t, q = p["phenotypes"][:, j], p["phenotypes_pred"][:, j]
    ok = ~np.isnan(t)
    ax.scatter(t[ok], q[ok], s=6)
    lo, hi = np.nanmin(t), np.nanmax(t)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    unit = meta.phenotype_units[j]
    ax.set_title(f"{name} (R2 {evaluate.r2_score(t[ok], q[ok]):.2f})", fontsize=8)
    ax.set_xlabel(f"true [{unit}]", fontsize=7), ax.set_ylabel(f"predicted [{unit}]", fontsize=7)
  for j in range(len(names), rows * cols):
    axes[j // cols, j % cols].axis("off")
  fig.suptitle(f"Held-out predictions: {method}", fontsize=9)
  fig.tight_layout()
  fig.savefig(workdir.file("finetune", "phenotype_scatter.png"), dpi=110)
  plt.close(fig)


def selection_score(preds, tasks):
  """Mean R2 (phenotypes) + mean AUROC (diseases): what early stopping maximises."""
  score = 0.0
  if "phenotypes" in tasks:
    r2 = [evaluate.r2_score(t[~np.isnan(t)], p[~np.isnan(t)])
          for t, p in zip(preds["phenotypes"].T, preds["phenotypes_pred"].T) if (~np.isnan(t)).sum() > 1]
    score += float(np.mean(r2)) if r2 else 0.0
  if "disease" in tasks:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      auc = [evaluate.roc_auc(y[y >= 0], s[y >= 0])
             for y, s in zip(preds["labels"].T, preds["probs"].T)]
    auc = [a for a in auc if np.isfinite(a)]
    score += float(np.mean(auc)) if auc else 0.0
  return score
