"""What the built-in cohort shows: every run behind docs/cohort.md, then the page itself.

  python launch/cohort_report.py --root=runs/cohort [--seeds=42,1,2] [--label_fractions=0.01,0.1,1.0]
      [--variant=tiny] [--docs=docs]

Runs, one after another (each skipped when already finished, so a rerun resumes):
  1. ROOT/chain: mae then align (the default configs), stmem for the ST-MEM-style baseline;
  2. ROOT/chain: finetune over the label fractions x the seeds, full fine-tuning of
     the aligned, ST-MEM-initialised, scratch and CMR encoders;
  3. ROOT/linear: the frozen CMR encoder's linear probe, same fractions and seeds;
  4. ROOT/ablation/<arm>/seed=S: align per seed for each ablation arm (weighted InfoNCE with phi
     = PCA, the paper's; plain InfoNCE; phi = phenotypes; a randomly initialised frozen teacher),
     on ROOT/chain's cohort and mae (the paper's arm at the configs' seed, 42, is ROOT/chain);
then writes DOCS/cohort.md with the tables and DOCS/figures/cohort_*.png. The wall time of each
step is in the page. --page_only trains nothing and writes the page from what has finished,
listing the rest.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from a checkout

from cardionets_jax.workdir import Workdir  # noqa: E402
from cardionets_jax_configs import align as align_config  # noqa: E402
from cardionets_jax_configs import finetune as finetune_config  # noqa: E402
from launch.sweep import share_cohort  # noqa: E402

ARMS = {  # name -> (folder, align overrides); the first is the paper's, compared with each other
    "paper (weighted, phi = PCA)": ("paper", []),
    "plain InfoNCE": ("plain", ["align.weighted=False"]),
    "phi = phenotypes": ("phi_phenotypes", ["align.phi=phenotypes"]),
    "random teacher": ("random_teacher", ["align.teacher=random"]),
}
FIGURES = {"align/ecg_embeddings.png": "cohort_ecg_embeddings.png"}


def run(cmd, times):
  """Runs `cmd`; its wall time goes to the `times` file (JSON lines), which the page reads, so
  a sweep resumed over several invocations keeps every run's time."""
  start = time.time()
  print("$", " ".join(cmd), flush=True)
  if subprocess.run(cmd, cwd=REPO).returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}")
  with open(times, "a") as f:
    f.write(json.dumps(dict(run=" ".join(c for c in cmd[3:] if not c.startswith(
        ("--workdir", "--config.init."))), seconds=time.time() - start)) + "\n")


def read_times(times):
  if not os.path.exists(times):
    return []
  with open(times) as f:
    return [(r["run"], r["seconds"]) for r in map(json.loads, f)]


def main_cmd(config, workdir, *overrides):
  return ([sys.executable, "-m", "cardionets_jax.main", f"--config={config}",
           f"--workdir={workdir}"] + [f"--config.{o}" for o in overrides])


def train_everything(args, times, missing):
  """Runs what has not finished; with --page_only runs nothing and lists it in `missing`."""
  chain, linear = os.path.join(args.root, "chain"), os.path.join(args.root, "linear")
  v, seeds = args.variant, args.seeds
  sweep = [f"finetune.seeds=({seeds},)", f"finetune.label_fractions=({args.label_fractions},)"]

  def ensure(workdir, stage, cmd, part):
    if not Workdir(workdir).finished(stage):
      if args.page_only or part not in args.parts.split(","):
        missing.append(" ".join(c for c in cmd[3:] if not c.startswith("--config.init."))
                       .replace(os.path.abspath(args.root), "DIR").replace(args.root, "DIR"))
      else:
        run(cmd, times)
    return Workdir(workdir).finished(stage)

  for stage in ("align", "stmem"):
    ensure(chain, stage, main_cmd(f"configs/{stage}.py:variant={v}", chain), "chain")
  ensure(chain, "finetune",
         main_cmd(f"configs/finetune.py:variant={v},stmem=true", chain, *sweep), "finetune")
  share_cohort(chain, linear)
  ensure(linear, "finetune", main_cmd(
      f"configs/finetune.py:variant={v},mode=linear", linear, *sweep, 'finetune.inits=("cmr",)',
      f"init.mae={Workdir(chain).checkpoints('mae')}"), "linear")
  arms, chain_seed = {}, str(align_config.get_config(f"variant={v}").seed)
  for name, (folder, overrides) in ARMS.items():
    arms[name] = []
    for seed in seeds.split(","):
      if not overrides and seed == chain_seed:  # that run is the chain's own align
        arms[name].append(chain)
        continue
      workdir = os.path.join(args.root, "ablation", folder, f"seed={seed}")
      share_cohort(chain, workdir)
      if ensure(workdir, "align", main_cmd(f"configs/align.py:variant={v}", workdir, *overrides,
                                           f"seed={seed}",
                                           f"init.mae={Workdir(chain).checkpoints('mae')}"),
                "ablation"):
        arms[name].append(workdir)
  return chain, linear, {name: dirs for name, dirs in arms.items() if dirs}


def write_page(args, chain, linear, arms, times, missing=()):
  from cardionets_jax.data import datasets
  from cardionets_jax.evaluators import ablation
  from cardionets_jax.evaluators import heart_rate
  from cardionets_jax.evaluators import label_efficiency
  figures = os.path.join(args.docs, "figures")
  os.makedirs(figures, exist_ok=True)
  for source, name in FIGURES.items():
    shutil.copy(os.path.join(chain, source), os.path.join(figures, name))
  preds, results = {}, {}
  for workdir in (chain, linear):
    if Workdir(workdir).finished("finetune"):
      p, r = label_efficiency.load_run(workdir)
      preds.update(p), results.update(r)
  labels = list(dict.fromkeys(d for r in results.values() for d in r.get("diseases", {})))
  efficiency = label_efficiency.compare(preds, results, labels)
  label_efficiency.figure(os.path.join(figures, "cohort_label_efficiency.png"), efficiency)
  ablations = ablation.compare({n: ablation.load_arm(w) for n, w in arms.items()})
  with open(os.path.join(chain, "mae", "results.json")) as f:
    mae = json.load(f)
  with open(os.path.join(chain, "align", "results.json")) as f:
    align = json.load(f)
  pools = mae["probe_r2_by_pool"]
  rows = [f"| {p} | " + " | ".join(f"{pools[pool][p]:.3f}" for pool in pools)
          + f" | {mae['probe_r2_random_init'][p]:.3f} |" for p in pools["tokens"]]
  config = align_config.get_config(f"variant={args.variant}")
  data, _ = datasets.resolve(config, Workdir(chain))
  crops = finetune_config.get_config(f"variant={args.variant}").finetune.eval_crops
  ceilings = heart_rate.ceilings(data, config.model.num_samples, crops)
  fractions = sorted({m["label_fraction"] for m in results.values()})
  hr_rows = [f"| {init} ({mode}) | " + " | ".join(f"{by.get(f, float('nan')):.3f}" for f in fractions)
             + " |" for (init, mode), by in heart_rate.fine_tuned(results).items()]
  seeds_by_arm = ", ".join(f"{n}: {len(w)}" for n, w in arms.items())
  page = PAGE.format(
      status=(f"**Not every run behind this page has finished**; seeds per ablation arm: "
              f"{seeds_by_arm}. Still to run:\n\n" + "\n".join(f"- `{m}`" for m in missing)
              + "\n") if missing else "",
      command=" ".join(["python launch/cohort_report.py"]
                       + [a for a in sys.argv[1:]
                          if not a.startswith(("--root", "--docs", "--page_only", "--parts"))]),
      pools=" | ".join(pools), rule="---|" * (len(pools) + 1),
      probe="\n".join(rows),
      separation=json.dumps(align["neighbour_auroc"]),
      hr_ceilings="\n".join(f"| {name} | {r2:.3f} |" for name, r2 in ceilings.items()),
      hr_fractions=" | ".join(f"{f:g}" for f in fractions), hr_rule="---|" * (len(fractions) + 1),
      hr_rows="\n".join(hr_rows),
      efficiency=label_efficiency.table(efficiency), ablation=ablation.table(ablations),
      times="\n".join(f"| `{what}` | {seconds / 60:.1f} |" for what, seconds in read_times(times))
      or "| (no run's time was recorded) | |")
  with open(os.path.join(args.docs, "cohort.md"), "w") as f:
    f.write(page)
  print(f"wrote {os.path.join(args.docs, 'cohort.md')}")


PAGE = """# What the built-in cohort shows

Regenerated by `{command} --root=DIR`; every figure below is from that run, on the test split.

{status}
## The frozen CMR teacher (mae, ridge probe, R2 by pooling of its features)

| phenotype | {pools} | random init (tokens) |
|---|{rule}
{probe}

## Held-out ECG embeddings before and after alignment

![ECG embeddings](figures/cohort_ecg_embeddings.png)

10-nearest-neighbour AUROC per disease: `{separation}`.

## Label efficiency (the paper's figure)

Mean over seeds, 95% bootstrap CIs over test subjects; differences are paired.

{efficiency}

![label efficiency](figures/cohort_label_efficiency.png)

## Heart rate: what the ECG holds, and what the encoders read

Heart rate from the stored ECGs by three read-outs (`cardionets_jax/evaluators/heart_rate.py`),
each a line fitted on train, R2 on test:

| read-out | R2 |
|---|---|
{hr_ceilings}

Fine-tuned encoders, heart-rate R2 by label fraction (mean over seeds):

| method | {hr_fractions} |
|{hr_rule}
{hr_rows}

## Ablations of the alignment

Seeds averaged; paired bootstrap CIs of the paper's arm minus each other arm.

{ablation}

## Wall time (2 CPU cores)

| run | minutes |
|---|---|
{times}
"""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True, help="where the runs go")
  parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds")
  parser.add_argument("--label_fractions", default="0.01,0.1,1.0", help="comma-separated")
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--docs", default=os.path.join(REPO, "docs"), help="where cohort.md goes")
  parser.add_argument("--parts", default="chain,finetune,linear,ablation",
                      help="which runs to train (e.g. two invocations side by side on disjoint "
                      "parts, once the chain is trained); the page lists the others' state")
  parser.add_argument("--page_only", action="store_true",
                      help="train nothing: write the page from the runs that have finished")
  args = parser.parse_args(argv)
  times, missing = os.path.join(args.root, "times.jsonl"), []
  chain, linear, arms = train_everything(args, times, missing)
  write_page(args, chain, linear, arms, times, missing)


if __name__ == "__main__":
  main()
