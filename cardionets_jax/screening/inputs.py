"""Screening inputs: ECG files, directories and manifests -> records, each named and checked.

Nothing given is dropped: a file in a directory is a record exactly as if it had been named on
the command line (its format found by the reader, from its content), and a manifest row that
cannot be used (too few fields, a rate that is not a number, no path) is a record that fails with
its reason. Output names are `workdir.unique_names` of the ids, so no id can write outside the
output folder or over another record's files.
"""

import dataclasses
import json
import logging
import os
from typing import Optional

from cardionets_jax.data import manifest as manifest_lib
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.workdir import unique_names

ECG_SUFFIXES = (".hea", ".dcm", ".xml", ".scp", ".npy", ".csv")
# Files that belong to a WFDB record named by its .hea, not records of their own.
WFDB_COMPANIONS = (".dat", ".atr", ".qrs", ".ecg", ".xyz", ".mat")


@dataclasses.dataclass
class Record:
  id: str                         # the subject id or file stem, as given
  path: str
  fs: Optional[float] = None
  name: str = ""                  # the output file stem (unique, safe)
  problem: Optional[tuple] = None  # (reason, message) when the record is unusable as given


def _stem(path):
  base = os.path.basename(path)
  for ext in ECG_SUFFIXES:
    if base.lower().endswith(ext):
      return base[:-len(ext)]
  return base


def _directory_records(path, fs):
  found = []
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    hidden = [f for f in files if f.startswith(".")]
    if hidden:
      logging.info("Skipping hidden files in %s: %s", root, hidden)
    files = sorted(f for f in files if not f.startswith("."))
    headers = {os.path.splitext(f)[0] for f in files if f.lower().endswith(".hea")}
    for f in files:
      stem, ext = os.path.splitext(f)
      if ext.lower() in WFDB_COMPANIONS and stem in headers:
        continue
      target = os.path.join(root, stem if ext.lower() == ".hea" else f)
      found.append(Record(stem if ext.lower() in ECG_SUFFIXES else f, target, fs))
  return found


def _is_manifest(path):
  try:
    return "ecg_path" in manifest_lib.header(path)
  except manifest_lib.ManifestError:
    return False


def _manifest_records(path, fs):
  """One record per manifest row; raises ManifestError when the manifest as a whole is unusable."""
  table = manifest_lib.read(path, required=("ecg_path",))
  for warning in table.warnings:
    logging.warning("%s", warning)
  base = os.path.dirname(os.path.abspath(path))
  found = []
  for row in table.rows:
    where = f"{path}, line {row.line}"
    if row.problem:
      rid = row.values.get("subject_id") or f"line{row.line}"
      found.append(Record(rid, where, problem=("field_count", row.problem)))
      continue
    target = row.values.get("ecg_path", "")
    rid = row.values.get("subject_id") or (_stem(target) if target else f"line{row.line}")
    record = Record(rid, os.path.join(base, target) if target else where, fs)
    if not target:
      record.problem = ("missing_file", f"{where}: empty ecg_path")
    else:
      try:
        record.fs = manifest_lib.rate_cell(row.values.get("ecg_fs")) or fs
      except ValueError as e:
        record.problem = ("sampling_rate", f"{where}: {e}")
    found.append(record)
  return found


def find_records(paths, fs=None):
  """Expands files, directories and manifests into records with unique, file-safe names."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      found += _directory_records(path, fs)
    elif path.lower().endswith(".csv") and os.path.isfile(path) and _is_manifest(path):
      found += _manifest_records(path, fs)
    else:
      found.append(Record(_stem(path), path[:-4] if path.lower().endswith(".hea") else path, fs))
  for record, name in zip(found, unique_names(r.id for r in found)):
    record.name = name
  return found


PREPROCESSING = ("ours", "release")


def prepare(record, allow_missing_leads, preprocessing="ours"):
  """(ecg, lead mask, info): ours gives one 10 s window (12, 2500), the model crops it; the
  release's order (for its weights) gives its three filtered 9 s crops (3, 12, 2250)."""
  if record.problem:
    raise readers.RecordError(*record.problem)
  raw = readers.read_ecg(record.path, fs=record.fs)
  cfg = preprocess.EcgConfig(allow_missing_leads=allow_missing_leads)
  if preprocessing == "release":
    from cardionets_jax.data import release_preprocess
    return release_preprocess.preprocess_crops(raw, cfg)
  return preprocess.preprocess_ecg(raw, cfg)


def input_checks(info, predicted_from_present):
  keys = ("preprocessing", "fs_in", "fs_out", "resampled", "resample_ratio", "resample_method",
          "crop_starts", "leads_found", "leads_derived",
          "leads_missing", "n_samples_in", "n_cropped", "n_padded", "interpolated_runs",
          "min_lead_std_mv", "max_abs_mv", "flags")
  checks = {k: info[k] for k in keys if k in info}
  checks["predicted_from_present_leads"] = predicted_from_present
  return json.loads(json.dumps(checks, default=float))
