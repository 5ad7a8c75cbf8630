"""Merges the shards of a build run over several machines into one dataset.

  # on machine I of N (same manifest, same flags):
  python -m cardionets_jax.data.build --manifest=M --out=SHARD_I --shard=I/N ...
  # then, with the N folders in one place:
  python -m cardionets_jax.data.merge --out=DATA SHARD_0 SHARD_1 ... SHARD_{N-1}

The shards must be the N parts of one build: the same manifest, the same features and the same
N, each part once. The merged dataset holds every kept example (copied, not preprocessed again)
with its train statistics computed over all shards, and `DATA/report.json` every row of the
manifest, as one build's report would. Written as a transaction, like the build.
"""

import argparse
import collections
import json
import os
import shutil
import sys

from cardionets_jax.data import build
from cardionets_jax.data import records
from cardionets_jax.workdir import write_json


def _shard_reports(shards):
  """The shards' reports, checked to be the N parts of one build, in shard order."""
  reports = []
  for path in shards:
    try:
      with open(os.path.join(path, build.REPORT)) as f:
        reports.append(json.load(f))
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: no readable {build.REPORT} of a finished build ({e})") from e
  parts = [tuple(r.get("shard") or ()) for r in reports]
  n = {p[1] for p in parts if len(p) == 2}
  if len(n) != 1 or sorted(p[0] for p in parts) != list(range(len(shards))) or n != {len(shards)}:
    raise ValueError(f"the shards {parts} are not parts 0..N-1 of one N-way build "
                     f"(build --shard=I/N), each once")
  for key in ("manifest", "phenotype_ranges"):
    if len({json.dumps(r.get(key), sort_keys=True) for r in reports}) != 1:
      raise ValueError(f"the shards disagree on their {key}: not one build")
  return [reports[parts.index((i, len(shards)))] for i in range(len(shards))], [
      shards[parts.index((i, len(shards)))] for i in range(len(shards))]


def _meta(shards):
  metas = [records.DatasetMeta.load(s) for s in shards]
  same = lambda m: (m.phenotype_names, m.phenotype_units, m.label_names, m.shapes)
  if any(same(m) != same(metas[0]) for m in metas):
    raise ValueError("the shards hold different features (phenotypes, labels or shapes)")
  first = metas[0]
  return metas, records.DatasetMeta(phenotype_names=first.phenotype_names,
                                    phenotype_units=first.phenotype_units,
                                    label_names=first.label_names, shapes=first.shapes,
                                    source=first.source)


def _examples(shards, metas, split):
  def generate():
    for shard, meta in zip(shards, metas):
      if split in meta.splits:
        for ex in records.data_source(shard, split):
          yield dict(ex, subject_id=ex["subject_id"].decode()
                     if isinstance(ex["subject_id"], bytes) else ex["subject_id"])
  return generate


def merge(shards, out, overwrite=False):
  """Writes the merged dataset and report into `out`; returns the report."""
  reports, shards = _shard_reports(shards)
  metas, meta = _meta(shards)
  splits = [s for s in build.WRITE_ORDER if any(s in m.splits for m in metas)]
  staging = build.prepare_out(os.path.abspath(out), overwrite)
  try:
    records.write_dataset(staging, {s: _examples(shards, metas, s) for s in splits}, meta)
  except BaseException:
    shutil.rmtree(staging)
    raise
  details = sorted((d for r in reports for d in r["details"]), key=lambda d: d["row"])
  count = lambda key: dict(sum((collections.Counter(r[key]) for r in reports),
                               collections.Counter()))
  report = dict(reports[0], dataset=os.path.join(os.path.abspath(out), records.NAME,
                                                 records.VERSION),
                shard=None, shards=[os.path.abspath(s) for s in shards],
                rows=sum(r["rows"] for r in reports), kept=sum(r["kept"] for r in reports),
                rejected=sum(r["rejected"] for r in reports),
                kept_by_split=count("kept_by_split"), rejected_by_reason=count("rejected_by_reason"),
                flagged_by_code=count("flagged_by_code"),
                seconds=round(sum(r["seconds"] for r in reports), 1), details=details)
  write_json(os.path.join(staging, build.REPORT), report)
  build.swap_in(os.path.abspath(out), staging)
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output folder of the merged dataset")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --out that holds no earlier build")
  parser.add_argument("shards", nargs="+", help="the N shard folders (build --shard=I/N)")
  args = parser.parse_args(argv)
  try:
    report = merge(args.shards, args.out, args.overwrite)
  except (ValueError, build.OutputError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(build.summary(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
