"""The paper's label-efficiency comparison: each method's test metric against the label fraction,
seeds averaged, with bootstrap CIs over test subjects, and paired CIs of the differences.

Per (method, label fraction), the metric is computed for every seed's model and averaged; a
bootstrap resample draws one set of test subjects and recomputes that seed average on it, so the
CI covers the subjects sampled (the seeds' spread is in results.md). A difference between two
methods is resampled on the same subjects for both (paired), so "CI above zero" reads "A beats B
on these subjects", at that label fraction.

Methods of several finetune runs (full fine-tuning in one, a frozen encoder's linear probe in
another) go into one comparison from what each run saved:

  python -m cardionets_jax.evaluators.label_efficiency --workdir=RUN_A --workdir=RUN_B --out=DIR
"""

import json
import os
import warnings

import numpy as np

from cardionets_jax import bootstrap
from cardionets_jax import evaluate
from cardionets_jax import plots

ORDER = ("cmr", "aligned", "stmem", "scratch")          # the paper's order, top to bottom
COMPARISONS = (("aligned", "scratch"), ("aligned", "stmem"), ("aligned", "cmr"))
COLOURS = {"cmr": "#6a1b9a", "aligned": "#d84315", "stmem": "#1565c0", "scratch": "#757575"}


def mean_phenotype_r2(y, preds):
  """y (n, P) with NaN where missing, preds (n, S, P) for S seeds: the mean over seeds of the
  mean over phenotypes of R2."""
  per_seed = []
  for s in range(preds.shape[1]):
    r2 = [evaluate.r2_score(y[ok, p], preds[ok, s, p])
          for p in range(y.shape[1]) for ok in [~np.isnan(y[:, p])] if ok.sum() > 1]
    per_seed.append(np.mean(r2) if r2 else np.nan)
  return float(np.mean(per_seed))


def mean_auroc(y, probs):
  """y (n,) in {0, 1, -1 missing}, probs (n, S): the mean over seeds of the AUROC."""
  known = y >= 0
  if len(np.unique(y[known])) < 2:
    return float("nan")
  return float(np.mean([evaluate.roc_auc(y[known], probs[known, s])
                        for s in range(probs.shape[1])]))


def _metrics(label_names):
  """{metric name: (fn, arrays(preds of one method, seeds stacked))}."""
  out = {"mean phenotype R2": (mean_phenotype_r2,
                               lambda m: (m["phenotypes"], m["phenotypes_pred"]))}
  for j, name in enumerate(label_names):
    out[f"{name} AUROC"] = (mean_auroc, lambda m, j=j: (m["labels"][:, j], m["probs"][:, :, j]))
  return out


def method_label(result):
  """"aligned", "cmr", ... for full fine-tuning; "cmr (linear)" for a frozen encoder's probe."""
  return result["init"] + ("" if result["mode"] == "full" else f" ({result['mode']})")


def _rank(label):
  init, _, mode = label.partition(" ")
  return (ORDER.index(init) if init in ORDER else len(ORDER), mode)


def _stack_seeds(test_preds, results):
  """{(method label, fraction): preds with seeds stacked on axis 1}."""
  groups = {}
  for name, r in results.items():
    groups.setdefault((method_label(r), r["label_fraction"]), []).append(test_preds[name])
  stacked = {}
  for key, parts in groups.items():
    first = parts[0]
    if any(not np.array_equal(p["labels"], first["labels"]) for p in parts):
      raise ValueError(f"{key}: the seeds' test subjects differ")
    stack = lambda k: (None if first[k] is None else np.stack([p[k] for p in parts], axis=1))
    stacked[key] = dict(phenotypes=first["phenotypes"], labels=first["labels"],
                        phenotypes_pred=stack("phenotypes_pred"), probs=stack("probs"))
  return stacked


def _same_subjects(a, b):
  return (np.array_equal(a["labels"], b["labels"])
          and np.array_equal(a["phenotypes"], b["phenotypes"], equal_nan=True))


def compare(test_preds, results, label_names, n_boot=1000):
  """{"metrics": {metric: {init: {fraction: CI}}}, "differences": {metric: {"A - B": {fraction:
  CI}}}} from the finetune stage's test predictions and its per-method results."""
  stacked = _stack_seeds(test_preds, results)
  fractions = sorted({f for _, f in stacked})
  out = {"metrics": {}, "differences": {}, "label_fractions": fractions,
         "seeds": sorted({r["seed"] for r in results.values()})}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for metric, (fn, arrays) in _metrics(label_names).items():
      has = {k: m for k, m in stacked.items() if all(a is not None for a in arrays(m))}
      labels = sorted({i for i, _ in has}, key=_rank)
      out["metrics"][metric] = {
          label: {f"{f:g}": bootstrap.bootstrap_ci(fn, arrays(has[label, f]), n_boot=n_boot)
                  for f in fractions if (label, f) in has}
          for label in labels}
      diffs = {}
      for a, b in COMPARISONS:
        for f in fractions:
          if (a, f) in has and (b, f) in has and _same_subjects(has[a, f], has[b, f]):
            diffs.setdefault(f"{a} - {b}", {})[f"{f:g}"] = bootstrap.paired_bootstrap_diff(
                fn, arrays(has[a, f]), arrays(has[b, f]), n_boot=n_boot)
      out["differences"][metric] = diffs
  return out


def _cell(ci):
  return f"{ci['value']:.3f} ({ci['low']:.3f} to {ci['high']:.3f})"


def table(comparison):
  """Markdown: one row per (metric, label fraction); methods, then paired differences."""
  inits = sorted({i for m in comparison["metrics"].values() for i in m}, key=_rank)
  pairs = sorted({p for d in comparison["differences"].values() for p in d},
                 key=lambda p: [f"{a} - {b}" for a, b in COMPARISONS].index(p))
  lines = ["| metric | labels | " + " | ".join(inits + pairs) + " |",
           "|---|---|" + "---|" * (len(inits) + len(pairs))]
  for metric, by_init in comparison["metrics"].items():
    for f in comparison["label_fractions"]:
      key = f"{f:g}"
      cells = [_cell(by_init[i][key]) if key in by_init.get(i, {}) else "-" for i in inits]
      diffs = comparison["differences"][metric]
      cells += [_cell(diffs[p][key]) if key in diffs.get(p, {}) else "-" for p in pairs]
      lines.append(f"| {metric} | {key} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def figure(path, comparison):
  """One panel per metric: the metric against the label fraction, a line per method, CI bands."""
  plt = plots.pyplot()
  metrics = list(comparison["metrics"])
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for init, by_fraction in comparison["metrics"][metric].items():
      xs = sorted(by_fraction, key=float)
      value, low, high = (np.array([by_fraction[x][k] for x in xs]) for k in ("value", "low", "high"))
      x = np.array([float(v) for v in xs])
      colour, style = COLOURS.get(init.split(" ")[0]), "o-" if " " not in init else "s--"
      ax.plot(x, value, style, color=colour, label=init, lw=1.5, ms=4)
      ax.fill_between(x, low, high, color=colour, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training labels")
    ax.set_title(metric, fontsize=9)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  seeds = comparison["seeds"]
  fig.suptitle(f"Test split, mean over {len(seeds)} seed(s), 95% bootstrap CIs over subjects",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


PREDICTIONS = "test_predictions.npz"


def save_predictions(path, test_preds):
  """Every method's test predictions, `METHOD|FIELD` arrays (a task without a head is left out)."""
  np.savez(path, **{f"{name}|{field}": value for name, preds in test_preds.items()
                    for field, value in preds.items() if value is not None})


def load_run(workdir):
  """(test_preds, results) of a finished finetune run, as `compare` takes them."""
  with np.load(os.path.join(workdir, "finetune", PREDICTIONS)) as saved:
    test_preds = {}
    for key in saved.files:
      name, _, field = key.partition("|")
      test_preds.setdefault(name, dict(phenotypes_pred=None, probs=None))[field] = saved[key]
  with open(os.path.join(workdir, "finetune", "results.json")) as f:
    results = json.load(f)["methods"]
  return test_preds, results


def main(argv):
  from absl import flags
  del argv
  test_preds, results = {}, {}
  for workdir in flags.FLAGS.workdir:
    preds, methods = load_run(workdir)
    clash = set(methods) & set(results)
    if clash:
      raise ValueError(f"{workdir}: methods {sorted(clash)} are already in an earlier --workdir")
    test_preds.update(preds)
    results.update(methods)
  label_names = list(dict.fromkeys(d for r in results.values() for d in r.get("diseases", {})))
  comparison = compare(test_preds, results, label_names, flags.FLAGS.n_boot)
  out = flags.FLAGS.out
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "label_efficiency.json"), "w") as f:
    json.dump(comparison, f, indent=1)
  with open(os.path.join(out, "label_efficiency.md"), "w") as f:
    f.write(table(comparison) + "\n")
  figure(os.path.join(out, "label_efficiency.png"), comparison)
  print(table(comparison))


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_multi_string("workdir", [], "A finished finetune workdir (repeat).")
  flags.DEFINE_string("out", ".", "Where label_efficiency.{json,md,png} go.")
  flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples.")
  app.run(main)
