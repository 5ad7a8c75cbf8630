"""Coverage of the AUROC bootstrap CIs at few positives: how often the 95% CI holds the truth.

  python benchmarks/bootstrap_coverage.py [--replicates=400] [--n_boot=500]

Each replicate draws a test set from a binormal model whose AUROC is known exactly (negatives
N(0, 1), positives N(d, 1): AUROC = Phi(d / sqrt 2)), computes the CI of every method of
`bootstrap.classification_report`, and counts whether it holds the true AUROC. Prints one JSON
line per (positives, method) and a markdown table.
"""

import argparse
import json

import numpy as np
from scipy import stats

from cardionets_jax import bootstrap


def coverage(n_pos, n_neg, auroc, method, replicates, n_boot, seed=0, alpha=0.05):
  """(share of CIs holding `auroc`, mean CI width, replicates with a defined CI)."""
  d = np.sqrt(2.0) * stats.norm.ppf(auroc)
  rng = np.random.default_rng(seed)
  hits, widths = [], []
  for r in range(replicates):
    scores = np.concatenate([rng.normal(d, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    ci = bootstrap.classification_report(labels[:, None], scores[:, None], n_boot=n_boot,
                                         seed=r, alpha=alpha, method=method)["0"]["auroc"]
    if np.isfinite(ci["low"]):
      hits.append(ci["low"] <= auroc <= ci["high"])
      widths.append(ci["high"] - ci["low"])
  return float(np.mean(hits)), float(np.mean(widths)), len(hits)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--replicates", type=int, default=400)
  parser.add_argument("--n_boot", type=int, default=500)
  parser.add_argument("--negatives", type=int, default=200)
  parser.add_argument("--auroc", type=float, default=0.85)
  args = parser.parse_args(argv)
  rows = []
  for n_pos in (5, 10, 50):
    for method in bootstrap.METHODS:
      cover, width, n = coverage(n_pos, args.negatives, args.auroc, method, args.replicates,
                                 args.n_boot)
      row = dict(positives=n_pos, negatives=args.negatives, method=method, coverage=cover,
                 mean_width=width, replicates=n, true_auroc=args.auroc, n_boot=args.n_boot)
      print(json.dumps(row), flush=True)
      rows.append(row)
  print("\n| positives | method | coverage of the 95% CI | mean width |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['positives']} | {r['method']} | {r['coverage']:.3f} | {r['mean_width']:.3f} |")


if __name__ == "__main__":
  main()
