"""Sweeps: a grid of config overrides x seeds, run one after another or printed, gathered in one CSV.

  python launch/sweep.py --config=configs/finetune.py --root=runs/ld-sweep \
      --grid="finetune.layer_decay=0.65,0.75;train.lr=1e-4,3e-4" --seeds=0,1,2 \
      --upstream=runs/demo [--print] [--set=train.num_steps=500]

Each point of the grid and seed is a run in `ROOT/<name>/` (the name spells
its overrides), started as `python -m cardionets_jax.main --config=CONFIG
--workdir=ROOT/<name> --config.KEY=VALUE ... --config.seed=SEED`. With
`--upstream=DIR`, every run reads DIR's finished upstream stages through
`--config.init.<stage>=` references and shares DIR's cohort (linked in), so
the runs do not retrain them. `--print` prints the commands (to
hand to a scheduler or `launch/gpu.sh`) instead of running them; a finished
run is skipped on a rerun. Every run's `<stage>/results.json` is flattened
(numbers only, keys joined by '.') into `ROOT/results.csv`, one row per run.
"""

import argparse
import csv
import itertools
import json
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from a checkout

from cardionets_jax.workdir import Workdir, unique_names  # noqa: E402


def parse_grid(spec):
  """"a.b=1,2;c=x" -> [("a.b", ["1", "2"]), ("c", ["x"])] (order kept)."""
  grid = []
  for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
    key, sep, values = part.partition("=")
    if not sep or not key.strip() or not values.strip():
      raise ValueError(f"Grid entry {part!r} is not KEY=V1,V2,...")
    grid.append((key.strip(), [v.strip() for v in values.split(",")]))
  return grid


def expand(grid, seeds):
  """Every combination of the grid's values, for every seed: a list of (name, overrides, seed)."""
  keys = [k for k, _ in grid]
  runs, labels = [], []
  for values in itertools.product(*(v for _, v in grid)):
    overrides = dict(zip(keys, values))
    for seed in seeds:
      label = "_".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
      labels.append(f"{label}_seed={seed}".lstrip("_"))
      runs.append((overrides, seed))
  return [(name, overrides, seed) for name, (overrides, seed) in zip(unique_names(labels), runs)]


def command(config, workdir, overrides, seed, fixed=()):
  return ([sys.executable, "-m", "cardionets_jax.main", f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{s}" for s in fixed]
          + [f"--config.{k}={v}" for k, v in overrides.items()] + [f"--config.seed={seed}"])


def stage_of(config):
  return os.path.splitext(os.path.basename(config.split(":", 1)[0]))[0]


def upstream_references(config, upstream):
  """`init.<stage>=` settings pointing every upstream stage `config` names at `upstream`'s."""
  import importlib
  path, _, arg = config.partition(":")
  stage = stage_of(path)
  names = importlib.import_module(f"cardionets_jax_configs.{stage}").get_config(arg or None).init
  source = Workdir(upstream)
  return [f"init.{name}={source.tokens if name == 'tokenize' else source.checkpoints(name)}"
          for name in names if source.finished(name)]


def share_cohort(upstream, workdir):
  """Links `upstream`'s synthetic cohort into `workdir`, so runs do not simulate it again."""
  source, target = Workdir(upstream).data_root, Workdir(workdir).data_root
  if os.path.isdir(source) and not os.path.lexists(target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(os.path.abspath(source), target)   # a relative target would resolve from the link


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[name] = value
  return out


def gather(root, runs, stage):
  """One CSV row per run: its overrides, seed, status and every number in its results.json."""
  rows = []
  for name, overrides, seed in runs:
    workdir = Workdir(os.path.join(root, name))
    path, finished = workdir.results(stage), workdir.finished(stage)
    row = dict(run=name, **overrides, seed=seed, status="finished" if finished else "missing")
    if finished and os.path.exists(path):
      with open(path) as f:
        row.update(flatten(json.load(f)))
    rows.append(row)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  out = os.path.join(root, "results.csv")
  with open(out, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  return out, rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="stage config, e.g. configs/mar.py:variant=base")
  parser.add_argument("--root", required=True, help="directory of the runs and results.csv")
  parser.add_argument("--grid", default="", help="KEY=V1,V2;KEY2=V3,... (config fields)")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (repeat)")
  parser.add_argument("--upstream", default=None, help="workdir whose cohort and upstream stages runs share")
  parser.add_argument("--print", dest="print_only", action="store_true", help="print, don't run")
  args = parser.parse_args(argv)

  stage = stage_of(args.config)
  runs = expand(parse_grid(args.grid), [int(s) for s in args.seeds.split(",")])
  fixed = args.set + (upstream_references(args.config, args.upstream) if args.upstream else [])
  failed = 0
  for i, (name, overrides, seed) in enumerate(runs):
    workdir = os.path.join(args.root, name)
    cmd = command(args.config, workdir, overrides, seed, fixed)
    if args.print_only:
      print(shlex.join(cmd))
      continue
    if Workdir(workdir).finished(stage):
      print(f"[{i + 1}/{len(runs)}] {name}: finished, skipped", flush=True)
      continue
    if args.upstream:
      share_cohort(args.upstream, workdir)
    print(f"[{i + 1}/{len(runs)}] {name}", flush=True)
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
      failed += 1
      print(f"[{i + 1}/{len(runs)}] {name} failed (exit {result.returncode})", file=sys.stderr)
  if not args.print_only:
    path, rows = gather(args.root, runs, stage)
    print(f"{sum(r['status'] == 'finished' for r in rows)}/{len(rows)} runs finished; wrote {path}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
