"""UK Biobank 20208 cines and the cohort recipes (data/cohorts.py): UKB, MIMIC-IV-ECG and PTB-XL
layouts, from their own files through the recipe and the build to a dataset."""

import csv
import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest

from cardionets_jax.data import build
from cardionets_jax.data import cohorts
from cardionets_jax.data import preprocess
from cardionets_jax.data import records
from cardionets_jax.data.readers import STANDARD_LEADS, RecordError, read_cmr
from tests import archive_writers
from tests import fixtures

VIEWS = ("CINE_segmented_LAX_2Ch", "CINE_segmented_LAX_3Ch", "CINE_segmented_LAX_4Ch")
CMR = dataclasses.replace(preprocess.CmrConfig(), frames=8, size=16)


def _cines(seed, views=VIEWS, frames=50):
  """Each view its own (F, 24, 20) uint16 cine: a bright disc whose radius beats with the
  frame, at a view-specific intensity, so the chosen series and its frame order show."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:24, :20]
  out = {}
  for k, view in enumerate(views):
    radius = 4 + 3 * np.cos(2 * np.pi * np.arange(frames) / frames)[:, None, None]
    disc = (yy - 12) ** 2 + (xx - 10) ** 2 < radius ** 2
    out[view] = (100 * (k + 1) + 800 * disc + rng.integers(0, 20, disc.shape)).astype(np.uint16)
  return out


def test_ukb_zip_and_its_unpacked_folder_give_the_four_chamber_cine_in_trigger_order(tmp_path):
  cines = _cines(0)
  path = archive_writers.write_ukb_lax_zip(str(tmp_path / "1000001_20208_2_0.zip"), cines)
  np.testing.assert_array_equal(read_cmr(path), cines[VIEWS[2]])
  folder = tmp_path / "unpacked"
  with zipfile.ZipFile(path) as z:
    z.extractall(folder)
  np.testing.assert_array_equal(read_cmr(str(folder)), cines[VIEWS[2]])


@pytest.mark.parametrize("views,found", [(VIEWS[:2], "no 4-chamber"),
                                         (VIEWS + ("CINE_4Ch_retake",), "2 4-chamber")])
def test_ukb_zip_without_or_with_two_four_chamber_series_names_the_series(tmp_path, views, found):
  path = archive_writers.write_ukb_lax_zip(str(tmp_path / "x.zip"), _cines(1, views, frames=5))
  with pytest.raises(RecordError) as e:
    read_cmr(path)
  assert e.value.reason == "cmr_series" and found in str(e.value)
  assert all(f"'{v}'" in str(e.value) for v in views), str(e.value)


def _ukb_tree(root):
  """Six subjects: 1-3 and 5 complete; 4's zip has no 4-chamber series; 6 has an ECG only; 7 has a
  phenotype row only; plus an instance-3 ECG, an unparseable name and a repeated phenotype row."""
  ecg_dir, cmr_dir = root / "20205", root / "20208"
  ecg_dir.mkdir(), cmr_dir.mkdir()
  rng = np.random.default_rng(0)
  for eid in range(1000001, 1000007):
    adc = archive_writers.random_adc(rng)
    archive_writers.write_cardiosoft(str(ecg_dir / f"{eid}_20205_2_0.xml"), adc, STANDARD_LEADS,
                                     500, 5.0)
  archive_writers.write_cardiosoft(str(ecg_dir / "1000001_20205_3_0.xml"), adc, STANDARD_LEADS,
                                   500, 5.0)
  (ecg_dir / "notes.txt").write_text("not an ECG")
  for eid in (1000001, 1000002, 1000003, 1000004, 1000005):
    views = VIEWS[:2] if eid == 1000004 else VIEWS
    archive_writers.write_ukb_lax_zip(str(cmr_dir / f"{eid}_20208_2_0.zip"),
                                      _cines(eid, views, frames=12))
  rows = [("eid", "lvedv", "lvef")] + [(str(e), 120 + e % 10, 55) for e in range(1000001, 1000006)]
  rows += [("1000007", 130, 60), ("1000002", 999, 1)]
  with open(root / "pheno.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return ecg_dir, cmr_dir, root / "pheno.csv"


def _build(manifest, out, **config):
  config = build.BuildConfig(cmr=CMR, **config)
  return build.build(str(manifest), str(out), config, workers=1)


def test_ukb_recipe_and_build(tmp_path, capsys):
  ecg_dir, cmr_dir, pheno = _ukb_tree(tmp_path)
  manifest = tmp_path / "ukb.csv"
  assert cohorts.main(["ukb", f"--ecg_dir={ecg_dir}", f"--cmr_dir={cmr_dir}",
                       f"--phenotypes={pheno}", f"--out={manifest}"]) == 0
  printed = capsys.readouterr().out
  assert "8 20205 files, 5 20208 files, 7 phenotype rows" in printed, printed
  recipe = json.load(open(str(manifest) + ".recipe.json"))
  assert recipe["kept_with_missing"]["a 20208 cine"]["subjects"] == ["1000006"]
  assert recipe["kept_with_missing"]["a phenotype row"]["subjects"] == ["1000006"]
  report = _build(manifest, tmp_path / "data", phenotypes=(("lvedv", "mL"), ("lvef", "%")))
  by_subject = {}
  for d in report["details"]:
    by_subject.setdefault(d["subject_id"], []).append(d)
  assert report["rows"] == 10   # 6 subjects with an ECG, 1 without, 3 files or rows left out
  assert report["rejected_by_reason"] == {"cmr_series": 1, "no_ecg": 1, "other_instance": 1,
                                          "unrecognised_name": 1, "duplicate_phenotype_row": 1}
  assert [d["reason"] for d in by_subject["1000004"]] == ["cmr_series"]
  assert "'CINE_segmented_LAX_3Ch'" in by_subject["1000004"][0]["message"]
  kept = {d["subject_id"] for d in report["details"] if d["status"] == "kept"}
  assert kept == {"1000001", "1000002", "1000003", "1000005", "1000006"}
  stored = {}
  for split in records.DatasetMeta.load(str(tmp_path / "data")).splits:
    for ex in records.data_source(str(tmp_path / "data"), split):
      stored[ex["subject_id"].decode() if isinstance(ex["subject_id"], bytes)
             else str(ex["subject_id"])] = ex
  for eid in ("1000001", "1000003"):
    want = preprocess.preprocess_cmr(_cines(int(eid), frames=12)[VIEWS[2]].astype(np.float32), CMR)
    np.testing.assert_array_equal(stored[eid]["cmr"], want)
  assert not stored["1000006"]["has_cmr"] and np.isnan(stored["1000006"]["phenotypes"]).all()
  np.testing.assert_allclose(stored["1000002"]["phenotypes"], [122, 55])   # the first row's


def _write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header] + rows)


def _ecg(seed):
  return archive_writers.random_adc(np.random.default_rng(seed)) * 0.005   # mV


def test_mimic_iv_ecg_recipe_keeps_a_patients_studies_in_one_split(tmp_path, capsys):
  root = tmp_path / "mimic"
  studies = [("10000032", "40689238"), ("10000032", "41000000"), ("10000117", "42000000"),
             ("10000560", "43000000")]
  rows = []
  for k, (subject, study) in enumerate(studies):
    rel = f"files/p{subject[:4]}/p{subject}/s{study}"
    fixtures.write_wfdb(str(root / rel), study, _ecg(k), 500)
    rows.append([subject, study, study, "2180-07-23 08:44:00", f"{rel}/{study}"])
  _write_csv(str(root / "record_list.csv"),
             ["subject_id", "study_id", "file_name", "ecg_time", "path"], rows)
  _write_csv(str(root / "machine_measurements.csv"), ["subject_id", "study_id", "rr_interval"],
             [[s, t, 800 + i] for i, (s, t) in enumerate(studies)])
  _write_csv(str(tmp_path / "labels.csv"), ["study_id", "subject_id", "afib"],
             [[t, s, i % 2] for i, (s, t) in enumerate(studies[:3])])
  manifest = tmp_path / "mimic.csv"
  assert cohorts.main(["mimic_iv_ecg", f"--root={root}", f"--labels={tmp_path / 'labels.csv'}",
                       f"--out={manifest}"]) == 0
  assert "kept without a label row (study_id): 1 (43000000)" in capsys.readouterr().out
  report = _build(manifest, tmp_path / "data", labels=("afib",),
                  phenotypes=(("rr_interval", "ms"),))
  assert report["kept"] == 4
  split = {d["subject_id"]: d["split"] for d in report["details"]}
  assert split["40689238"] == split["41000000"]
  assert split["40689238"] == records.split_of(b"10000032", 0.1, 0.15)


def test_ptbxl_recipe_folds_become_the_splits(tmp_path, capsys):
  root = tmp_path / "ptbxl"
  _write_csv(str(root / "scp_statements.csv"), ["", "description", "diagnostic", "diagnostic_class"],
             [["NORM", "normal ECG", "1", "NORM"], ["IMI", "inferior MI", "1", "MI"],
              ["SR", "sinus rhythm", "", ""]])
  folds = {1: 3, 2: 9, 3: 10, 4: 1, 5: 10}
  rows = []
  for ecg_id, fold in folds.items():
    stem = f"{ecg_id:05d}"
    for rate, suffix in ((100, "lr"), (500, "hr")):
      fixtures.write_wfdb(str(root / f"records{rate}" / "00000"), f"{stem}_{suffix}",
                          _ecg(ecg_id)[:, :: 5 if rate == 100 else 1], rate)
    codes = "{'NORM': 100.0, 'SR': 0.0}" if ecg_id % 2 else "{'IMI': 50.0, 'SR': 0.0}"
    rows.append([ecg_id, 15700.0 + ecg_id, codes, fold, f"records100/00000/{stem}_lr",
                 f"records500/00000/{stem}_hr"])
  rows.append([6, 15706.0, "not a dict", 2, "records100/00000/00006_lr", "records500/00000/00006_hr"])
  _write_csv(str(root / "ptbxl_database.csv"), ["ecg_id", "patient_id", "scp_codes", "strat_fold",
                                                "filename_lr", "filename_hr"], rows)
  manifest = tmp_path / "ptbxl.csv"
  assert cohorts.main(["ptbxl", f"--root={root}", f"--out={manifest}"]) == 0
  assert "labels MI,NORM" in capsys.readouterr().out
  report = _build(manifest, tmp_path / "data", labels=("MI", "NORM"))
  got = {d["subject_id"]: d.get("split") for d in report["details"] if d["status"] == "kept"}
  assert got == {str(e): cohorts.PTBXL_FOLDS[f] for e, f in folds.items()}
  assert report["rejected_by_reason"] == {"bad_ptbxl_row": 1}
  stored = {str(ex["subject_id"].decode()): ex for s in ("train", "val", "test")
            for ex in records.data_source(str(tmp_path / "data"), s)}
  np.testing.assert_array_equal(stored["1"]["labels"], [0, 1])
  np.testing.assert_array_equal(stored["2"]["labels"], [1, 0])
