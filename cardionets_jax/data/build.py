"""Builds a dataset from a manifest of real records.

  python -m cardionets_jax.data.build --manifest=cohort.csv --out=DIR \
      --phenotypes=lvedv:mL:20:500,lvef:% --labels=cardiomyopathy [--overwrite]

Manifest columns: `subject_id`, `ecg_path`, optional `cmr_path` and `ecg_fs`
(for .npy/.csv ECGs), and the phenotype and label columns named by the flags
(empty cells are missing values); optional `split` (train/val/test: the
cohort's own, e.g. PTB-XL's folds; else a hash of the id), `split_group` (what
is hashed instead of the id: a patient's several ECGs stay in one split) and
`left_out` ("reason: why", a row the cohort recipe saw and left out, reported
as rejected); the file is read by `manifest.read`. Relative
paths are taken from the manifest's folder (or --base_dir). Every row is
reported in DIR/report.json as kept (with its split and the flags that did not
reject it) or rejected (with its reason code); nothing is dropped silently.

The build is a transaction: it writes into a staging folder inside DIR and
replaces DIR's content only when the dataset is complete, so a failed build
leaves an earlier dataset as it was, and a rebuild never keeps stale data. DIR
may hold an earlier build; anything else needs --overwrite.
"""

import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time

from absl import app
from absl import flags

from cardionets_jax.data import manifest as manifest_lib
from cardionets_jax.data import preprocess
from cardionets_jax.data import records
from cardionets_jax.data import row_cache
from cardionets_jax.data.build_rows import (REQUIRED_COLUMNS, BuildConfig, RowWorker,
                                            parse_columns, plan_rows)
from cardionets_jax.data.manifest import ManifestError
from cardionets_jax.workdir import write_json

BUILDER = "cardionets_jax.data.build"
REPORT, FAILED_REPORT = "report.json", "report.failed.json"
_STAGING, _PREVIOUS = ".building-", ".previous-"
WRITE_ORDER = ("test", "val", "train")  # small splits first: an empty one costs little to redo


class OutputError(ValueError):
  """--out cannot take the dataset (a file, or a folder holding something else)."""


class BuildFailed(RuntimeError):
  """The manifest was read but no usable dataset follows (no training subject kept)."""


class _EmptySplit(Exception):
  def __init__(self, split):
    super().__init__(split)
    self.split = split


def _is_previous_build(out, names):
  """Whether `out` holds only what an earlier build wrote."""
  ours = {records.NAME, REPORT, FAILED_REPORT, "downloads"}  # (TFDS's download folder)
  if not set(names) <= ours:
    return False
  if REPORT not in names and FAILED_REPORT not in names:
    return False
  name = REPORT if REPORT in names else FAILED_REPORT
  try:
    with open(os.path.join(out, name)) as f:
      return json.load(f).get("builder") == BUILDER
  except (OSError, ValueError, AttributeError):
    return False


def prepare_out(out, overwrite=False):
  """Checks --out and returns a fresh staging folder inside it (removing stale ones)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise OutputError(f"--out {out} is a file, not a folder")
  os.makedirs(out, exist_ok=True)
  names = sorted(os.listdir(out))
  for name in [n for n in names if n.startswith((_STAGING, _PREVIOUS))]:
    shutil.rmtree(os.path.join(out, name))   # an interrupted build's leftovers
  # (a killed build's finished rows, row_cache.PREFIX, stay for the rerun to resume from)
  names = [n for n in names if not n.startswith((_STAGING, _PREVIOUS, row_cache.PREFIX))]
  if names and not overwrite and not _is_previous_build(out, names):
    raise OutputError(f"--out {out} is not empty and holds no earlier build ({names[:5]}"
                      f"{' ...' if len(names) > 5 else ''}): pass --overwrite to replace it")
  staging = os.path.join(out, f"{_STAGING}{os.getpid()}")
  os.makedirs(staging)
  return staging


def swap_in(out, staging):
  """Replaces what `out` held by the staging folder's content (all within `out`)."""
  previous = os.path.join(out, f"{_PREVIOUS}{os.getpid()}")
  os.makedirs(previous)
  shutil.rmtree(os.path.join(staging, "downloads"), ignore_errors=True)  # TFDS's, empty here
  for name in os.listdir(out):
    if not name.startswith((_STAGING, _PREVIOUS)):
      os.rename(os.path.join(out, name), os.path.join(previous, name))
  for name in os.listdir(staging):
    os.rename(os.path.join(staging, name), os.path.join(out, name))
  shutil.rmtree(previous)
  shutil.rmtree(staging)


def _holds_dataset(out):
  try:
    records.dataset_dir(out)
    return True
  except FileNotFoundError:
    return False


def build(manifest, out, config: BuildConfig, base_dir=None, workers=None, num_shards=None,
          overwrite=False, resume=True, chunk_rows=row_cache.CHUNK_ROWS, shard=None):
  """Builds the dataset into `out` as a transaction; returns the report (out/report.json).

  The dataset is written to a staging folder inside `out` and replaces what `out` held only when
  complete. A manifest that cannot be used, or rows that leave no training subject, raise
  ManifestError / BuildFailed after writing the report of what was seen: as out/report.json when
  `out` held no dataset, else as out/report.failed.json beside the untouched earlier dataset.
  Rows are processed in chunks saved inside `out` (row_cache.py): a killed build rerun with
  `resume` redoes only the chunks it had not finished. `shard` = (i, n) builds only the rows whose
  split group (else subject id) hashes to shard i of n: one machine's part, merged by merge.py.
  """
  start = time.time()
  out = os.path.abspath(out)
  staging = prepare_out(out, overwrite)
  results, error, manifest_info = [], None, {}
  try:
    table = manifest_lib.read(manifest, REQUIRED_COLUMNS + tuple(
        c[0] for c in config.phenotypes) + tuple(config.labels))
    manifest_info = dict(encoding=table.encoding, warnings=table.warnings)
    if shard is not None:
      table.rows = [r for r in table.rows if records.shard_of(_shard_key(r), shard[1]) == shard[0]]
      manifest_info["shard"] = list(shard)
    for warning in table.warnings:
      logging.warning("%s", warning)
    base_dir = base_dir or os.path.dirname(os.path.abspath(manifest))
    tasks, results = plan_rows(table.rows, config, base_dir)
    cache = row_cache.RowCache(out, row_cache.cache_key(manifest, (config, shard), base_dir,
                                                        BUILDER), resume)
    _write(manifest, staging, tasks, config, workers, num_shards, results, cache, chunk_rows)
    manifest_info["rows_resumed"] = cache.reused
  except (ManifestError, BuildFailed) as e:
    error = e
  results.sort(key=lambda r: r.row)
  report = make_report(manifest, out, results, time.time() - start, config, manifest_info, error)
  for name in os.listdir(out):               # finished or failed for good: nothing to resume
    if name.startswith(row_cache.PREFIX):
      shutil.rmtree(os.path.join(out, name))
  if error is None:
    write_json(os.path.join(staging, REPORT), report)
    swap_in(out, staging)
    return report
  shutil.rmtree(staging)
  path = os.path.join(out, FAILED_REPORT if _holds_dataset(out) else REPORT)
  write_json(path, report)
  error.report, error.report_path = report, path
  raise error


def _shard_key(row):
  """What decides a row's shard: its split group, else its subject id, else its line (a row
  without an id is reported by exactly one shard); a subject's rows share one shard."""
  cells = row.values
  key = (cells.get("split_group") or "").strip() or (cells.get("subject_id") or "").strip()
  return (key or f"line {row.line}").encode()


def _write(manifest, staging, tasks, config, workers, num_shards, results, cache, chunk_rows):
  """Processes and writes the rows by split, adding their results to `results` (also when it
  fails). A split whose every row is rejected is left out (TFDS cannot write an empty split)
  and the smaller splits written before it are redone."""
  by_split = collections.defaultdict(list)
  for task in tasks:
    by_split[task.split_of(config)].append(task)
  meta = records.DatasetMeta(
      phenotype_names=[c[0] for c in config.phenotypes],
      phenotype_units=[c[1] for c in config.phenotypes], label_names=list(config.labels),
      shapes=dict(ecg=[records.NUM_LEADS, int(round(config.ecg.fs * config.ecg.seconds))],
                  cmr=[config.cmr.frames, config.cmr.size, config.cmr.size]),
      source=os.path.abspath(manifest))
  workers = workers or os.cpu_count() or 1
  logging.info("Building %s from %d rows with %d worker(s)", staging, len(tasks), workers)
  splits = [s for s in WRITE_ORDER if by_split[s]]
  empty, split_results = {}, {}
  pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
  try:
    while True:
      if "train" not in splits:
        raise BuildFailed("no row of the train split was kept: the dataset would have no "
                          "training subject (see the rejections in the report)")
      split_results = {s: [] for s in splits}
      try:
        records.write_dataset(staging, {
            s: _examples(s, by_split[s], config, pool, split_results[s], cache, chunk_rows)
            for s in splits}, meta, num_shards=num_shards)
        break
      except _EmptySplit as e:
        logging.warning("No row of the %s split was kept: it is left out of the dataset", e.split)
        empty[e.split] = split_results.pop(e.split)
        splits.remove(e.split)
        for name in os.listdir(staging):
          shutil.rmtree(os.path.join(staging, name))
  finally:
    if pool is not None:
      pool.close()
    results += [r for rs in list(split_results.values()) + list(empty.values()) for r in rs]


def _examples(split, tasks, config, pool, results, cache, chunk_rows):
  """A generator function over the split's kept examples, recording every row's result."""
  def generate():
    kept = 0
    for example, result in row_cache.processed(split, tasks, RowWorker(config), pool, cache,
                                               chunk_rows):
      result.split = split if example is not None else None
      results.append(result)
      if example is None:
        logging.warning("Rejected %s", result.message)
        continue
      kept += 1
      yield example
    if not kept:
      raise _EmptySplit(split)
  return generate


def make_report(manifest, out, results, seconds, config, manifest_info, error=None):
  kept = [r for r in results if r.status == "kept"]
  rejected = [r for r in results if r.status == "rejected"]
  flags = collections.Counter(f["code"] for r in kept for f in (r.checks or {}).get("flags", []))
  ranges = config.phenotype_ranges()
  return dict(
      builder=BUILDER, manifest=os.path.abspath(manifest),
      dataset=os.path.join(out, records.NAME, records.VERSION) if error is None else None,
      error=None if error is None else str(error),
      rows=len(results), kept=len(kept), rejected=len(rejected),
      kept_by_split=dict(collections.Counter(r.split for r in kept)),
      rejected_by_reason=dict(collections.Counter(r.reason for r in rejected)),
      flagged_by_code=dict(flags),
      phenotype_ranges={c[0]: dict(unit=c[1], range=None if ranges[c[0]] is None
                                   else list(ranges[c[0]])) for c in config.phenotypes},
      **manifest_info, seconds=round(seconds, 1),
      details=[{k: v for k, v in dataclasses.asdict(r).items() if v is not None} for r in results])


def summary(report):
  lines = [f"{report['kept']} of {report['rows']} rows kept "
           f"({', '.join(f'{s} {n}' for s, n in sorted(report['kept_by_split'].items()))}); "
           f"{report['rejected']} rejected"]
  for reason, n in sorted(report["rejected_by_reason"].items(), key=lambda x: -x[1]):
    lines.append(f"  {reason}: {n}")
  for code, n in sorted(report["flagged_by_code"].items(), key=lambda x: -x[1]):
    lines.append(f"  kept with flag {code}: {n}")
  lines += [f"warning: {w}" for w in report.get("warnings", [])]
  lines.append(f"error: {report['error']}" if report["error"] else f"dataset: {report['dataset']}")
  return "\n".join(lines)


_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest, one row per subject.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_PHENOTYPES = flags.DEFINE_string(
    "phenotypes", "", "Phenotype columns as name:unit or name:unit:low:high (the plausible range; "
    "default by unit: build_rows.DEFAULT_RANGES), comma-separated.")
_LABELS = flags.DEFINE_string("labels", "", "Label columns (0/1), comma-separated.")
_BASE_DIR = flags.DEFINE_string("base_dir", None, "Root of relative paths (default: the manifest's folder).")
_ECG_FS = flags.DEFINE_float("ecg_fs", None, "Sampling rate of .npy/.csv ECGs without an ecg_fs column.")
_ALLOW_MISSING = flags.DEFINE_bool("allow_missing_leads", False, "Keep ECGs with absent leads (masked).")
_SECONDS = flags.DEFINE_float("ecg_seconds", 10.0, "ECG length stored (s).")
_MIN_SECONDS = flags.DEFINE_float("ecg_min_seconds", 9.0, "Shorter ECGs are rejected (s).")
_FRAMES = flags.DEFINE_integer("cmr_frames", 50, "Cine frames stored.")
_SIZE = flags.DEFINE_integer("cmr_size", 96, "Cine side stored (pixels).")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "Fraction of subjects in val.")
_TEST = flags.DEFINE_float("test_fraction", 0.15, "Fraction of subjects in test.")
_WORKERS = flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).")
_STRICT = flags.DEFINE_bool("strict", False, "Exit non-zero if any row is rejected.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out that holds no earlier build.")
_RESUME = flags.DEFINE_bool("resume", True, "Reuse the rows a killed build of the same manifest "
                            "and flags had finished (--noresume: redo every row).")
_SHARD = flags.DEFINE_string("shard", None, "I/N: build shard I of N (0-based; rows by a hash of "
                             "split_group or subject_id), for merge.py to combine.")
_CHUNK_ROWS = flags.DEFINE_integer("chunk_rows", row_cache.CHUNK_ROWS,
                                   "Rows per saved chunk (the unit a resumed build skips).")


def parse_shard(text):
  """"I/N" -> (I, N), or None for no text."""
  if not text:
    return None
  try:
    i, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard={text!r}: expected I/N, e.g. 0/4") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard={text!r}: I must be in 0..N-1")
  return i, n


def main(argv):
  """Exit status: 0 built, 1 built with rejections under --strict or no training subject kept,
  2 an unusable manifest, --out or flag."""
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    config = BuildConfig(
        phenotypes=parse_columns(_PHENOTYPES.value),
        labels=tuple(c[0] for c in parse_columns(_LABELS.value)),
        ecg=preprocess.EcgConfig(seconds=_SECONDS.value, min_seconds=_MIN_SECONDS.value,
                                 allow_missing_leads=_ALLOW_MISSING.value),
        cmr=dataclasses.replace(preprocess.CmrConfig(), frames=_FRAMES.value, size=_SIZE.value),
        ecg_fs=_ECG_FS.value, val_fraction=_VAL.value, test_fraction=_TEST.value)
    shard = parse_shard(_SHARD.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    report = build(_MANIFEST.value, _OUT.value, config, base_dir=_BASE_DIR.value,
                   workers=_WORKERS.value, overwrite=_OVERWRITE.value, resume=_RESUME.value,
                   chunk_rows=_CHUNK_ROWS.value, shard=shard)
  except (ManifestError, BuildFailed, OutputError) as e:
    if hasattr(e, "report"):
      print(summary(e.report))
      print(f"report: {e.report_path}")
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1 if isinstance(e, BuildFailed) else 2)
  print(summary(report))
  print(f"report: {os.path.join(_OUT.value, REPORT)}")
  if _STRICT.value and report["rejected"]:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["manifest", "out"])
  app.run(main)
