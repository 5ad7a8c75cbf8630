"""Screening inputs: ECG files, directories and manifests -> prepared records."""

import csv
import dataclasses
import json
import os

from cardionets_jax.data import preprocess
from cardionets_jax.data import readers

ECG_SUFFIXES = (".hea", ".dcm", ".npy", ".csv")


@dataclasses.dataclass
class Record:
  name: str
  path: str
  fs: float = None


def _is_manifest(path):
  with open(path, newline="") as f:
    header = next(csv.reader(f), [])
  return "ecg_path" in [h.strip() for h in header]


def find_records(paths, fs=None):
  """Expands files, directories and manifests into records with unique, file-safe names."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
          stem, ext = os.path.splitext(f)
          if ext.lower() in ECG_SUFFIXES:
            target = os.path.join(root, stem if ext.lower() == ".hea" else f)
            found.append(Record(stem, target, fs))
    elif path.lower().endswith(".csv") and os.path.isfile(path) and _is_manifest(path):
      base = os.path.dirname(os.path.abspath(path))
      with open(path, newline="") as f:
        for row in csv.DictReader(f):
          target = row["ecg_path"].strip()
          target = target if os.path.isabs(target) else os.path.join(base, target)
          name = (row.get("subject_id") or "").strip() or os.path.splitext(os.path.basename(target))[0]
          row_fs = (row.get("ecg_fs") or "").strip()
          found.append(Record(name, target, float(row_fs) if row_fs else fs))
    else:
      stem = os.path.basename(path)
      for ext in ECG_SUFFIXES:
        if stem.lower().endswith(ext):
          stem = stem[:-len(ext)]
      found.append(Record(stem, path[:-4] if path.lower().endswith(".hea") else path, fs))
  seen = {}
  for r in found:
    r.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.name) or "record"
    count = seen.get(r.name, 0)
    seen[r.name] = count + 1
    if count:
      r.name = f"{r.name}_{count + 1}"
  return found



def prepare(record, allow_missing_leads):
  raw = readers.read_ecg(record.path, fs=record.fs)
  ecg, mask, info = preprocess.preprocess_ecg(
      raw, preprocess.EcgConfig(allow_missing_leads=allow_missing_leads))
  return ecg, mask, info


def input_checks(info, predicted_from_present):
  keys = ("fs_in", "fs_out", "resampled", "leads_found", "leads_derived", "leads_missing",
          "n_samples_in", "n_cropped", "n_padded", "interpolated_runs", "min_lead_std_mv", "max_abs_mv")
  checks = {k: info[k] for k in keys if k in info}
  checks["predicted_from_present_leads"] = predicted_from_present
  return json.loads(json.dumps(checks, default=float))


