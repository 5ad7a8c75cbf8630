"""Screening: from ECG files to phenotypes, disease risks, a synthetic cine and a one-page report.

  python -m cardionets_jax.predict --workdir=DIR --ecg=PATH [PATH ...] --out=OUT

PATH is an ECG record (WFDB, DICOM waveform, MUSE / CardioSoft / Sierra XML,
HL7 aECG, SCP-ECG, .npy / .csv with --fs), a directory of them, or a
manifest CSV with an `ecg_path` column (and optionally `subject_id`, `ecg_fs`). DIR is a workdir where finetune (and,
for the cine, mar) have run. Per record OUT gets <record>.json,
<record>.nii.gz, <record>.gif and <record>.png; OUT/summary.csv has a row
per record, failures included, named by the unique, file-safe form of each
id (`workdir.unique_names`). Every file in a directory is a record, read by
its content. Argument errors (a bad --batch-size, a workdir without the
stages it needs) stop before any work; a record that cannot be screened is a
failed row of summary.csv, never the end of the run. The exit status is 1
when any record failed.
"""

import argparse
import csv
import os
import sys

import numpy as np

from cardionets_jax.data import manifest as manifest_lib
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.screening import inputs
from cardionets_jax.screening import report
from cardionets_jax.screening.screener import Screener, method_info
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.workdir import Workdir, write_json


def _result(screener, record, info, missing, phen, probs):
  meta, refs, thresholds = screener.meta, screener.references, screener.thresholds
  return dict(
      record=record.name, path=record.path, input=inputs.input_checks(info, missing),
      phenotypes={n: dict(value=float(phen[j]), unit=meta.phenotype_units[j],
                          reference_range=[float(v) for v in refs[j]],
                          outside_reference_range=bool(not refs[j][0] <= phen[j] <= refs[j][1]))
                  for j, n in enumerate(meta.phenotype_names)},
      diseases={n: dict(probability=float(probs[j]), threshold=float(thresholds[j]),
                        positive=bool(probs[j] >= thresholds[j]))
                for j, n in enumerate(meta.label_names)},
      models=screener.sources, **({"notes": screener.notes} if screener.notes else {}))


def _summary_row(result, meta, missing):
  return dict(record=result["record"], path=result["path"], status="ok", reason="",
              message="predicted from the leads present" if missing else "",
              **{f"{n}_{u}".replace("%", "pct"): f"{result['phenotypes'][n]['value']:.4g}"
                 for n, u in zip(meta.phenotype_names, meta.phenotype_units)},
              **{f"p_{n}": f"{result['diseases'][n]['probability']:.4f}" for n in meta.label_names})


def _screen_batch(screener, chunk, batch_size, seed, out):
  """Predicts (and generates for) one padded batch; writes each record's files; returns rows."""
  pad = batch_size - len(chunk)
  ecg = np.stack([c[1] for c in chunk] + [chunk[-1][1]] * pad)
  mask = np.stack([c[2] for c in chunk] + [chunk[-1][2]] * pad)
  phen, probs = screener.predict(ecg, mask)
  cines = screener.generate(ecg, mask, seed) if screener.generate_cines else None
  rows = []
  for i, (r, x, m, info) in enumerate(chunk):
    missing = bool((m == 0).any())
    result = _result(screener, r, info, missing, phen[i], probs[i])
    if cines is not None:
      report.write_cine(out, r.name, cines[i])
      result["cine"] = dict(nifti=f"{r.name}.nii.gz", gif=f"{r.name}.gif",
                            shape=list(cines[i].shape), seed=seed)
    write_json(os.path.join(out, f"{r.name}.json"), result)
    shown = x if x.ndim == 2 else x[0]           # the release's order: its first crop
    report.write_report(os.path.join(out, f"{r.name}.png"), r.name, shown, preprocess.TARGET_FS,
                        result, None if cines is None else cines[i])
    rows.append(_summary_row(result, screener.meta, missing))
  return rows


def _write_summary(path, rows, records):
  """summary.csv: one row per record, in input order, failures included."""
  order = {r.name: i for i, r in enumerate(records)}
  ids = {r.name: r.id for r in records}
  rows.sort(key=lambda row: order[row["record"]])
  for row in rows:
    row["id"] = ids[row["record"]]
  fixed = ("record", "id", "path", "status", "reason", "message")
  columns = list(fixed) + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in fixed]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)


def _failure(record, reason, message):
  print(f"FAILED {record.name}: {record.path}: {reason}: {message}", file=sys.stderr)
  return dict(record=record.name, path=record.path, status="failed", reason=reason, message=message)


def _prepare_all(records, allow_missing_leads, preprocessing="ours"):
  """(prepared (record, ecg, mask, info) tuples, failure rows): no record stops the others."""
  prepared, failed = [], []
  for r in records:
    try:
      prepared.append((r, *inputs.prepare(r, allow_missing_leads, preprocessing)))
    except readers.RecordError as e:
      failed.append(_failure(r, e.reason, str(e)))
    except Exception as e:  # a reader bug or an exotic file fails its record, not the run
      failed.append(_failure(r, "unreadable", f"{r.path}: {type(e).__name__}: {e}"))
  return prepared, failed


def check_args(args):
  """Every argument error, before any record is read or any model loaded."""
  if args.batch_size < 1:
    raise SystemExit(f"--batch-size must be at least 1, not {args.batch_size}")
  if args.fs is not None and not (np.isfinite(args.fs) and args.fs > 0):
    raise SystemExit(f"--fs must be a positive sampling rate, not {args.fs}")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise SystemExit(f"--out {args.out} is a file, not a folder")
  missing = [p for p in args.ecg if not os.path.exists(p) and not os.path.exists(p + ".hea")]
  if missing and len(missing) == len(args.ecg):
    raise SystemExit(f"None of the ECG paths exists: {missing}")
  workdir = Workdir(args.workdir)
  if not os.path.isdir(workdir.root):
    raise SystemExit(f"--workdir {workdir.root} does not exist")
  if not workdir.finished("finetune"):
    raise SystemExit(f"No finished finetune stage in {workdir.root}: run `python -m "
                     f"cardionets_jax.main --config=configs/finetune.py --workdir={workdir.root}`")
  generator = Workdir(args.generator_workdir or args.workdir)
  if not args.no_generate and not generator.finished("mar"):
    raise SystemExit(f"No finished mar stage in {generator.root}: run `python -m "
                     f"cardionets_jax.main --config=configs/mar.py --workdir={generator.root}`, "
                     "or pass --no-generate")


def run(args):
  """Screens every record; returns the exit status (1 when any record failed)."""
  check_args(args)
  try:
    records = inputs.find_records(args.ecg, args.fs)
  except manifest_lib.ManifestError as e:
    raise SystemExit(f"error: {e}") from e
  os.makedirs(args.out, exist_ok=True)
  summary = os.path.join(args.out, "summary.csv")
  preprocessing = args.preprocessing
  if preprocessing == "auto":   # the release's weights come with the release's order
    preprocessing = method_info(Workdir(args.workdir), args.method)[1].get("preprocessing", "ours")
  prepared, rows = _prepare_all(records, args.allow_missing_leads, preprocessing)
  failures = len(rows)
  if prepared:
    screener = Screener(Workdir(args.workdir), args.method, generate=not args.no_generate,
                        generator_workdir=Workdir(args.generator_workdir) if args.generator_workdir
                        else None, preprocessing=preprocessing)
    batch_size = args.batch_size
    progress = metrics_lib.Progress(-(-len(prepared) // batch_size), batch_size)
    for b, first in enumerate(range(0, len(prepared), batch_size)):
      rows += _screen_batch(screener, prepared[first:first + batch_size], batch_size, args.seed + b,
                            args.out)
      line = progress.update(b + 1)
      if line:
        metrics_lib.log("screening batch %s", line.replace("step", "batch"))
  _write_summary(summary, rows, records)
  metrics_lib.log("Screened %d record(s): %d ok, %d failed; wrote %s", len(records),
                  len(records) - failures, failures, summary)
  return 1 if failures or not records else 0


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m cardionets_jax.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="workdir where finetune (and mar) ran")
  parser.add_argument("--ecg", required=True, nargs="+", help="records, directories or manifest CSVs")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--fs", type=float, default=None, help="sampling rate of .npy/.csv records")
  parser.add_argument("--no-generate", action="store_true", help="skip the synthetic cine")
  parser.add_argument("--allow-missing-leads", action="store_true",
                      help="predict from the leads present (the encoder masks absent ones)")
  parser.add_argument("--method", default=None, help="finetune method (default: aligned, most labels)")
  parser.add_argument("--generator-workdir", default=None,
                      help="workdir of the mar stage to generate with (default: --workdir)")
  parser.add_argument("--preprocessing", choices=("auto",) + inputs.PREPROCESSING, default="auto",
                      help="ECG preprocessing order: ours, or the release's (FFT resampling, "
                           "filters on each 9 s crop); auto: the method's (converted release "
                           "weights: release)")
  parser.add_argument("--batch-size", type=int, default=16, help="records per compiled batch")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed of the cines")
  parser.add_argument("more_ecg", nargs="*", metavar="PATH", help="more records (--ecg=A B C)")
  args = parser.parse_args(argv)
  args.ecg = args.ecg + args.more_ecg
  return args


def main(argv=None):
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # absl-flag readers (Grain) get defaults; the CLI is argparse
  metrics_lib.quiet_libraries()
  sys.exit(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
  main()
