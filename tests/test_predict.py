"""Screening end to end: every ECG format in, a corrupted record reported, rate invariance."""

import codecs
import csv
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cardionets_jax import predict
from cardionets_jax.convert import __main__ as convert
from cardionets_jax.data import readers
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import checkpoint as ckpt_lib
from tests import fixtures
from tests.conftest import one_device_mesh, run_in_process, stage_test_config


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

  # The same signal at 1000 and 500 Hz: predictions within 2% of each phenotype's reference range
  # width and 0.01 in probability (the preprocessed inputs differ by < 0.02 mV; ST-MEM's patch
  # LayerNorm divides each patch by its own std, which magnifies them in near-flat patches).
  a = json.loads((out / "wfdb500.json").read_text())
  b = json.loads((out / "wfdb1000.json").read_text())
  for name, p in a["phenotypes"].items():
    lo, hi = p["reference_range"]
    assert abs(p["value"] - b["phenotypes"][name]["value"]) <= 0.02 * (hi - lo), name
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


def _files_under(root):
  return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def test_awkward_inputs_each_get_a_row_and_outputs_stay_in_their_folder(trained_workdir, tmp_path):
  d = tmp_path / "inputs"
  x = fixtures.ecg_signal(500, seed=4)
  a = fixtures.write_npy(str(d / "a"), "rec", x)
  b = fixtures.write_npy(str(d / "b"), "rec", x * 1.1)
  uv = fixtures.write_npy(str(d), "microvolts", x * 1000.0)
  long_id = "L" * 300
  lines = ["subject_id,ecg_path,ecg_fs", f"x,{a},500", f"x,{b},500", f"x_2,{a},500",
           f"../../x,{a},500", f"/abs/x,{a},500", f"site/123,{a},500", f"{long_id},{a},500",
           f"bad_rate,{a},abc", "short_row", f"microvolts,{uv},500", "no_path,,500"]
  manifest = d / "m.csv"
  manifest.write_bytes(codecs.BOM_UTF8 + ("\n".join(lines) + "\n").encode())
  folder = d / "folder"
  fixtures.write_wfdb(str(folder), "kept", x, 500)
  fixtures.write_wfdb(str(folder), "dat_only", x, 500)
  os.remove(folder / "dat_only.hea")
  (folder / "export.xml").write_text("<?xml version='1.0'?><RestingECG/>")
  dicom = fixtures.write_dicom_ecg(str(folder), "noext", x, 500)
  os.rename(dicom, folder / "NOEXT")
  before = _files_under(tmp_path)
  out = tmp_path / "out"
  # (No cine: its files take the same names as the .json, and the test above writes them.)
  status = predict.run(predict.parse_args([f"--workdir={trained_workdir}", "--ecg", str(manifest),
                                           str(folder), f"--out={out}", "--batch-size=4",
                                           "--no-generate"]))
  assert status == 1
  rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
  by_id = {}
  for row in rows:
    by_id.setdefault(row["id"], []).append(row)
  assert len(rows) == 11 + 4    # every manifest row and every file of the folder (.hea + .dat: one)
  names = [r["record"] for r in rows]
  assert len(set(n.casefold() for n in names)) == len(names)        # x, x, x_2: three outputs
  for sid in ("x", "x_2", "../../x", "/abs/x", "site/123", long_id, "kept", "NOEXT"):
    assert all(r["status"] == "ok" for r in by_id[sid]), (sid, by_id[sid])
  assert len(by_id["x"]) == 2 and by_id["x"][0]["record"] != by_id["x"][1]["record"]
  first, second = (json.loads((out / f"{r['record']}.json").read_text()) for r in by_id["x"])
  assert first["path"] != second["path"]                              # neither overwrote the other
  assert len(by_id[long_id][0]["record"]) <= 110
  failed = {r["id"]: r["reason"] for r in rows if r["status"] == "failed"}
  assert failed == {"bad_rate": "sampling_rate", "short_row": "field_count",
                    "microvolts": "amplitude_units", "no_path": "missing_file",
                    "dat_only.dat": "missing_file", "export": "unreadable"}
  created = _files_under(tmp_path) - before
  assert created and all(os.path.commonpath([p, str(out)]) == str(out) for p in created)
  for r in rows:
    if r["status"] == "ok":
      for ext in (".json", ".png"):
        assert (out / f"{r['record']}{ext}").is_file()


def test_argument_errors_stop_before_any_work(trained_workdir, tmp_path):
  ecg = fixtures.write_npy(str(tmp_path), "r", fixtures.ecg_signal(500))
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "empty_workdir").mkdir()
  cases = [([f"--workdir={trained_workdir}", "--batch-size=0"], "--batch-size must be at least 1"),
           ([f"--workdir={trained_workdir}", "--fs=-5"], "--fs must be a positive"),
           ([f"--workdir={tmp_path / 'empty_workdir'}"], "No finished finetune stage"),
           ([f"--workdir={tmp_path / 'nowhere'}"], "does not exist"),
           ([f"--workdir={trained_workdir}", f"--out={tmp_path / 'a_file'}"], "is a file")]
  for extra, message in cases:
    args = ["--ecg", ecg, f"--out={tmp_path / 'out'}"] + extra
    with pytest.raises(SystemExit, match=message):
      predict.run(predict.parse_args(args))
  assert not (tmp_path / "out").exists()


def test_mar_sample_names_stay_in_the_samples_folder(tmp_path):
  from cardionets_jax.evaluators import generation
  ids = [b"../../x", b"/abs/x", b"site/123", ("L" * 300).encode(), b"site_123", b"x"]
  cine = np.zeros((len(ids), 4, 8, 8), np.float32)
  generated = {k: cine for k in generation.CONDITIONS}
  out = tmp_path / "run" / "mar" / "samples"
  generation.write_samples(str(out), ids, generated, cine, num=len(ids), num_frames=2)
  files = _files_under(tmp_path)
  assert len(files) == 3 * len(ids)
  assert all(os.path.dirname(p) == str(out) for p in files)


def test_screening_with_the_release_classifier_converted(records, tmp_path):
  # The MIMIC cardiomyopathy classifier's layout (tests/golden, written by PyTorch), converted,
  # screens with the release's preprocessing order: one disease, no phenotypes, and why.
  converted = tmp_path / "release"
  pth = os.path.join(os.path.dirname(__file__), "golden", "release_cm.pth")
  assert convert.main(["--source=release_cm", f"--pth={pth}", f"--out={converted}",
                       "--num-heads=2"]) == 0
  out = tmp_path / "out"
  assert predict.run(predict.parse_args([f"--workdir={converted}", "--ecg", records["folder"],
                                         f"--out={out}", "--no-generate", "--batch-size=4"])) == 0
  result = json.loads((out / "wfdb500.json").read_text())
  assert list(result["diseases"]) == ["cardiomyopathy"]
  assert result["diseases"]["cardiomyopathy"]["threshold"] == 0.5
  assert 0.0 < result["diseases"]["cardiomyopathy"]["probability"] < 1.0
  assert result["phenotypes"] == {}
  assert "no phenotypes" in result["notes"][0] and "no phenotype head" in result["notes"][0]
  source = result["models"]["finetune"]
  assert source["checkpoint"].startswith(str(converted))
  assert source["converted_from"]["file"] == "release_cm.pth"
  assert result["input"]["preprocessing"] == "release" and result["input"]["crop_starts"] == [0, 125, 250]
  # The same ECG at 1000 Hz: the release's order gives nearly the same probability.
  other = json.loads((out / "wfdb1000.json").read_text())["diseases"]["cardiomyopathy"]["probability"]
  assert abs(other - result["diseases"]["cardiomyopathy"]["probability"]) < 0.02
  rows = _rows(out)
  assert rows["wfdb500"]["p_cardiomyopathy"] and not any(k.startswith("lvef") for k in rows["wfdb500"])


def test_a_converted_generator_tokenizes_evaluates_and_screens(trained_workdir, records, tmp_path):
  # A VAE and a MAR written as `convert` writes the release's files (params-only checkpoints at
  # step 0), here holding the weights `trained_workdir` trained: tokenize encodes with that VAE,
  # mar (train.num_steps=0) evaluates the MAR as it is, screening generates with both.
  converted = tmp_path / "release"
  mar_ref = str(trained_workdir / "mar" / "checkpoints")
  _, vae_params, _, vae_config = vae_stage.restore_vae(str(trained_workdir / "vae" / "checkpoints"),
                                                       one_device_mesh(stage_test_config("vae")))
  generator = ocp.StandardCheckpointer().restore(
      str(trained_workdir / "mar" / "artifacts" / "generator"))
  for source, stage, config, params in (
      ("release_vae", "vae", vae_config, {"vae": vae_params}),
      ("release_mar", "mar", ckpt_lib.saved_config(mar_ref), generator["params"])):
    config.converted_from = dict(source=source, file=f"{stage}.pth", sha256="0")
    convert.write_stage(source, stage, config, jax.device_get(params), str(converted),
                        dict(pth=f"{stage}.pth", sha256="0", mapped=[], unused=[]))
  os.symlink(trained_workdir / "data", converted / "data")   # the same cohort
  tokenize = stage_test_config("tokenize")
  tokenize.init.align = str(trained_workdir / "align" / "checkpoints")
  run_in_process(tokenize, converted)
  mar = stage_test_config("mar", num_steps=0)
  mar.init.mae = str(trained_workdir / "mae" / "checkpoints")
  wrong = mar.copy_and_resolve_references()
  wrong.model.width = 64
  with pytest.raises(ValueError, match=r"converted from mar\.pth.*model\.width: 32 -> 64"):
    run_in_process(wrong, converted)
  results = run_in_process(mar, converted)
  assert results["step"] == 0 and results["sources"]["vae"] == f"{converted}/vae/checkpoints/0"
  with open(trained_workdir / "mar" / "results.json") as f:
    trained = json.load(f)["heldout_test"]
  # The same weights, tokens and sampling keys as the run that trained them: the same cines.
  for name in ("own_ecg", "shuffled_ecg", "ecg_ridge", "vae_reconstruction"):
    np.testing.assert_allclose(results["heldout_test"][name]["ssim"]["value"],
                               trained[name]["ssim"]["value"], rtol=1e-5, err_msg=name)
  out = tmp_path / "out"
  assert predict.run(predict.parse_args([
      f"--workdir={trained_workdir}", f"--generator-workdir={converted}", "--ecg",
      records["folder"], f"--out={out}", "--batch-size=4"])) == 0
  result = json.loads((out / "wfdb500.json").read_text())
  assert result["models"]["mar"]["checkpoint"].startswith(str(converted))
  assert result["models"]["vae"]["checkpoint"] == f"{converted}/vae/checkpoints/0"
  assert readers.read_cmr(str(out / "wfdb500.nii.gz")).shape == (8, 16, 16)
