"""Cohort recipes: a cohort as delivered (UK Biobank, MIMIC-IV-ECG, PTB-XL) -> a build manifest.

  python -m cardionets_jax.data.cohorts ukb --ecg_dir=20205/ --cmr_dir=20208/ \
      --phenotypes=cmr_phenotypes.csv [--instance=2] --out=ukb.csv
  python -m cardionets_jax.data.cohorts mimic_iv_ecg --root=mimic-iv-ecg/ \
      [--labels=labels.csv --key=study_id] --out=mimic.csv
  python -m cardionets_jax.data.cohorts ptbxl --root=ptb-xl/ [--rate=500] \
      [--labels=superclass|statement] --out=ptbxl.csv

then `python -m cardionets_jax.data.build --manifest=OUT ...`. Every file a recipe sees becomes
a manifest row: the ones it leaves out (another UKB instance, a second copy, a name it cannot
parse, a subject without an ECG) carry `left_out` ("reason: why"), which the build reports as
rejected, so the build's report.json covers every file seen. Each recipe prints what it found
and what it left out, and writes the same as OUT.recipe.json.
"""

import argparse
import ast
import collections
import csv
import json
import os
import re
import sys

from cardionets_jax.data import manifest as manifest_lib


# The columns the recipes write themselves; a user table's column of that name is not copied.
MANIFEST_COLUMNS = ("subject_id", "study_id", "ecg_path", "cmr_path", "ecg_fs", "split",
                    "split_group", "left_out")


def _copied(row, key):
  return {k: v for k, v in (row or {}).items() if k != key and k not in MANIFEST_COLUMNS}


class Recipe:
  """Collects the manifest rows and the counts a recipe reports."""

  def __init__(self, name):
    self.name, self.rows, self.found, self.notes = name, [], collections.Counter(), {}

  def keep(self, **cells):
    self.rows.append(cells)

  def leave_out(self, subject_id, path, reason, why):
    self.rows.append(dict(subject_id=subject_id, ecg_path=path, left_out=f"{reason}: {why}"))

  def note(self, what, subject_ids):
    """Subjects kept with something missing (a cine, a phenotype row), by what is missing."""
    self.notes.setdefault(what, []).extend(subject_ids)

  def write(self, out):
    columns = list(dict.fromkeys(
        [c for c in MANIFEST_COLUMNS if c != "study_id"] + [k for r in self.rows for k in r]))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
      writer = csv.DictWriter(f, columns, restval="")
      writer.writeheader()
      writer.writerows(self.rows)
    left = collections.Counter(r["left_out"].split(":")[0] for r in self.rows if r.get("left_out"))
    report = dict(recipe=self.name, manifest=os.path.abspath(out), found=dict(self.found),
                  rows=len(self.rows), left_out=dict(left),
                  kept_with_missing={k: dict(count=len(v), subjects=v) for k, v in self.notes.items()})
    with open(out + ".recipe.json", "w") as f:
      json.dump(report, f, indent=1)
    print(f"{self.name}: found " + ", ".join(f"{v} {k}" for k, v in self.found.items()))
    print(f"  wrote {len(self.rows)} manifest rows to {out}; left out: {dict(left) or 'none'}")
    for what, ids in self.notes.items():
      print(f"  kept without {what}: {len(ids)} ({', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})")
    return report


def _table(path, key):
  """{key value: row} of a CSV (manifest.read: BOMs, encodings, ragged rows named); the rows
  whose key repeats an earlier one are returned apart, as (line, key)."""
  table = manifest_lib.read(path, required=(key,))
  rows, repeats = {}, []
  for row in table.rows:
    k = (row.values.get(key) or "").strip()
    if row.problem:
      raise manifest_lib.ManifestError(f"{path}: line {row.line}: {row.problem}")
    if k in rows:
      repeats.append((row.line, k))
    else:
      rows[k] = row.values
  return rows, repeats


def _unique_table(path, key):
  rows, repeats = _table(path, key)
  if repeats:
    raise manifest_lib.ManifestError(
        f"{path}: {key} repeats on lines {[line for line, _ in repeats][:10]}")
  return rows


# ------------------------------------------------------------------------------------------------
# UK Biobank: 20205 CardioSoft XML ECGs, 20208 long-axis cine zips, a phenotype table
# ------------------------------------------------------------------------------------------------

_UKB_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)(\.xml|\.zip)?$", re.IGNORECASE)


def _ukb_files(directory, field, instance, recipe):
  """{eid: path} of `field`'s files for `instance`; every other file is a left-out row."""
  chosen = {}
  for name in sorted(os.listdir(directory)) if directory else []:
    path = os.path.join(directory, name)
    if name.startswith("."):
      continue
    recipe.found[f"{field} files"] += 1
    m = _UKB_NAME.match(name)
    if not m or m.group(2) != str(field):
      recipe.leave_out(m.group(1) if m else name, path, "unrecognised_name",
                       f"{name} is not EID_{field}_INSTANCE_ARRAY")
    elif m.group(3) != str(instance):
      recipe.leave_out(m.group(1), path, "other_instance",
                       f"{name} is instance {m.group(3)} (--instance={instance})")
    elif m.group(1) in chosen:
      recipe.leave_out(m.group(1), path, "duplicate_file",
                       f"{name}: {os.path.basename(chosen[m.group(1)])} is used")
    else:
      chosen[m.group(1)] = path
  return chosen


def ukb(args):
  recipe = Recipe("ukb")
  ecgs = _ukb_files(args.ecg_dir, 20205, args.instance, recipe)
  cmrs = _ukb_files(args.cmr_dir, 20208, args.instance, recipe)
  table, repeats = _table(args.phenotypes, args.id_column) if args.phenotypes else ({}, [])
  recipe.found["phenotype rows"] = len(table) + len(repeats)
  for line, eid in repeats:
    recipe.leave_out(eid, "", "duplicate_phenotype_row",
                     f"{args.phenotypes} line {line} repeats {args.id_column} {eid}")
  for eid in sorted(set(ecgs) | set(cmrs) | set(table), key=lambda e: (len(e), e)):
    cells = _copied(table.get(eid), args.id_column)
    if eid not in ecgs:
      recipe.rows.append(dict(subject_id=eid, cmr_path=cmrs.get(eid, ""), **cells,
                              left_out=f"no_ecg: no 20205 ECG of instance {args.instance}"))
      continue
    recipe.keep(subject_id=eid, ecg_path=ecgs[eid], cmr_path=cmrs.get(eid, ""), **cells)
    if eid not in cmrs:
      recipe.note("a 20208 cine", [eid])
    if args.phenotypes and eid not in table:
      recipe.note("a phenotype row", [eid])
  return recipe


# ------------------------------------------------------------------------------------------------
# MIMIC-IV-ECG: record_list.csv (WFDB records), machine_measurements.csv, the user's labels
# ------------------------------------------------------------------------------------------------

MIMIC_MEASUREMENTS = ("rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end",
                      "p_axis", "qrs_axis", "t_axis")


def mimic_iv_ecg(args):
  """One row per study (an ECG), its patient's subject_id as the split group."""
  recipe = Recipe("mimic_iv_ecg")
  records, repeats = _table(os.path.join(args.root, "record_list.csv"), "study_id")
  recipe.found["records"] = len(records) + len(repeats)
  for line, study in repeats:
    recipe.leave_out(study, "", "duplicate_study", f"record_list.csv line {line} repeats {study}")
  path = os.path.join(args.root, "machine_measurements.csv")
  measured = _unique_table(path, "study_id") if os.path.exists(path) else {}
  labels = _unique_table(args.labels, args.key) if args.labels else {}
  unlabelled = []
  for study, row in records.items():
    if args.labels and row.get(args.key, "") not in labels:
      unlabelled.append(study)
    cells = _copied(labels.get(row.get(args.key, "")), args.key)
    m = measured.get(study, {})
    recipe.keep(subject_id=study, ecg_path=os.path.join(args.root, row.get("path", "")),
                split_group=row.get("subject_id", ""),
                **{k: m[k] for k in MIMIC_MEASUREMENTS if k in m}, **cells)
  if unlabelled:
    recipe.note(f"a label row ({args.key})", unlabelled)
  return recipe


# ------------------------------------------------------------------------------------------------
# PTB-XL: ptbxl_database.csv, scp_statements.csv, records100/ and records500/
# ------------------------------------------------------------------------------------------------

PTBXL_FOLDS = {**{f: "train" for f in range(1, 9)}, 9: "val", 10: "test"}  # its recommendation


def _scp_statements(root):
  with open(os.path.join(root, "scp_statements.csv"), newline="", encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))
  code_column = next(iter(rows[0])) if rows else ""           # the first, unnamed column
  return {r[code_column].strip(): (r.get("diagnostic_class") or "").strip() for r in rows}


def ptbxl(args):
  """One row per ECG; folds 1-8 train, 9 val, 10 test; labels the diagnostic superclasses (any
  statement of the class, any likelihood) or every SCP statement."""
  recipe = Recipe("ptbxl")
  statements = _scp_statements(args.root)
  classes = sorted({c for c in statements.values() if c})
  names = classes if args.labels == "superclass" else sorted(statements)
  table = _unique_table(os.path.join(args.root, "ptbxl_database.csv"), "ecg_id")
  recipe.found["ECGs"] = len(table)
  column = "filename_hr" if args.rate == 500 else "filename_lr"
  for ecg_id, row in table.items():
    path = os.path.join(args.root, row.get(column, ""))
    try:
      codes = ast.literal_eval(row.get("scp_codes", ""))   # a dict literal; nothing is executed
      fold = int(float(row.get("strat_fold", "")))
      assert isinstance(codes, dict) and fold in PTBXL_FOLDS
    except (ValueError, SyntaxError, AssertionError):
      recipe.leave_out(ecg_id, path, "bad_ptbxl_row", f"ptbxl_database.csv ecg_id {ecg_id}: "
                       f"scp_codes {row.get('scp_codes')!r} / strat_fold {row.get('strat_fold')!r}")
      continue
    present = {statements.get(c) for c in codes} if args.labels == "superclass" else set(codes)
    recipe.keep(subject_id=ecg_id, ecg_path=path, split=PTBXL_FOLDS[fold],
                split_group=str(row.get("patient_id", "")).removesuffix(".0"),
                **{n: int(n in present) for n in names})
  print(f"ptbxl: labels {','.join(names)} (declare them with --labels=...)")
  return recipe


def _parser():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="cohort", required=True)
  p = sub.add_parser("ukb", help="UK Biobank 20205 ECG XML + 20208 cine zips + phenotypes")
  p.add_argument("--ecg_dir", required=True)
  p.add_argument("--cmr_dir", default="")
  p.add_argument("--phenotypes", default="", help="CSV with an eid column")
  p.add_argument("--id_column", default="eid")
  p.add_argument("--instance", type=int, default=2, help="2: the first imaging visit")
  p = sub.add_parser("mimic_iv_ecg", help="MIMIC-IV-ECG record_list.csv")
  p.add_argument("--root", required=True)
  p.add_argument("--labels", default="", help="CSV of labels keyed by --key")
  p.add_argument("--key", default="study_id", choices=("study_id", "subject_id"))
  p = sub.add_parser("ptbxl", help="PTB-XL ptbxl_database.csv")
  p.add_argument("--root", required=True)
  p.add_argument("--rate", type=int, default=500, choices=(100, 500))
  p.add_argument("--labels", default="superclass", choices=("superclass", "statement"))
  for p in sub.choices.values():
    p.add_argument("--out", required=True, help="the manifest CSV to write")
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    recipe = {"ukb": ukb, "mimic_iv_ecg": mimic_iv_ecg, "ptbxl": ptbxl}[args.cohort](args)
  except (manifest_lib.ManifestError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  recipe.write(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
