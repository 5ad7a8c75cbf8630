"""The build against messy real exports: each bad manifest or row has its outcome and reason code,
nothing crashes, every row of every manifest is in report.json under its file line number."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cardionets_jax.data import build
from cardionets_jax.data import records
from tests import fixtures
from tests.test_build import CONFIG, REPO

HEADER = "subject_id,ecg_path,ecg_fs,lvedv,lvef,cardiomyopathy,note"
RANGED = build.BuildConfig(phenotypes=(("lvedv", "mL", 20.0, 500.0), ("lvef", "%")),
                           labels=("cardiomyopathy",), cmr=CONFIG.cmr)


def ecg_files(d):
  """A good record in several forms, and the bad ones that need files."""
  d = str(d)
  x = fixtures.ecg_signal(500, seed=1)
  files = dict(good=fixtures.write_wfdb(d, "good", x, 500),
               npy=fixtures.write_npy(d, "npy", x),
               microvolts=fixtures.write_npy(d, "microvolts", x * 1000.0),
               adc_counts=fixtures.write_npy(d, "adc", np.round(x * 200.0) + 2048.0),
               at2048=fixtures.write_wfdb(d, "at2048", fixtures.ecg_signal(2048, seed=2), 2048))
  clipped = x.copy()
  clipped[1, 1000:1100] = clipped[1].max() + 0.4        # 200 ms held at the amplifier's limit
  files["saturated"] = fixtures.write_npy(d, "saturated", clipped)
  for name, rate in (("fs_negative", "-500"), ("fs_zero", "0")):
    path = fixtures.write_wfdb(d, name, x, 500)
    lines = open(path + ".hea").read().splitlines()
    fields = lines[0].split()
    fields[2] = rate
    with open(path + ".hea", "w") as f:
      f.write("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    files[name] = path
  dat_only = fixtures.write_wfdb(d, "dat_only", x, 500)
  os.remove(dat_only + ".hea")
  files["dat_only"] = dat_only + ".dat"
  os.makedirs(os.path.join(d, "a_folder"), exist_ok=True)
  files["folder"] = os.path.join(d, "a_folder")
  return files


# (subject id, manifest line after the header, expected status, reason or flag code)
def messy_rows(f):
  """CSV text lines (after the header) and what each must give."""
  good = f["good"]
  lines = [
      (f"ok1,{good},,150,60,0,", "ok1", "kept", None),
      (f"shifted,{good},,1,234,60,0,", "shifted", "rejected", "field_count"),   # unquoted 1,234
      (f"short,{good},,150", "short", "rejected", "field_count"),
      (f"huge,{good},,1e30,60,0,", "huge", "kept", "phenotype_range"),
      (f"negative,{good},,-5,60,0,", "negative", "kept", "phenotype_range"),
      (f"ef150,{good},,150,150,0,", "ef150", "kept", "phenotype_range"),
      (f"declared,{good},,600,60,0,", "declared", "kept", "phenotype_range"),   # lvedv 20:500
      (f"fs_abc,{f['npy']},abc,150,60,0,", "fs_abc", "rejected", "sampling_rate"),
      (f"fs_minus,{f['npy']},-500,150,60,0,", "fs_minus", "rejected", "sampling_rate"),
      (f"fs_zero_cell,{f['npy']},0,150,60,0,", "fs_zero_cell", "rejected", "sampling_rate"),
      (f"fs_inf,{f['npy']},inf,150,60,0,", "fs_inf", "rejected", "sampling_rate"),
      (f"hea_minus,{f['fs_negative']},,150,60,0,", "hea_minus", "rejected", "sampling_rate"),
      (f"hea_zero,{f['fs_zero']},,150,60,0,", "hea_zero", "rejected", "sampling_rate"),
      (f"uv,{f['microvolts']},500,150,60,0,", "uv", "rejected", "amplitude_units"),
      (f"adc,{f['adc_counts']},500,150,60,0,", "adc", "rejected", "amplitude_units"),
      (f"clipped,{f['saturated']},500,150,60,0,", "clipped", "kept", "saturated"),
      (f"label_yes,{good},,150,60,yes,", "label_yes", "rejected", "bad_label"),
      (f"pheno_na,{good},,n/a,60,0,", "pheno_na", "rejected", "bad_phenotype"),
      (f"pheno_nan,{good},,nan,60,0,", "pheno_nan", "rejected", "bad_phenotype"),
      ("no_path,,,150,60,0,", "no_path", "rejected", "missing_file"),
      (f"   ,{good},,150,60,0,", "", "rejected", "missing_subject_id"),
      (f" ok1 ,{good},,150,60,0,", "ok1", "rejected", "duplicate_subject"),
      (f"rate2048,{f['at2048']},,150,60,0,", "rate2048", "kept", None),
      (f'quoted_newline,{good},,150,60,0,"a note\nover two lines"', "quoted_newline", "kept", None),
      ("", None, None, None),                                                    # a blank line
      (f"after_blank,{good},,150,60,1,", "after_blank", "kept", None),
      (f"folder,{f['folder']},,150,60,0,", "folder", "rejected", "unsupported_format"),
      (f"dat_only,{f['dat_only']},,150,60,0,", "dat_only", "rejected", "missing_file"),
      ("absent,/nonexistent/ecg.hea,,150,60,0,", "absent", "rejected", "missing_file"),
  ]
  return lines


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
  root = tmp_path_factory.mktemp("messy")
  f = ecg_files(root / "files")
  lines = messy_rows(f)
  # Enough good rows that every split keeps some, whatever the hash of the ids.
  lines += [(f"fill{i},{f['good']},,{100 + i},{50 + i % 9},{i % 2},", f"fill{i}", "kept", None)
            for i in range(24)]
  text = HEADER + "\n" + "\n".join(line for line, *_ in lines) + "\n"
  (root / "m.csv").write_text(text)
  report = build.build(str(root / "m.csv"), str(root / "out"), RANGED, workers=1)
  # The file line each case starts on (the header is line 1; a quoted newline spans two).
  expected, line = {}, 2
  for text_line, sid, status, code in lines:
    if sid is not None:
      expected.setdefault(sid, []).append((line, status, code))
    line += text_line.count("\n") + 1
  return report, expected, root


def test_every_row_has_its_outcome_code_and_file_line(messy):
  report, expected, _ = messy
  assert report["rows"] == sum(len(v) for v in expected.values()) == report["kept"] + report["rejected"]
  got = {}
  for d in report["details"]:
    got.setdefault(d["subject_id"], []).append(d)
  checked = 0
  for sid, cases in expected.items():
    for (line, status, code), d in zip(cases, got[sid]):
      assert d["row"] == line and d["status"] == status, (sid, d)
      if status == "rejected":
        assert d["reason"] == code and d["message"].startswith(f"row {line}: "), (sid, d)
      elif code is not None:
        assert code in [flag["code"] for flag in d["checks"]["flags"]], (sid, d)
      else:
        assert d["checks"]["flags"] == [], (sid, d)
      checked += 1
  assert checked == report["rows"]
  assert report["flagged_by_code"] == {"phenotype_range": 4, "saturated": 1}
  assert report["phenotype_ranges"] == {"lvedv": {"unit": "mL", "range": [20.0, 500.0]},
                                        "lvef": {"unit": "%", "range": [0.0, 100.0]}}


def test_implausible_phenotypes_are_missing_and_do_not_set_the_scale(messy):
  report, _, root = messy
  stored = {}
  meta = records.DatasetMeta.load(str(root / "out"))
  for split in meta.splits:
    source = records.data_source(str(root / "out"), split)
    for i in range(len(source)):
      stored[source[i]["subject_id"].decode()] = source[i]["phenotypes"]
  for sid in ("huge", "negative", "declared"):
    assert np.isnan(stored[sid][0]) and stored[sid][1] == 60.0, sid
  assert np.isnan(stored["ef150"][1])
  # Train statistics are those of the plausible values (1e30 would make the std ~1e29).
  lvedv = [v[0] for v in stored.values() if not np.isnan(v[0])]
  assert meta.phenotype_std[0] < 50 and abs(meta.phenotype_mean[0] - np.mean(lvedv)) < 30
  detail = next(d for d in report["details"] if d["subject_id"] == "rate2048")
  assert detail["checks"]["resample_ratio"] == "125/1024"
  assert detail["checks"]["resample_rate_error_ppm"] == 0.0


def test_phenotype_statistics_are_robust_to_an_outlier_left_in():
  values = np.r_[np.random.default_rng(0).normal(150, 30, 200), 1e6][:, None]
  mean, std = records.phenotype_stats(values)
  assert abs(mean[0] - 150) < 6 and abs(std[0] - 30) < 4
  assert records.phenotype_stats(np.zeros((5, 0)))[0].shape == (0,)        # ECG-only: no column
  assert records.phenotype_stats([], 2)[1].tolist() == [1.0, 1.0]


def write(path, text, encoding="utf-8"):
  with open(path, "wb") as f:
    f.write(text.encode(encoding) if isinstance(text, str) else text)
  return str(path)


def good_manifest(files, n=12, bad=()):
  rows = [f"s{i},{files['good']},,{100 + i},{55 + i % 5},{i % 2}," for i in range(n)]
  rows += [f"bad{i},/nonexistent/{i}.hea,,100,50,0," for i in bad]
  return HEADER + "\n" + "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return ecg_files(tmp_path_factory.mktemp("manifest_files"))


@pytest.mark.parametrize("case,expected", [
    ("directory", "is a directory"),
    ("missing", "does not exist"),
    ("empty", "empty (no header line)"),
    ("header_only", "has no rows"),
    ("duplicate_columns", "duplicate column names: 'lvef' (columns 5, 6)"),
    ("missing_column", "lacks the column(s) ['lvef']"),
    ("binary", "NUL bytes"),
])
def test_unusable_manifests_are_clear_errors_with_a_report(tmp_path, files, case, expected):
  path = tmp_path / "m.csv"
  if case == "directory":
    path.mkdir()
  elif case == "empty":
    write(path, "")
  elif case == "header_only":
    write(path, HEADER + "\n")
  elif case == "duplicate_columns":
    write(path, HEADER.replace(",cardiomyopathy", ",lvef,cardiomyopathy") + "\n")
  elif case == "missing_column":
    write(path, HEADER.replace(",lvef", "") + "\ns1,x,,1,0,\n")
  elif case == "binary":
    write(path, b"subject_id,ecg_path\n\x00\x01\x02")
  with pytest.raises(build.ManifestError, match=expected.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    build.build(str(path), str(tmp_path / "out"), CONFIG, workers=1)
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert expected in report["error"] and report["rows"] == 0 and report["dataset"] is None


@pytest.mark.parametrize("encoding,warned", [("utf-8-sig", False), ("utf-16", False),
                                              ("latin-1", True)])
def test_bom_utf16_and_latin1_manifests_build(tmp_path, files, encoding, warned):
  text = good_manifest(files).replace("s0,", "sé0,")
  report = build.build(write(tmp_path / "m.csv", text, encoding), str(tmp_path / "out"), CONFIG,
                       workers=1)
  assert report["kept"] == 12 and "sé0" in [d["subject_id"] for d in report["details"]]
  assert bool(report["warnings"]) == warned and report["encoding"] == encoding


def test_an_ecg_only_archive_without_phenotype_or_label_columns_builds(tmp_path, files):
  text = "subject_id,ecg_path\n" + "\n".join(f"s{i},{files['good']}" for i in range(10)) + "\n"
  report = build.build(write(tmp_path / "m.csv", text), str(tmp_path / "out"),
                       build.BuildConfig(cmr=CONFIG.cmr), workers=1)
  meta = records.DatasetMeta.load(str(tmp_path / "out"))
  assert report["kept"] == 10 and meta.phenotype_names == [] and meta.phenotype_mean == []


def test_a_split_whose_every_row_is_rejected_is_left_out_and_reported(tmp_path, files):
  # Ids that hash to test (at the default fractions) all point at missing files.
  split = lambda sid: records.split_of(sid.encode(), 0.1, 0.15)
  test_ids = [f"t{i}" for i in range(200) if split(f"t{i}") == "test"][:4]
  rows = [f"{sid},{files['good']},,100,50,0," for sid in
          [f"s{i}" for i in range(100) if split(f"s{i}") != "test"][:12]]
  rows += [f"{sid},/nonexistent/{sid}.hea,,100,50,0," for sid in test_ids]
  report = build.build(write(tmp_path / "m.csv", HEADER + "\n" + "\n".join(rows) + "\n"),
                       str(tmp_path / "out"), CONFIG, workers=1)
  assert report["rows"] == 12 + len(test_ids) and report["rejected_by_reason"] == {"missing_file": 4}
  assert "test" not in records.DatasetMeta.load(str(tmp_path / "out")).splits


def test_no_training_subject_fails_with_the_report_of_every_row(tmp_path, files):
  text = good_manifest(files, n=0, bad=range(6))
  with pytest.raises(build.BuildFailed, match="no row of the train split"):
    build.build(write(tmp_path / "m.csv", text), str(tmp_path / "out"), CONFIG, workers=1)
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["rows"] == 6 and report["rejected_by_reason"] == {"missing_file": 6}


def test_rebuild_is_a_transaction(tmp_path, files):
  out = tmp_path / "out"
  broken = write(tmp_path / "broken.csv", good_manifest(files, n=12, bad=range(3)))
  assert build.build(broken, str(out), CONFIG, workers=1)["kept"] == 12
  # The fixed manifest, rebuilt into the same folder, gives the fixed dataset (not the old one).
  fixed = write(tmp_path / "fixed.csv", good_manifest(files, n=16))
  report = build.build(fixed, str(out), CONFIG, workers=1)
  meta = records.DatasetMeta.load(str(out))
  assert report["kept"] == 16 and sum(s["num_examples"] for s in meta.splits.values()) == 16
  assert sorted(os.listdir(out)) == ["cardionets_dataset", "report.json"]
  # A failed rebuild leaves that dataset as it was, its report beside it.
  with pytest.raises(build.ManifestError):
    build.build(write(tmp_path / "empty.csv", ""), str(out), CONFIG, workers=1)
  assert sum(s["num_examples"] for s in records.DatasetMeta.load(str(out)).splits.values()) == 16
  assert json.loads((out / "report.json").read_text())["kept"] == 16
  assert "empty" in json.loads((out / "report.failed.json").read_text())["error"]
  # --out as a file, or a folder holding something else, is refused (unless --overwrite).
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(build.OutputError, match="is a file"):
    build.build(fixed, str(tmp_path / "a_file"), CONFIG, workers=1)
  (tmp_path / "theirs").mkdir()
  (tmp_path / "theirs" / "notes.txt").write_text("keep me")
  with pytest.raises(build.OutputError, match="pass --overwrite"):
    build.build(fixed, str(tmp_path / "theirs"), CONFIG, workers=1)
  assert (tmp_path / "theirs" / "notes.txt").exists()
  assert build.build(fixed, str(tmp_path / "theirs"), CONFIG, workers=1, overwrite=True)["kept"] == 16


def test_cli_exit_codes_for_unusable_inputs(tmp_path, files):
  run = lambda manifest, out: subprocess.run(
      [sys.executable, "-m", "cardionets_jax.data.build", f"--manifest={manifest}", f"--out={out}",
       "--phenotypes=lvedv:mL:20:500,lvef:%", "--labels=cardiomyopathy", "--cmr_frames=8",
       "--cmr_size=16", "--workers=1"], cwd=REPO, capture_output=True, text=True, timeout=300)
  (tmp_path / "a_file").write_text("x")
  result = run(write(tmp_path / "m.csv", good_manifest(files)), tmp_path / "a_file")
  assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
  result = run(write(tmp_path / "bad.csv", good_manifest(files, n=0, bad=range(3))), tmp_path / "o2")
  assert result.returncode == 1 and "no row of the train split" in result.stderr
  assert "3 rejected" in result.stdout and "Traceback" not in result.stderr
