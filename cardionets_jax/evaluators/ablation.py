"""Paired comparison of align runs on one cohort: arms of several seeds each, CIs over subjects.

  python -m cardionets_jax.evaluators.ablation --arm=weighted=runs/w/s0,runs/w/s1,runs/w/s2 \
      --arm=plain=runs/p/s0,runs/p/s1,runs/p/s2 [--out=DIR]

Each run's `align/heldout.npz` holds its held-out ridge-probe predictions and retrieval ranks.
Per arm the metrics are averaged over its seeds; the first arm is compared with each other arm on
the same resampled subjects (paired bootstrap), so a CI above zero reads "the first arm is better
on these subjects, seeds averaged". Writes `ablation.md` and `ablation.json` to --out.
"""

import json
import os
import warnings

import numpy as np

from cardionets_jax import bootstrap
from cardionets_jax import evaluate
from cardionets_jax.evaluators import label_efficiency


def load_arm(workdirs):
  """Seeds stacked: {"phenotypes" (n, P), "probe" (n, S, P), "ranks" (n, S)}."""
  runs = [np.load(os.path.join(w, "align", "heldout.npz")) for w in workdirs]
  first = runs[0]
  for w, r in zip(workdirs, runs):
    if not np.array_equal(r["phenotypes"], first["phenotypes"], equal_nan=True):
      raise ValueError(f"{w}: its held-out subjects differ from {workdirs[0]}'s (another cohort?)")
  return dict(phenotypes=first["phenotypes"], probe=np.stack([r["probe"] for r in runs], 1),
              ranks=np.stack([r["ranks"] for r in runs], 1))


def top_k(k):
  """Retrieval top-k of ranks (n, S): the mean over seeds and subjects."""
  return lambda ranks: evaluate.top_k(ranks, (k,))[f"top{k}"]


METRICS = {
    "mean phenotype R2 (ridge probe)": (label_efficiency.mean_phenotype_r2,
                                        lambda a: (a["phenotypes"], a["probe"])),
    "retrieval top-1": (top_k(1), lambda a: (a["ranks"],)),
    "retrieval top-5": (top_k(5), lambda a: (a["ranks"],)),
}


def compare(arms, n_boot=1000):
  """{"metrics": {metric: {arm: CI}}, "differences": {metric: {"A - B": paired CI}}, "seeds"}."""
  names = list(arms)
  out = {"metrics": {}, "differences": {}, "seeds": {n: int(a["ranks"].shape[1])
                                                     for n, a in arms.items()}}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for metric, (fn, arrays) in METRICS.items():
      out["metrics"][metric] = {n: bootstrap.bootstrap_ci(fn, arrays(arms[n]), n_boot=n_boot)
                                for n in names}
      out["differences"][metric] = {
          f"{names[0]} - {n}": bootstrap.paired_bootstrap_diff(fn, arrays(arms[names[0]]),
                                                               arrays(arms[n]), n_boot=n_boot)
          for n in names[1:]}
  return out


def table(result):
  cell = lambda ci: f"{ci['value']:.3f} ({ci['low']:.3f} to {ci['high']:.3f})"
  arms = list(next(iter(result["metrics"].values())))
  pairs = list(next(iter(result["differences"].values())))
  header = [f"{a} ({result['seeds'][a]} seeds)" for a in arms] + pairs
  lines = ["| metric | " + " | ".join(header) + " |",
           "|---|" + "---|" * (len(arms) + len(pairs))]
  for metric, by_arm in result["metrics"].items():
    cells = [cell(by_arm[a]) for a in arms] + [cell(result["differences"][metric][p]) for p in pairs]
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  from absl import app
  from absl import flags
  del argv
  arms = {}
  for spec in flags.FLAGS.arm:
    name, sep, dirs = spec.partition("=")
    if not sep or not dirs:
      raise app.UsageError(f"--arm {spec!r} is not NAME=WORKDIR[,WORKDIR...]")
    arms[name] = load_arm(dirs.split(","))
  if len(arms) < 2:
    raise app.UsageError("give at least two --arm")
  result = compare(arms, flags.FLAGS.n_boot)
  out = flags.FLAGS.out
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ablation.json"), "w") as f:
    json.dump(result, f, indent=1)
  text = table(result)
  with open(os.path.join(out, "ablation.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  # Flags are defined here, not on import: other modules' CLIs define --out too.
  from absl import app
  from absl import flags
  flags.DEFINE_multi_string("arm", [], "NAME=WORKDIR[,WORKDIR...]: one arm, a run per seed.")
  flags.DEFINE_string("out", ".", "Where ablation.md and ablation.json go.")
  flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples.")
  app.run(main)
