"""One manifest row of the dataset build: its cells checked, its files read and preprocessed.

`plan_rows` checks what needs no file (ids, numbers, labels, physiological ranges, paths);
`process_row` reads and preprocesses the files. Each returns a `RowResult` for every row, kept or
rejected with a reason code, and the flags that did not reject it in `checks["flags"]`.
"""

import dataclasses
import math
import os
from typing import Optional

import numpy as np

from cardionets_jax.data import manifest as manifest_lib
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.data import records

REQUIRED_COLUMNS = ("subject_id", "ecg_path")
SPLITS = ("train", "val", "test")

# Physiological ranges a phenotype must fall in, by unit, unless its column declares its own
# (`--phenotypes=lvedv:mL:20:500`). Wide enough for disease and children; a value outside is a
# unit mix-up or a typing error. "%" bounds ejection fractions, not strains (those are negative:
# declare their range).
DEFAULT_RANGES = {"mL": (1.0, 1000.0), "g": (5.0, 1000.0), "mm": (1.0, 50.0),
                  "bpm": (20.0, 300.0), "ms": (1.0, 2000.0), "%": (0.0, 100.0)}


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  phenotypes: tuple = ()          # (column, unit) or (column, unit, low, high)
  labels: tuple = ()              # column names
  ecg: preprocess.EcgConfig = preprocess.EcgConfig()
  cmr: preprocess.CmrConfig = preprocess.CmrConfig()
  ecg_fs: Optional[float] = None  # for .npy/.csv ECGs without an `ecg_fs` column
  val_fraction: float = 0.1
  test_fraction: float = 0.15

  def phenotype_ranges(self):
    """column -> (low, high) or None: the declared range, else the unit's default."""
    out = {}
    for column in self.phenotypes:
      name, unit = column[0], column[1]
      out[name] = tuple(column[2:4]) if len(column) >= 4 else DEFAULT_RANGES.get(unit)
    return out


@dataclasses.dataclass(frozen=True)
class RowTask:
  row: int                        # the manifest line the row starts on
  subject_id: str
  ecg_path: str
  cmr_path: Optional[str]
  ecg_fs: Optional[float]
  phenotypes: np.ndarray
  labels: np.ndarray
  flags: tuple = ()               # plausibility flags found in the cells
  split: Optional[str] = None     # the manifest's own split (PTB-XL's folds), else by hash
  split_group: Optional[str] = None  # hashed for the split instead of the id (a patient's ECGs)

  def split_of(self, config):
    return self.split or records.split_of((self.split_group or self.subject_id).encode(),
                                          config.val_fraction, config.test_fraction)


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
  """'lvedv:mL:20:500,lvef:%' -> (('lvedv', 'mL', 20.0, 500.0), ('lvef', '%'))."""
  out = []
  for item in filter(None, (s.strip() for s in (spec or "").split(","))):
    parts = [p.strip() for p in item.split(":")]
    if len(parts) not in (1, 2, 4):
      raise ValueError(f"{item!r}: expected name, name:unit or name:unit:low:high")
    column = (parts[0], parts[1] if len(parts) > 1 else "")
    if len(parts) == 4:
      low, high = float(parts[2]), float(parts[3])
      if not low < high:
        raise ValueError(f"{item!r}: the range needs low < high")
      column += (low, high)
    out.append(column)
  return tuple(out)


def _resolve(base_dir, path):
  path = (path or "").strip()
  if not path:
    return None
  return path if os.path.isabs(path) else os.path.join(base_dir, path)


def plan_rows(rows, config, base_dir):
  """Manifest rows -> (tasks, rejected): a RowTask per row still in the running, a RowResult per
  row rejected without opening a file (malformed, bad values, duplicate ids)."""
  tasks, rejected, first_row = [], [], {}
  ranges = config.phenotype_ranges()
  for row in rows:
    line, cells = row.line, row.values
    sid = (cells.get("subject_id") or "").strip()
    reject = lambda reason, message: rejected.append(
        RowResult(line, sid, "rejected", reason=reason, message=f"row {line}: {message}"))
    if row.problem:
      reject("field_count", row.problem)
      continue
    left_out = (cells.get("left_out") or "").strip()   # a cohort recipe's "reason: why"
    if left_out:
      reason, _, why = left_out.partition(":")
      reject(reason.strip(), f"left out by the cohort recipe: {why.strip() or reason}")
      continue
    if not sid:
      reject("missing_subject_id", "empty subject_id")
      continue
    if sid in first_row:
      reject("duplicate_subject", f"subject {sid} already on row {first_row[sid]}")
      continue
    first_row[sid] = line
    try:
      phenotypes, flags = _phenotypes(cells, config.phenotypes, ranges)
      labels = np.array([_label(cells[c], c) for c in config.labels], np.int8)
      ecg_fs = manifest_lib.rate_cell(cells.get("ecg_fs"))
    except readers.RecordError as e:
      reject(e.reason, str(e))
      continue
    except ValueError as e:
      reject("sampling_rate", str(e))
      continue
    ecg_path = _resolve(base_dir, cells.get("ecg_path"))
    if ecg_path is None:
      reject("missing_file", "empty ecg_path")
      continue
    split = (cells.get("split") or "").strip() or None
    if split not in (None,) + SPLITS:
      reject("bad_split", f"split {split!r} is not one of {SPLITS}")
      continue
    tasks.append(RowTask(line, sid, ecg_path, _resolve(base_dir, cells.get("cmr_path")), ecg_fs,
                         phenotypes, labels, tuple(flags), split,
                         (cells.get("split_group") or "").strip() or None))
  return tasks, rejected


def _phenotypes(cells, columns, ranges):
  """The row's phenotypes (NaN where missing or implausible) and a flag per implausible one."""
  values, flags = [], []
  for column in columns:
    name, unit = column[0], column[1]
    x = _number(cells[name], name, "bad_phenotype")
    bounds = ranges[name]
    if x is not None and bounds is not None and not bounds[0] <= x <= bounds[1]:
      flags.append(dict(code="phenotype_range", column=name, value=x, range=list(bounds),
                        unit=unit, action="set missing"))
      x = None
    values.append(float("nan") if x is None else x)
  return np.array(values, np.float32), flags


def _number(value, column, reason):
  value = (value or "").strip()
  if not value:
    return None
  try:
    x = float(value)
  except ValueError:
    raise readers.RecordError(reason, f"column {column!r} holds {value!r}, not a number")
  if not math.isfinite(x):
    raise readers.RecordError(reason, f"column {column!r} holds {value!r}, not a finite number")
  return x


def _label(value, column):
  value = (value or "").strip()
  if not value:
    return -1
  if value not in ("0", "1", "0.0", "1.0"):
    raise readers.RecordError("bad_label", f"label {column!r} holds {value!r}, not 0/1")
  return int(float(value))


def process_row(task, config):
  """Reads and preprocesses one row's files -> (example or None, RowResult)."""
  result = RowResult(task.row, task.subject_id, "kept")
  try:
    result.file = task.ecg_path
    ecg_record = readers.read_ecg(task.ecg_path, fs=task.ecg_fs or config.ecg_fs)
    ecg, lead_mask, checks = preprocess.preprocess_ecg(ecg_record, config.ecg)
    cmr = records.empty_cmr(config.cmr.size)
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
  checks = _jsonable(checks)
  checks["flags"] = list(task.flags) + checks.get("flags", [])
  result.checks = checks
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


class RowWorker:
  """Picklable callable for the worker pool."""

  def __init__(self, config):
    self.config = config

  def __call__(self, task):
    return process_row(task, self.config)
