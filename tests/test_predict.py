"""Screening end to end: every ECG format in, a corrupted record reported, rate invariance."""

import csv
import json
import os

import numpy as np
import pytest

from cardionets_jax import predict
from cardionets_jax.data import readers
from tests import fixtures


def _rows(out):
  with open(out / "summary.csv", newline="") as f:
    return {row["record"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """The same ECG as WFDB at 500 and 1000 Hz, DICOM, npy and csv (in a manifest), plus a
  truncated WFDB record and one with the 6 limb leads only."""
  d = tmp_path_factory.mktemp("ecgs")
  at500, at1000 = fixtures.ecg_signal(500, seed=3), fixtures.ecg_signal(1000, seed=3)
  folder = d / "folder"
  fixtures.write_wfdb(str(folder), "wfdb500", at500, 500)
  fixtures.write_wfdb(str(folder), "wfdb1000", at1000, 1000)
  fixtures.write_dicom_ecg(str(folder), "dicom500", at500, 500)
  npy = fixtures.write_npy(str(d / "arrays"), "array500", at500)
  csv_path = fixtures.write_csv(str(d / "arrays"), "table500", at500)
  manifest = d / "manifest.csv"
  manifest.write_text(f"subject_id,ecg_path,ecg_fs\nnpy-record,{npy},500\ncsv-record,{csv_path},500\n")
  broken = fixtures.write_wfdb(str(d / "bad"), "truncated", at500, 500)
  fixtures.truncate_file(broken + ".dat")
  limb = fixtures.write_wfdb(str(d / "limb"), "limb_only", at500[:6], 500,
                             leads=readers.STANDARD_LEADS[:6])
  return dict(folder=str(folder), manifest=str(manifest), broken=broken, limb=limb)


def test_screening_reads_every_format_and_reports_failures(trained_workdir, records, tmp_path, capsys):
  out = tmp_path / "out"
  status = predict.run(predict.parse_args([
      f"--workdir={trained_workdir}", "--ecg", records["folder"], records["manifest"], records["broken"],
      records["limb"], f"--out={out}", "--batch-size=4"]))
  assert status == 1  # some records failed
  rows = _rows(out)
  assert list(rows) == ["dicom500", "wfdb1000", "wfdb500", "npy-record", "csv-record", "truncated",
                        "limb_only"]
  assert rows["truncated"]["status"] == "failed" and rows["truncated"]["reason"] == "length_mismatch"
  assert rows["limb_only"]["status"] == "failed" and rows["limb_only"]["reason"] == "too_few_leads"
  err = capsys.readouterr().err
  assert "truncated" in err and "limb_only" in err

  ok = [n for n, r in rows.items() if r["status"] == "ok"]
  assert len(ok) == 5
  for name in ok:
    result = json.loads((out / f"{name}.json").read_text())
    assert set(result["phenotypes"]["lvef"]) == {"value", "unit", "reference_range", "outside_reference_range"}
    assert result["phenotypes"]["lvef"]["unit"] == "%"
    assert all(0 <= d["probability"] <= 1 for d in result["diseases"].values())
    assert set(result["models"]) == {"finetune", "align", "vae", "mar"}
    assert result["input"]["predicted_from_present_leads"] is False
    assert readers.read_cmr(str(out / f"{name}.nii.gz")).shape == (8, 16, 16)
    for ext in (".gif", ".png"):
      assert os.path.getsize(out / f"{name}{ext}") > 0
  checks = json.loads((out / "wfdb1000.json").read_text())["input"]
  assert checks["fs_in"] == 1000 and checks["resampled"] is True
  assert json.loads((out / "wfdb500.json").read_text())["input"]["resampled"] is True  # 500 -> 250

  # The same signal at 1000 and 500 Hz: predictions within 1% of each phenotype's reference range
  # width and 0.01 in probability (the preprocessed inputs differ by < 0.02 mV).
  a = json.loads((out / "wfdb500.json").read_text())
  b = json.loads((out / "wfdb1000.json").read_text())
  for name, p in a["phenotypes"].items():
    lo, hi = p["reference_range"]
    assert abs(p["value"] - b["phenotypes"][name]["value"]) <= 0.01 * (hi - lo), name
  for name, d in a["diseases"].items():
    assert abs(d["probability"] - b["diseases"][name]["probability"]) <= 0.01, name


def test_missing_leads_opt_in_and_no_generate(trained_workdir, records, tmp_path):
  out = tmp_path / "out"
  status = predict.run(predict.parse_args([
      f"--workdir={trained_workdir}", "--ecg", records["limb"], f"--out={out}", "--no-generate",
      "--allow-missing-leads"]))
  assert status == 0
  result = json.loads((out / "limb_only.json").read_text())
  assert result["input"]["predicted_from_present_leads"] is True
  assert result["input"]["leads_missing"] == ["V1", "V2", "V3", "V4", "V5", "V6"]
  assert "cine" not in result and not os.path.exists(out / "limb_only.nii.gz")
  assert set(result["models"]) == {"finetune"}
  assert _rows(out)["limb_only"]["message"] == "predicted from the leads present"


def test_inputs_expand_to_unique_names(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  for sub in ("a", "b"):
    fixtures.write_npy(str(tmp_path / sub), "same", np.zeros((12, 5000)))
  found = predict.inputs.find_records([str(tmp_path)], fs=500)
  assert [r.name for r in found] == ["same", "same_2"] and all(r.fs == 500 for r in found)
