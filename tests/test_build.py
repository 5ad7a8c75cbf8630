"""Building a dataset from a manifest of real-format records, good and bad."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cardionets_jax.data import build
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.data import records
from tests import fixtures

CONFIG = build.BuildConfig(phenotypes=(("lvedv", "mL"), ("lvef", "%")), labels=("cardiomyopathy",),
                           cmr=dataclasses.replace(preprocess.CmrConfig(), frames=8, size=16))
COLUMNS = ["subject_id", "ecg_path", "cmr_path", "ecg_fs", "lvedv", "lvef", "cardiomyopathy"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_manifest(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row.get(k, "") for k in COLUMNS})
  return path


def good_rows(directory):
  """One subject per supported format; (row, expected ecg input, expected cmr input)."""
  d = str(directory)
  c = fixtures.cine(30, 32, seed=1)
  rows = [
      dict(subject_id="wfdb500", ecg_path=fixtures.write_wfdb(d, "wfdb500", fixtures.ecg_signal(500), 500),
           cmr_path=fixtures.write_nifti(d, "cine_a", c), lvedv="150", lvef="60", cardiomyopathy="0"),
      dict(subject_id="wfdb1000", ecg_path=fixtures.write_wfdb(d, "wfdb1000", fixtures.ecg_signal(1000, seed=2), 1000),
           cmr_path=fixtures.write_dicom_series(d, "series_b", c), lvedv="210", lvef="35",
           cardiomyopathy="1"),
      dict(subject_id="dicom_ecg", ecg_path=fixtures.write_dicom_ecg(d, "dicom_c", fixtures.ecg_signal(500, seed=3), 500),
           lvedv="", lvef="58", cardiomyopathy=""),            # ECG only; missing values
      dict(subject_id="npy", ecg_path=fixtures.write_npy(d, "npy_d", fixtures.ecg_signal(250, seed=4)),
           ecg_fs="250", cmr_path=fixtures.write_nifti(d, "cine_d", c, four_d=True), lvedv="120",
           lvef="66", cardiomyopathy="0"),
      dict(subject_id="csv", ecg_path=fixtures.write_csv(d, "csv_e", fixtures.ecg_signal(500, seed=5)),
           ecg_fs="500", lvedv="130", lvef="61", cardiomyopathy="0"),
  ]
  return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("build")
  rows = good_rows(root / "good")
  expected = {}
  good_ecg = rows[0]["ecg_path"]
  for case in fixtures.bad_ecg_cases(str(root / "bad_ecg")).values():
    rows.append(dict(subject_id=f"ecg_{case.name}", ecg_path=case.path,
                     ecg_fs=str(case.fs) if case.fs else "", lvedv="100"))
    expected[f"ecg_{case.name}"] = case
  for case in fixtures.bad_cmr_cases(str(root / "bad_cmr")).values():
    rows.append(dict(subject_id=f"cmr_{case.name}", ecg_path=good_ecg, cmr_path=case.path))
    expected[f"cmr_{case.name}"] = case
  rows += [dict(subject_id="wfdb500", ecg_path=good_ecg),                   # duplicate id
           dict(subject_id="bad_value", ecg_path=good_ecg, lvedv="big"),    # non-numeric
           dict(subject_id="bad_label", ecg_path=good_ecg, cardiomyopathy="2"),
           dict(subject_id="", ecg_path=good_ecg)]
  manifest = write_manifest(str(root / "manifest.csv"), rows)
  out = str(root / "out")
  report = build.build(manifest, out, CONFIG, workers=2)
  return rows, expected, report, out


def test_every_row_is_reported_kept_or_rejected_with_its_reason(built):
  rows, expected, report, out = built
  assert report["rows"] == len(rows) and report["kept"] + report["rejected"] == len(rows)
  with open(os.path.join(out, "report.json")) as f:
    assert json.load(f)["rows"] == len(rows)
  by_id = {}
  for d in report["details"]:
    by_id.setdefault(d["subject_id"], []).append(d)
  for sid in ("wfdb500", "wfdb1000", "dicom_ecg", "npy", "csv"):
    assert by_id[sid][0]["status"] == "kept", by_id[sid]
  for sid, case in expected.items():
    (d,) = by_id[sid]
    assert d["status"] == "rejected", (sid, d)
    assert d["reason"] == case.reason, (sid, d)
    for needle in case.needles:
      assert needle in d["message"], (sid, needle, d["message"])
  assert by_id["wfdb500"][1]["reason"] == "duplicate_subject" and "row 2" in by_id["wfdb500"][1]["message"]
  assert by_id["bad_value"][0]["reason"] == "bad_phenotype" and "'big'" in by_id["bad_value"][0]["message"]
  assert by_id["bad_label"][0]["reason"] == "bad_label"
  assert by_id[""][0]["reason"] == "missing_subject_id"
  assert report["kept"] == 5
  assert sum(report["rejected_by_reason"].values()) == report["rejected"]


def test_kept_arrays_equal_the_readers_output_after_preprocessing(built):
  rows, _, report, out = built
  stored = {}
  for split in records.SPLITS:
    source = records.data_source(out, split) if split in records.DatasetMeta.load(out).splits else []
    for i in range(len(source)):
      ex = source[i]
      stored[ex["subject_id"].decode()] = (split, ex)
  assert sorted(stored) == sorted(["wfdb500", "wfdb1000", "dicom_ecg", "npy", "csv"])
  for row in rows[:5]:
    split, ex = stored[row["subject_id"]]
    assert split == records.split_of(row["subject_id"].encode(), 0.1, 0.15)
    fs = float(row["ecg_fs"]) if row.get("ecg_fs") else None
    ecg, mask, _ = preprocess.preprocess_ecg(readers.read_ecg(row["ecg_path"], fs=fs), CONFIG.ecg)
    np.testing.assert_array_equal(ex["ecg"], ecg)
    np.testing.assert_array_equal(ex["lead_mask"], mask)
    if row.get("cmr_path"):
      cmr = preprocess.preprocess_cmr(readers.read_cmr(row["cmr_path"]), CONFIG.cmr)
      np.testing.assert_array_equal(ex["cmr"], cmr)
      assert ex["has_cmr"] == 1 and ex["cmr"].shape == (8, 16, 16)
    else:
      assert ex["has_cmr"] == 0 and ex["cmr"].shape == (0, 16, 16)
  _, ex = stored["dicom_ecg"]
  assert np.isnan(ex["phenotypes"][0]) and ex["phenotypes"][1] == 58.0
  np.testing.assert_array_equal(ex["labels"], [-1])
  np.testing.assert_array_equal(stored["wfdb1000"][1]["labels"], [1])


def test_manifest_level_errors(tmp_path):
  empty = write_manifest(str(tmp_path / "empty.csv"), [])
  with pytest.raises(build.ManifestError, match="no rows"):
    build.build(empty, str(tmp_path / "o1"), CONFIG)
  with open(tmp_path / "cols.csv", "w") as f:
    f.write("subject_id,ecg\nA,a.hea\n")
  with pytest.raises(build.ManifestError, match=r"\['ecg_path', 'lvedv', 'lvef', 'cardiomyopathy'\]"):
    build.build(str(tmp_path / "cols.csv"), str(tmp_path / "o2"), CONFIG)


def run_cli(manifest, out, *extra):
  return subprocess.run(
      [sys.executable, "-m", "cardionets_jax.data.build", f"--manifest={manifest}", f"--out={out}",
       "--phenotypes=lvedv:mL,lvef:%", "--labels=cardiomyopathy", "--cmr_frames=8",
       "--cmr_size=16", "--workers=1", *extra], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_summary_and_strict_exit_codes(tmp_path):
  rows = good_rows(tmp_path / "files")
  ok = write_manifest(str(tmp_path / "ok.csv"), rows[:2])
  result = run_cli(ok, tmp_path / "ok", "--strict")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "2 of 2 rows kept" in result.stdout
  bad = write_manifest(str(tmp_path / "bad.csv"), rows[:2] + [dict(subject_id="x", ecg_path="nope.hea")])
  result = run_cli(bad, tmp_path / "bad")
  assert result.returncode == 0 and "missing_file: 1" in result.stdout
  assert run_cli(bad, tmp_path / "bad_strict", "--strict").returncode == 1
  # (Unusable manifests and --out: test_build_inputs.test_cli_exit_codes_for_unusable_inputs.)


def test_align_trains_mae_on_the_data_it_is_given(tmp_path):
  # A new user's first command on their own cohort: align on a fresh workdir trains mae on the
  # same data (the upstream config takes the downstream run's data section), and says so.
  from tests.conftest import run_in_process, stage_test_config
  d = str(tmp_path / "files")
  rows = []
  for i in range(40):
    rows.append(dict(subject_id=f"s{i:02d}",
                     ecg_path=fixtures.write_wfdb(d, f"e{i}", fixtures.ecg_signal(500, seed=i), 500),
                     cmr_path=fixtures.write_nifti(d, f"c{i}", fixtures.cine(20, 32, seed=i)),
                     lvedv=str(100 + i), lvef=str(50 + i % 7), cardiomyopathy=str(i % 2)))
  manifest = write_manifest(str(tmp_path / "m.csv"), rows)
  config = dataclasses.replace(CONFIG, cmr=dataclasses.replace(CONFIG.cmr, frames=8, size=16))
  out = str(tmp_path / "dataset")
  assert build.build(manifest, out, config, workers=1)["kept"] == 40
  workdir = str(tmp_path / "run")
  align_config = stage_test_config("align")
  align_config.data.source = out
  run_in_process(align_config, workdir, "align")   # in-process: a child would only add start-up
  with open(os.path.join(workdir, "logs", "align.log")) as f:
    plan = next(line for line in f if "Stages to run" in line)
  assert "mae (align reads mae and" in plan and "the align run's data" in plan
  from cardionets_jax.train import checkpoint as ckpt_lib
  assert ckpt_lib.saved_config(os.path.join(workdir, "mae", "checkpoints")).data.source == out
  assert not os.path.exists(os.path.join(workdir, "data"))  # no synthetic cohort was simulated
  with open(os.path.join(workdir, "mae", "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4 and set(results["probe_r2"]) == {"lvedv", "lvef"}
  with open(os.path.join(workdir, "align", "results.json")) as f:
    assert json.load(f)["upstream"]["mae"]["data"]["source"] == out
