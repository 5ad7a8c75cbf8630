"""Tests of cardionets_jax.data.readers: every format round-trips, every corruption is named."""

import os
import pickle
import shutil

import numpy as np
import pytest

from cardionets_jax.data import preprocess, readers
from cardionets_jax.data.readers import (STANDARD_LEADS, RecordError, canonical_lead, read_cmr,
                                         read_ecg)
from tests import fixtures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # pydicom on deliberately bad files

WFDB_TOL = 0.5e-3 + 1e-9          # 1 uV quantisation step: half a step
ECG_BAD = (
    "truncated_dat", "header_longer", "header_shorter", "missing_dat", "missing_hea",
    "garbled_header", "missing_record",
    "missing_npy", "unknown_lead", "duplicate_lead", "six_limb_leads", "nan_run_wfdb",
    "nan_run_npy", "flat_lead", "fs_too_low", "too_short", "npy_without_fs", "object_npy",
    "npy_bad_shape", "csv_unknown_column", "garbage_dicom", "dicom_truncated_waveform",
    "dicom_truncated_file", "dicom_image_not_ecg", "dicom_unknown_lead", "unsupported",
)
CMR_BAD = (
    "nifti_multislice", "nifti_2d", "three_frames", "truncated_nifti", "missing_nifti",
    "series_mixed_uid", "series_mixed_shape", "series_no_order", "empty_series", "npy_2d",
    "object_npy", "object_npz", "npz_ambiguous", "nan_pixel", "single_frame_dicom", "unsupported",
)


@pytest.fixture(scope="module")
def bad_ecgs(tmp_path_factory):
  return fixtures.bad_ecg_cases(str(tmp_path_factory.mktemp("bad_ecg")))


@pytest.fixture(scope="module")
def bad_cmrs(tmp_path_factory):
  return fixtures.bad_cmr_cases(str(tmp_path_factory.mktemp("bad_cmr")))


# ------------------------------------------------------------------------------------------------
# Lead names
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,lead", [
    ("I", "I"), ("i", "I"), ("D1", "I"), ("DI", "I"), ("Lead I", "I"), ("LEAD_I", "I"),
    ("II", "II"), ("D2", "II"), ("dii", "II"), ("LEAD_II", "II"), ("MDC_ECG_LEAD_II", "II"),
    ("III", "III"), ("D3", "III"), ("DIII", "III"), ("Lead III", "III"),
    ("aVR", "aVR"), ("AVR", "aVR"), ("avr", "aVR"), ("Lead aVR", "aVR"),
    ("MDC_ECG_LEAD_AVR", "aVR"),
    ("aVL", "aVL"), ("AVL", "aVL"), ("aVF", "aVF"), ("AVF", "aVF"),
    ("V1", "V1"), ("v1", "V1"), ("Lead V1", "V1"), ("V6", "V6"), (" V3 ", "V3"),
    ("Lead I (Einthoven)", "I"), ("Lead aVR, augmented voltage, right arm", "aVR"),
])
def test_canonical_lead_aliases(name, lead):
  assert canonical_lead(name) == lead


@pytest.mark.parametrize("name", ["-aVR", "Lead -aVR", "MLII", "V7", "V4R", "X", "", "aV", "IV",
                                  "V", "RESP", None, 1])
def test_canonical_lead_rejects(name):
  assert canonical_lead(name) is None


@pytest.mark.parametrize("code,lead", [
    ("2:1", "I"), ("2:2", "II"), ("2:61", "III"), ("2:62", "aVR"), ("2:64", "aVF"), ("2:3", "V1"),
    ("5.6.3-9-8", "V6"), ("5.6.3-9-63", "aVL"), ("MDC_ECG_LEAD_V4", "V4"), ("2:999", None),
    ("5.6.3-9-", None), ("", None)])
def test_dicom_lead_codes(code, lead):
  assert readers._lead_from_code(code) == lead


def test_record_error_interface():
  e = RecordError("flat_lead", "a.hea: flat lead V2")
  assert isinstance(e, ValueError) and e.reason == "flat_lead" and str(e) == "a.hea: flat lead V2"
  e2 = pickle.loads(pickle.dumps(e))
  assert e2.reason == "flat_lead" and str(e2) == str(e)
  assert RecordError("bad_label", "row 3").reason == "bad_label"   # other stages add codes
  assert set(readers.REASONS) == {
      "missing_file", "unreadable", "length_mismatch", "unknown_lead", "duplicate_lead",
      "too_few_leads", "nonfinite", "flat_lead", "sampling_rate", "too_short", "cmr_ndim",
      "cmr_frames", "cmr_series", "unsupported_format", "amplitude_units"}


# ------------------------------------------------------------------------------------------------
# ECG formats
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fs,layout", [
    (500, "records500/00000/00001_hr"),                     # PTB-XL
    (1000, "files/p1000/p10000032/s40689238/40689238"),     # MIMIC-IV-ECG style, at 1 kHz
])
def test_wfdb_roundtrip(tmp_path, fs, layout):
  x = fixtures.ecg_signal(fs, seed=3)
  directory, name = os.path.split(str(tmp_path / layout))
  record = fixtures.write_wfdb(directory, name, x, fs)
  for path in (record, record + ".hea", record + ".dat"):
    rec = read_ecg(path)
    assert rec.fs == fs and rec.leads == list(STANDARD_LEADS) and rec.path == path
    assert rec.signal.shape == (12, 10 * fs) and rec.signal.dtype == np.float64
    np.testing.assert_allclose(rec.signal, x, atol=WFDB_TOL, rtol=0)
  assert read_ecg(record, fs=250).fs == fs                      # the header's rate wins ...
  assert read_ecg(record, fs=float(fs), strict_fs=True).fs == fs
  with pytest.raises(RecordError) as e:                         # ... unless asked to check
    read_ecg(record, fs=250, strict_fs=True)
  assert e.value.reason == "sampling_rate" and name in str(e.value)


def test_wfdb_microvolts_are_converted(tmp_path):
  x = fixtures.ecg_signal(500)
  record = fixtures.write_wfdb(str(tmp_path), "uv", x, 500, units="uV")
  with open(record + ".hea") as f:
    assert "/uV" in f.read()
  rec = read_ecg(record)
  np.testing.assert_allclose(rec.signal, x, atol=WFDB_TOL, rtol=0)    # mV, not 1000x


def test_wfdb_shuffled_aliased_leads(tmp_path):
  x = fixtures.ecg_signal(500, seed=1)
  order = [5, 0, 11, 3, 7, 1, 9, 2, 4, 10, 6, 8]
  alias = {"I": "D1", "II": "DII", "III": "d3", "aVR": "AVR", "aVL": "avl", "aVF": "AVF",
           "V1": "v1", "V2": "V2", "V3": "V3", "V4": "v4", "V5": "V5", "V6": "V6"}
  names = [alias[STANDARD_LEADS[i]] for i in order]
  record = fixtures.write_wfdb(str(tmp_path), "shuffled", x[order], 500, leads=names)
  rec = read_ecg(record)
  assert rec.leads == [STANDARD_LEADS[i] for i in order]          # canonical, in file order
  np.testing.assert_allclose(rec.signal, x[order], atol=WFDB_TOL, rtol=0)
  std, mask = preprocess.to_standard_order(rec.signal, rec.leads)
  assert mask.tolist() == [1] * 12
  np.testing.assert_allclose(std, x, atol=WFDB_TOL, rtol=0)


def test_wfdb_header_without_sampling_rate(tmp_path):
  x = fixtures.ecg_signal(500)
  record = fixtures.write_wfdb(str(tmp_path), "nofs", x, 500)
  fixtures.edit_wfdb_header(record, lambda lines: [" ".join(lines[0].split()[:2])] + lines[1:])
  with pytest.raises(RecordError) as e:            # not WFDB's silent 250 Hz default
    read_ecg(record)
  assert e.value.reason == "sampling_rate" and "nofs" in str(e.value)
  rec = read_ecg(record, fs=500)
  assert rec.fs == 500 and rec.signal.shape == (12, 5000)


@pytest.mark.parametrize("kwargs,tol", [
    (dict(), 1.25e-3),                                       # 2.5 uV/count, SCPECG codes
    (dict(median_beat=True), 1.25e-3),                       # AVERAGE group first: RHYTHM wins
    (dict(code_style="mdc", units="mV", sensitivity=0.005, baseline=0.01), 2.5e-3),
])
@pytest.mark.parametrize("fs", [500, 1000])
def test_dicom_ecg_roundtrip(tmp_path, fs, kwargs, tol):
  x = fixtures.ecg_signal(fs, seed=2)
  path = fixtures.write_dicom_ecg(str(tmp_path), "ecg", x, fs, **kwargs)
  rec = read_ecg(path, fs=250)                                  # SamplingFrequency wins
  assert rec.fs == fs and rec.leads == list(STANDARD_LEADS)
  assert rec.signal.shape == x.shape
  np.testing.assert_allclose(rec.signal, x, atol=tol + 1e-9, rtol=0)
  assert np.abs(rec.signal - x).max() > 1e-5                    # it is quantised, not a copy


def test_dicom_ecg_by_preamble_and_shuffled_leads(tmp_path):
  x = fixtures.ecg_signal(500, seed=4)
  order = [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
  path = fixtures.write_dicom_ecg(str(tmp_path), "ecg", x[order], 500,
                                  leads=[STANDARD_LEADS[i] for i in order])
  bare = str(tmp_path / "ECG0001")                              # no extension: the DICM preamble
  shutil.copyfile(path, bare)
  rec = read_ecg(bare)
  assert rec.leads == [STANDARD_LEADS[i] for i in order]
  np.testing.assert_allclose(rec.signal, x[order], atol=1.25e-3 + 1e-9, rtol=0)


def test_dicom_ecg_multiplex_group_choice(tmp_path):
  import pydicom
  x = fixtures.ecg_signal(500, seed=6)
  path = fixtures.write_dicom_ecg(str(tmp_path), "ecg", x, 500, median_beat=True)
  ds = pydicom.dcmread(path)
  assert [g.MultiplexGroupLabel for g in ds.WaveformSequence] == ["AVERAGE", "RHYTHM"]
  for g in ds.WaveformSequence:                   # unlabelled: the group with the most samples
    del g.MultiplexGroupLabel
  ds.save_as(str(tmp_path / "unlabelled.dcm"))
  assert read_ecg(str(tmp_path / "unlabelled.dcm")).signal.shape == (12, 5000)
  ds.WaveformSequence[0].MultiplexGroupLabel = "RHYTHM"       # the first RHYTHM group wins
  ds.save_as(str(tmp_path / "short_rhythm.dcm"))
  rec = read_ecg(str(tmp_path / "short_rhythm.dcm"))
  assert rec.signal.shape == (12, 600)
  np.testing.assert_allclose(rec.signal, x[:, :600] * 0.5, atol=1.25e-3 + 1e-9)


def test_npy_ecg(tmp_path):
  x = fixtures.ecg_signal(500)
  for name, arr in (("leads_first", x), ("time_first", x.T), ("float32", x.astype(np.float32))):
    path = fixtures.write_npy(str(tmp_path), name, arr)
    rec = read_ecg(path, fs=500)
    assert rec.fs == 500.0 and rec.leads == list(STANDARD_LEADS) and rec.signal.shape == (12, 5000)
    np.testing.assert_allclose(rec.signal, x, atol=1e-6, rtol=1e-6)
  rec = read_ecg(fixtures.write_npy(str(tmp_path), "uv", x * 1000), fs=500, units="uV")
  np.testing.assert_allclose(rec.signal, x, atol=1e-12)
  with pytest.raises(RecordError) as e:
    read_ecg(path)
  assert e.value.reason == "sampling_rate" and "float32.npy" in str(e.value)


def test_csv_ecg(tmp_path):
  x = fixtures.ecg_signal(250, seed=5)
  order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]
  names = ["DII", "Lead I", "AVR", "III", "AVF", "aVL", "V2", "V1", "V4", "V3", "V6", "V5"]
  rec = read_ecg(fixtures.write_csv(str(tmp_path), "named", x[order], leads=names), fs=250)
  assert rec.leads == [STANDARD_LEADS[i] for i in order] and rec.fs == 250.0
  np.testing.assert_allclose(rec.signal, x[order], atol=1e-12)
  rec = read_ecg(fixtures.write_csv(str(tmp_path), "bare", x, header=False), fs=250)
  assert rec.leads == list(STANDARD_LEADS)
  np.testing.assert_allclose(rec.signal, x, atol=1e-12)
  path = fixtures.write_csv(str(tmp_path), "dup", x[:, :20],
                            leads=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3",
                                   "V4", "V5", "v5"])
  with pytest.raises(RecordError) as e:
    read_ecg(path, fs=250)
  assert e.value.reason == "duplicate_lead" and "V5" in str(e.value) and "dup.csv" in str(e.value)
  with pytest.raises(RecordError) as e:
    read_ecg(fixtures.write_csv(str(tmp_path), "eight", x[:8, :20], header=False), fs=250)
  assert e.value.reason == "unreadable" and "eight.csv" in str(e.value)


class _Tripwire:
  """Unpickling it creates a file: proof that a reader unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["ecg_npy", "cmr_npy", "cmr_npz"])
def test_pickles_are_refused_unopened(tmp_path, kind):
  marker = str(tmp_path / "unpickled")
  arr = np.array([_Tripwire(marker), None], dtype=object)
  if kind == "cmr_npz":
    path = str(tmp_path / "evil.npz")
    np.savez(path, cmr=arr)
  else:
    path = str(tmp_path / "evil.npy")
    np.save(path, arr, allow_pickle=True)
  with pytest.raises(RecordError) as e:
    read_ecg(path, fs=500) if kind == "ecg_npy" else read_cmr(path)
  assert e.value.reason == "unreadable" and "evil.np" in str(e.value)
  assert not os.path.exists(marker)                      # never unpickled
  # Control: unpickling does trip the wire, so the check above can fail.
  loaded = np.load(path, allow_pickle=True)
  if kind == "cmr_npz":
    loaded["cmr"]
  assert os.path.exists(marker)


def test_missing_and_unsupported(tmp_path):
  with pytest.raises(RecordError) as e:
    read_ecg(str(tmp_path / "nothing" / "rec"))
  assert e.value.reason == "missing_file" and "rec" in str(e.value)
  with pytest.raises(RecordError) as e:
    read_ecg(str(tmp_path))
  assert e.value.reason == "unsupported_format"


@pytest.mark.parametrize("name", ECG_BAD)
def test_corrupted_ecg(bad_ecgs, name):
  case = bad_ecgs[name]
  with pytest.raises(RecordError) as e:
    rec = read_ecg(case.path, case.fs)
    assert case.stage == "preprocess", f"{name}: read_ecg did not raise"
    preprocess.preprocess_ecg(rec)
  assert e.value.reason == case.reason, str(e.value)
  for needle in case.needles:
    assert needle in str(e.value), (needle, str(e.value))
  if case.stage == "preprocess":                     # readable: it is the preprocessing that fails
    read_ecg(case.path, case.fs)


def test_corrupted_case_lists_are_complete(bad_ecgs, bad_cmrs):
  assert set(bad_ecgs) == set(ECG_BAD) and set(bad_cmrs) == set(CMR_BAD)


def test_eight_lead_record_reads_and_derives(tmp_path):
  x = fixtures.ecg_signal(500)
  keep = [0, 1, 6, 7, 8, 9, 10, 11]
  record = fixtures.write_wfdb(str(tmp_path), "eight", x[keep], 500,
                               leads=[STANDARD_LEADS[i] for i in keep])
  rec = read_ecg(record)
  assert rec.leads == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
  out, mask, info = preprocess.preprocess_ecg(rec)
  assert mask.tolist() == [1] * 12 and info["leads_derived"] == ["III", "aVR", "aVL", "aVF"]


# ------------------------------------------------------------------------------------------------
# CMR formats
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rect_cine():
  return fixtures.cine(frames=24, size=48, seed=1)[:, 4:44, :]     # (24, 40, 48): H != W


@pytest.mark.parametrize("four_d", [False, True])
def test_nifti_roundtrip(tmp_path, rect_cine, four_d):
  path = fixtures.write_nifti(str(tmp_path), "cine", rect_cine, four_d=four_d)
  out = read_cmr(path)
  assert out.shape == (24, 40, 48) and out.dtype == np.float32
  np.testing.assert_array_equal(out, rect_cine)


def test_dicom_series_shuffled(tmp_path, rect_cine):
  folder = fixtures.write_dicom_series(str(tmp_path), "series", rect_cine, shuffle_files=True)
  import pydicom
  names = sorted(os.listdir(folder))
  instances = [int(pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True).InstanceNumber)
               for n in names]
  assert instances != sorted(instances)                           # file order != frame order
  out = read_cmr(folder)
  assert out.shape == rect_cine.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, rect_cine, atol=0.25 + 1e-4)    # slope 0.5: half a step
  assert np.abs(out - rect_cine).max() > 1e-3                      # quantised, i.e. really read


def test_dicom_series_orders_by_trigger_time(tmp_path, rect_cine):
  folder = fixtures.write_dicom_series(str(tmp_path), "series", rect_cine, instance_numbers=False,
                                       seed=3)
  np.testing.assert_allclose(read_cmr(folder), rect_cine, atol=0.25 + 1e-4)


def test_dicom_multiframe(tmp_path, rect_cine):
  path = fixtures.write_dicom_multiframe(str(tmp_path), "multi", rect_cine)
  out = read_cmr(path)
  assert out.shape == rect_cine.shape
  np.testing.assert_allclose(out, rect_cine, atol=0.25 + 1e-4)


def test_npy_npz_cmr(tmp_path, rect_cine):
  np.testing.assert_array_equal(read_cmr(fixtures.write_npy(str(tmp_path), "c", rect_cine)),
                                rect_cine)
  np.savez(str(tmp_path / "keyed.npz"), cmr=rect_cine, other=np.zeros(3))
  np.testing.assert_array_equal(read_cmr(str(tmp_path / "keyed.npz")), rect_cine)
  np.savez(str(tmp_path / "only.npz"), frames=rect_cine.astype(np.uint8))
  out = read_cmr(str(tmp_path / "only.npz"))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, rect_cine.astype(np.uint8))


@pytest.mark.parametrize("name", CMR_BAD)
def test_corrupted_cmr(bad_cmrs, name):
  case = bad_cmrs[name]
  with pytest.raises(RecordError) as e:
    cine = read_cmr(case.path)
    assert case.stage == "preprocess", f"{name}: read_cmr did not raise"
    preprocess.preprocess_cmr(cine, path=case.path)
  assert e.value.reason == case.reason, str(e.value)
  for needle in case.needles:
    assert needle in str(e.value), (needle, str(e.value))
