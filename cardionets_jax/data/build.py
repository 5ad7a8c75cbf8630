"""Builds a dataset from a manifest of real records.

  python -m cardionets_jax.data.build --manifest=cohort.csv --out=DIR \
      --phenotypes=lvedv:mL,lvef:% --labels=cardiomyopathy

Manifest columns: `subject_id`, `ecg_path`, optional `cmr_path` and `ecg_fs`
(for .npy/.csv ECGs), and the phenotype and label columns named by the flags
(empty cells are missing values). Relative paths are taken from the manifest's
folder (or --base_dir). Every row is reported in DIR/report.json as kept (with
its split) or rejected (with its reason); nothing is dropped silently.
"""

import collections
import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from typing import Optional

import numpy as np
from absl import app
from absl import flags

from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.data import records

REQUIRED_COLUMNS = ("subject_id", "ecg_path")


class ManifestError(ValueError):
  """The manifest as a whole is unusable (no rows, missing columns...)."""


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  phenotypes: tuple = ()          # (column, unit) pairs
  labels: tuple = ()              # column names
  ecg: preprocess.EcgConfig = preprocess.EcgConfig()
  cmr: preprocess.CmrConfig = preprocess.CmrConfig()
  ecg_fs: Optional[float] = None  # for .npy/.csv ECGs without an `ecg_fs` column
  val_fraction: float = 0.1
  test_fraction: float = 0.15


@dataclasses.dataclass(frozen=True)
class RowTask:
  row: int                        # manifest line number (the header is line 1)
  subject_id: str
  ecg_path: str
  cmr_path: Optional[str]
  ecg_fs: Optional[float]
  phenotypes: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass
class RowResult:
  row: int
  subject_id: str
  status: str                     # "kept" or "rejected"
  split: Optional[str] = None
  reason: Optional[str] = None
  message: Optional[str] = None
  file: Optional[str] = None
  checks: Optional[dict] = None


def parse_columns(spec):
  """'lvedv:mL,lvef:%' -> (('lvedv', 'mL'), ('lvef', '%'))."""
  out = []
  for item in filter(None, (s.strip() for s in (spec or "").split(","))):
    name, _, unit = item.partition(":")
    out.append((name.strip(), unit.strip()))
  return tuple(out)


def read_manifest(path, config):
  """Rows as dicts; raises ManifestError if the manifest cannot be used at all."""
  if not os.path.exists(path):
    raise ManifestError(f"Manifest {path} does not exist")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    rows = list(reader)
  needed = list(REQUIRED_COLUMNS) + [c for c, _ in config.phenotypes] + list(config.labels)
  missing = [c for c in needed if c not in columns]
  if missing:
    raise ManifestError(f"Manifest {path} lacks the column(s) {missing}; it has {columns}")
  if not rows:
    raise ManifestError(f"Manifest {path} has no rows")
  return rows


def _resolve(base_dir, path):
  path = (path or "").strip()
  if not path:
    return None
  return path if os.path.isabs(path) else os.path.join(base_dir, path)


def plan_rows(rows, config, base_dir):
  """Checks what can be checked without opening files.

  Returns (tasks, rejected): one RowTask per row still in the running and a
  RowResult for each row rejected here (bad values, duplicate ids).
  """
  tasks, rejected, first_row = [], [], {}
  for i, row in enumerate(rows):
    line = i + 2
    sid = (row.get("subject_id") or "").strip()
    reject = lambda reason, message, file=None: rejected.append(
        RowResult(line, sid, "rejected", reason=reason, message=message, file=file))
    if not sid:
      reject("missing_subject_id", f"row {line}: empty subject_id")
      continue
    if sid in first_row:
      reject("duplicate_subject", f"row {line}: subject {sid} already on row {first_row[sid]}")
      continue
    first_row[sid] = line
    try:
      phenotypes = np.array([_number(row[c], c, line) for c, _ in config.phenotypes], np.float32)
      labels = np.array([_label(row[c], c, line) for c in config.labels], np.int8)
      ecg_fs = _number(row.get("ecg_fs", ""), "ecg_fs", line)
    except readers.RecordError as e:
      reject(e.reason, str(e))
      continue
    ecg_path = _resolve(base_dir, row.get("ecg_path"))
    if ecg_path is None:
      reject("missing_file", f"row {line}: empty ecg_path")
      continue
    tasks.append(RowTask(line, sid, ecg_path, _resolve(base_dir, row.get("cmr_path")),
                         None if math.isnan(ecg_fs) else ecg_fs, phenotypes, labels))
  return tasks, rejected


def _number(value, column, line):
  value = (value or "").strip()
  if not value:
    return float("nan")
  try:
    x = float(value)
  except ValueError:
    raise readers.RecordError("bad_phenotype" if column != "ecg_fs" else "sampling_rate",
                              f"row {line}: column {column!r} holds {value!r}, not a number")
  if not math.isfinite(x):
    raise readers.RecordError("bad_phenotype", f"row {line}: column {column!r} holds {value!r}")
  return x


def _label(value, column, line):
  value = (value or "").strip()
  if not value:
    return -1
  if value not in ("0", "1", "0.0", "1.0"):
    raise readers.RecordError("bad_label", f"row {line}: label {column!r} holds {value!r}, not 0/1")
  return int(float(value))


def process_row(task, config):
  """Reads and preprocesses one row's files -> (example or None, RowResult)."""
  result = RowResult(task.row, task.subject_id, "kept")
  try:
    result.file = task.ecg_path
    ecg_record = readers.read_ecg(task.ecg_path, fs=task.ecg_fs or config.ecg_fs)
    ecg, lead_mask, checks = preprocess.preprocess_ecg(ecg_record, config.ecg)
    size = config.cmr.size
    cmr = records.empty_cmr(size)
    if task.cmr_path:
      result.file = task.cmr_path
      cmr = preprocess.preprocess_cmr(readers.read_cmr(task.cmr_path), config.cmr, path=task.cmr_path)
  except readers.RecordError as e:
    result.status, result.reason, result.message = "rejected", e.reason, f"row {task.row}: {e}"
    return None, result
  except Exception as e:  # a reader bug or an exotic file must not stop the build
    result.status, result.reason = "rejected", "unreadable"
    result.message = f"row {task.row}: {result.file}: {type(e).__name__}: {e}"
    return None, result
  result.file = None
  result.checks = _jsonable(checks)
  example = dict(subject_id=task.subject_id, ecg=ecg.astype(np.float32),
                 lead_mask=lead_mask.astype(np.uint8), cmr=cmr, has_cmr=np.uint8(bool(task.cmr_path)),
                 phenotypes=task.phenotypes, labels=task.labels)
  return example, result


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


class _RowWorker:
  """Picklable callable for the worker pool."""

  def __init__(self, config):
    self.config = config

  def __call__(self, task):
    return process_row(task, self.config)


def build(manifest, out, config: BuildConfig, base_dir=None, workers=None, num_shards=None):
  """Builds the dataset; returns the report (also written to out/report.json)."""
  start = time.time()
  base_dir = base_dir or os.path.dirname(os.path.abspath(manifest))
  rows = read_manifest(manifest, config)
  tasks, results = plan_rows(rows, config, base_dir)
  by_split = collections.defaultdict(list)
  for task in tasks:
    by_split[records.split_of(task.subject_id.encode(), config.val_fraction,
                              config.test_fraction)].append(task)
  meta = records.DatasetMeta(
      phenotype_names=[c for c, _ in config.phenotypes],
      phenotype_units=[u for _, u in config.phenotypes], label_names=list(config.labels),
      shapes=dict(ecg=[records.NUM_LEADS, int(round(config.ecg.fs * config.ecg.seconds))],
                  cmr=[config.cmr.frames, config.cmr.size, config.cmr.size]),
      source=os.path.abspath(manifest))
  workers = workers or os.cpu_count() or 1
  os.makedirs(out, exist_ok=True)
  logging.info("Building %s from %d manifest rows with %d worker(s)", out, len(rows), workers)

  def examples_of(split, pool):
    def generate():
      for example, result in pool.imap(_RowWorker(config), by_split[split], chunksize=4):
        result.split = split if example is not None else None
        results.append(result)
        if example is not None:
          yield example
        else:
          logging.warning("Rejected %s", result.message)
    return generate

  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    records.write_dataset(out, {s: examples_of(s, pool) for s in records.SPLITS if by_split[s]},
                          meta, num_shards=num_shards)
  results.sort(key=lambda r: r.row)
  report = make_report(manifest, out, results, time.time() - start)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def make_report(manifest, out, results, seconds):
  kept = [r for r in results if r.status == "kept"]
  rejected = [r for r in results if r.status == "rejected"]
  return dict(
      manifest=os.path.abspath(manifest), dataset=records.dataset_dir(out),
      rows=len(results), kept=len(kept), rejected=len(rejected),
      kept_by_split=dict(collections.Counter(r.split for r in kept)),
      rejected_by_reason=dict(collections.Counter(r.reason for r in rejected)),
      seconds=round(seconds, 1),
      details=[{k: v for k, v in dataclasses.asdict(r).items() if v is not None} for r in results])


def summary(report):
  lines = [f"{report['kept']} of {report['rows']} rows kept "
           f"({', '.join(f'{s} {n}' for s, n in sorted(report['kept_by_split'].items()))}); "
           f"{report['rejected']} rejected"]
  for reason, n in sorted(report["rejected_by_reason"].items(), key=lambda x: -x[1]):
    lines.append(f"  {reason}: {n}")
  lines.append(f"dataset: {report['dataset']}")
  return "\n".join(lines)


_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest, one row per subject.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_PHENOTYPES = flags.DEFINE_string("phenotypes", "", "Phenotype columns as name:unit,name:unit.")
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


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  config = BuildConfig(
      phenotypes=parse_columns(_PHENOTYPES.value), labels=tuple(c for c, _ in parse_columns(_LABELS.value)),
      ecg=preprocess.EcgConfig(seconds=_SECONDS.value, min_seconds=_MIN_SECONDS.value,
                               allow_missing_leads=_ALLOW_MISSING.value),
      cmr=dataclasses.replace(preprocess.CmrConfig(), frames=_FRAMES.value, size=_SIZE.value),
      ecg_fs=_ECG_FS.value, val_fraction=_VAL.value, test_fraction=_TEST.value)
  try:
    report = build(_MANIFEST.value, _OUT.value, config, base_dir=_BASE_DIR.value,
                   workers=_WORKERS.value)
  except ManifestError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(summary(report))
  print(f"report: {os.path.join(_OUT.value, 'report.json')}")
  if _STRICT.value and report["rejected"]:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["manifest", "out"])
  app.run(main)
