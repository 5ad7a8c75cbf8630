"""Fixture files for the readers, the preprocessing and the dataset-build tests.

Every writer takes a directory and returns the path to hand to `read_ecg` / `read_cmr`; the files
are written from known clean arrays (`ecg_signal`, `cine`) so that tests can compare what comes
back. `bad_ecg_cases` / `bad_cmr_cases` write one file per corrupted variant and say which
`RecordError.reason` it must raise, at which stage ("read" = the reader, "preprocess" =
`preprocess_ecg` / `preprocess_cmr`), and which strings the message must contain.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np

from cardionets_jax.data.readers import STANDARD_LEADS

# ------------------------------------------------------------------------------------------------
# Clean signals
# ------------------------------------------------------------------------------------------------

# Per wave: (offset from the R peak in s, Gaussian width in s, amplitude in I, amplitude in II).
_LIMB_WAVES = (
    (-0.17, 0.022, 0.08, 0.15),    # P
    (-0.028, 0.008, -0.05, -0.10),  # Q
    (0.0, 0.010, 0.70, 1.10),      # R
    (0.030, 0.010, -0.15, -0.25),  # S
    (0.28, 0.045, 0.20, 0.30),     # T
)
# Precordial amplitudes per wave (P, Q, R, S, T) for V1..V6: small r / deep S in V1 to tall R in V5.
_PRECORDIAL = np.array([
    [0.05, 0.00, 0.25, -1.00, -0.10],
    [0.07, 0.00, 0.50, -1.40, 0.30],
    [0.08, -0.05, 0.90, -0.90, 0.40],
    [0.10, -0.08, 1.40, -0.50, 0.45],
    [0.10, -0.10, 1.50, -0.25, 0.35],
    [0.09, -0.08, 1.10, -0.10, 0.25],
])


def ecg_signal(fs, seconds=10.0, seed=0, wander=True) -> np.ndarray:
  """(12, round(seconds * fs)) float64 mV in STANDARD_LEADS order: a noise-free beat train.

  A continuous function of time sampled at t = n / fs, so two rates give samples of the same
  underlying signal. Limb leads obey Einthoven/Goldberger exactly (III = II - I, aVR = -(I+II)/2,
  aVL = I - II/2, aVF = II - I/2). `wander` adds a slow 0.15 Hz baseline drift (removed by the
  band-pass). The seed sets the heart rate, the beat-to-beat jitter and the amplitudes.
  """
  rng = np.random.default_rng(seed)
  n = int(round(seconds * fs))
  t = np.arange(n) / fs
  rr = 60.0 / rng.uniform(60.0, 80.0)
  first = rng.uniform(0.2, 0.5)
  beats = first + rr * np.arange(int(seconds / rr) + 2) + rng.normal(0, 0.01, int(seconds / rr) + 2)
  gain = rng.uniform(0.8, 1.2, size=(8,))
  limb = np.zeros((2, n))
  pre = np.zeros((6, n))
  for tb in beats:
    for k, (off, width, a1, a2) in enumerate(_LIMB_WAVES):
      g = np.exp(-0.5 * ((t - tb - off) / width) ** 2)
      limb[0] += gain[0] * a1 * g
      limb[1] += gain[1] * a2 * g
      pre += gain[2:, None] * _PRECORDIAL[:, k:k + 1] * g[None]
  if wander:
    phase = rng.uniform(0, 2 * np.pi)
    drift = 0.1 * np.sin(2 * np.pi * 0.15 * t + phase)
    limb += drift[None] * np.array([[1.0], [0.6]])
    pre += drift[None] * 0.5
  i, ii = limb
  out = np.stack([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2, *pre])
  return out


def cine(frames=30, size=64, seed=0) -> np.ndarray:
  """(frames, size, size) float32: a bright blob moving on a circle and pulsing, one period.

  Values roughly in [20, 220]; periodic in time (frame `frames` would equal frame 0). A faint
  fixed texture makes every pixel distinct so ordering and transposition errors show.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  texture = rng.uniform(0, 10, size=(size, size))
  out = np.empty((frames, size, size), np.float32)
  for f in range(frames):
    ph = 2 * np.pi * f / frames
    cy = size * (0.45 + 0.12 * np.sin(ph))
    cx = size * (0.55 + 0.15 * np.cos(ph))
    r = size * (0.16 + 0.05 * np.cos(ph))
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2)))
    out[f] = 20.0 + 190.0 * blob + texture + 0.1 * xx   # the ramp in x breaks the symmetry
  return out


# ------------------------------------------------------------------------------------------------
# ECG writers
# ------------------------------------------------------------------------------------------------

def write_wfdb(directory, name, signal, fs, leads=STANDARD_LEADS, units="mV",
               adc_gain=None) -> str:
  """Writes a WFDB record (format 16) and returns the record path without extension.

  `signal` is (n_leads, T) in mV; it is stored in `units` ("mV" or "uV") with a quantisation step
  of 1 uV (adc_gain 1000/mV or 1/uV unless given). NaN samples are stored as WFDB's invalid value
  and read back as NaN. `leads` may hold any (non-duplicate) names.
  """
  import wfdb

  os.makedirs(directory, exist_ok=True)
  x = np.asarray(signal, np.float64)
  factor = {"mV": 1.0, "uV": 1000.0}[units]
  gain = adc_gain if adc_gain is not None else 1000.0 / factor
  n = x.shape[0]
  wfdb.wrsamp(name, fs=fs, units=[units] * n, sig_name=list(leads), p_signal=(x * factor).T,
              fmt=["16"] * n, adc_gain=[float(gain)] * n, baseline=[0] * n, write_dir=directory)
  return os.path.join(directory, name)


def edit_wfdb_header(record, edit) -> str:
  """Rewrites `record`.hea with `edit(lines) -> lines` (record line first); returns `record`."""
  hea = record + ".hea"
  with open(hea) as f:
    lines = f.read().splitlines()
  with open(hea, "w") as f:
    f.write("\n".join(edit(lines)) + "\n")
  return record


def set_wfdb_length(record, sig_len) -> str:
  """Makes the header claim `sig_len` samples (a header/data length mismatch)."""
  def edit(lines):
    tok = lines[0].split()
    tok[3] = str(sig_len)
    return [" ".join(tok)] + lines[1:]
  return edit_wfdb_header(record, edit)


def rename_wfdb_lead(record, index, new_name) -> str:
  """Renames signal `index` (0-based) in the header (e.g. to an unknown or a duplicate name)."""
  def edit(lines):
    out = list(lines)
    tok = out[1 + index].split(" ")
    tok[-1] = new_name
    out[1 + index] = " ".join(tok)
    return out
  return edit_wfdb_header(record, edit)


def truncate_file(path, keep_fraction=0.5, dest=None) -> str:
  """Truncates a file to `keep_fraction` of its bytes; returns the truncated file's path.

  With `dest`, `path` is first copied there and the copy is truncated; without it the file is
  truncated in place, so call it only on a freshly written fixture.
  """
  if dest is not None:
    shutil.copyfile(path, dest)
    path = dest
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(int(size * keep_fraction))
  return path


def _dicom_file_meta(sop_class, sop_instance):
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = sop_instance
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  return meta


_SCPECG_NUMBER = {"I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64,
                  **{f"V{k}": k + 2 for k in range(1, 7)}}


def _ecg_group(x, fs, leads, label, sensitivity, units, baseline, code_style):
  from pydicom.dataset import Dataset

  quantum = sensitivity * (1e-3 if units == "uV" else 1.0)       # mV per count
  raw = np.rint((x - baseline * (1e-3 if units == "uV" else 1.0)) / quantum)
  if np.abs(raw).max() > 32767:
    raise ValueError("signal out of int16 range for this sensitivity")
  g = Dataset()
  g.MultiplexGroupLabel = label
  g.WaveformOriginality = "ORIGINAL"
  g.NumberOfWaveformChannels = x.shape[0]
  g.NumberOfWaveformSamples = x.shape[1]
  g.SamplingFrequency = f"{float(fs):g}"
  g.WaveformBitsAllocated = 16
  g.WaveformSampleInterpretation = "SS"
  chans = []
  for name in leads:
    src = Dataset()
    if code_style == "mdc":
      src.CodeValue = f"MDC_ECG_LEAD_{name.upper()}"
      src.CodingSchemeDesignator = "MDC"
      src.CodeMeaning = "vendor channel"
    else:
      src.CodeValue = f"5.6.3-9-{_SCPECG_NUMBER.get(name, 999)}"
      src.CodingSchemeDesignator = "SCPECG"
      src.CodeMeaning = f"Lead {name}"
    unit = Dataset()
    unit.CodeValue = units
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = {"uV": "microvolt", "mV": "millivolt"}[units]
    ch = Dataset()
    ch.ChannelSourceSequence = [src]
    ch.ChannelSensitivity = f"{sensitivity:g}"
    ch.ChannelSensitivityUnitsSequence = [unit]
    ch.ChannelSensitivityCorrectionFactor = "1"
    ch.ChannelBaseline = f"{baseline:g}"
    ch.ChannelSampleSkew = "0"
    ch.WaveformBitsStored = 16
    chans.append(ch)
  g.ChannelDefinitionSequence = chans
  g.add_new(0x54001010, "OW", raw.T.astype("<i2").tobytes())     # interleaved (samples, chans)
  return g


def write_dicom_ecg(directory, name, signal, fs, leads=STANDARD_LEADS, *, sensitivity=2.5,
                    units="uV", baseline=0.0, median_beat=False, code_style="meaning") -> str:
  """Writes a DICOM 12-lead ECG waveform object (`name`.dcm) and returns its path.

  Int16 samples interleaved (samples, channels); ChannelSensitivity `sensitivity` in `units` per
  count (quantisation error <= sensitivity / 2), ChannelBaseline `baseline` (same units). Lead codes
  as real devices write them: CodeMeaning "Lead I" with SCPECG CodeValue (code_style="meaning"),
  or CodeValue "MDC_ECG_LEAD_I" with a useless CodeMeaning (code_style="mdc"). With
  `median_beat`, an "AVERAGE" group (a 1.2 s median beat) precedes the "RHYTHM" group.
  """
  import pydicom
  from pydicom.dataset import Dataset
  from pydicom.uid import generate_uid

  os.makedirs(directory, exist_ok=True)
  x = np.asarray(signal, np.float64)
  sop_class = "1.2.840.10008.5.1.4.1.1.9.1.1"                   # 12-lead ECG Waveform Storage
  uid = generate_uid()
  ds = Dataset()
  ds.file_meta = _dicom_file_meta(sop_class, uid)
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = uid
  ds.Modality = "ECG"
  ds.PatientID = name
  ds.StudyInstanceUID = generate_uid()
  ds.SeriesInstanceUID = generate_uid()
  groups = []
  if median_beat:
    nb = int(round(1.2 * fs))
    groups.append(_ecg_group(x[:, :nb] * 0.5, fs, leads, "AVERAGE", sensitivity, units,
                             baseline, code_style))
  groups.append(_ecg_group(x, fs, leads, "RHYTHM", sensitivity, units, baseline, code_style))
  ds.WaveformSequence = groups
  path = os.path.join(directory, name + ".dcm")
  pydicom.dcmwrite(path, ds, enforce_file_format=True)
  return path


def write_npy(directory, name, array) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".npy")
  np.save(path, np.asarray(array), allow_pickle=False)
  return path


def write_csv(directory, name, signal, leads=STANDARD_LEADS, header=True) -> str:
  """One column per lead (rows = samples), with a header row of `leads` unless header=False."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".csv")
  x = np.asarray(signal, np.float64)
  with open(path, "w") as f:
    if header:
      f.write(",".join(leads) + "\n")
    for row in x.T:
      f.write(",".join(repr(float(v)) for v in row) + "\n")
  return path


def write_object_npy(directory, name) -> str:
  """A .npy holding an object array: a pickle, which readers must refuse without unpickling."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".npy")
  np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
  return path


# ------------------------------------------------------------------------------------------------
# CMR writers
# ------------------------------------------------------------------------------------------------

def write_nifti(directory, name, cine_arr, four_d=False) -> str:
  """(F, H, W) -> `name`.nii.gz holding (x=W, y=H, t=F), or (x, y, 1, t) with four_d."""
  import nibabel as nib

  os.makedirs(directory, exist_ok=True)
  data = np.transpose(np.asarray(cine_arr, np.float32), (2, 1, 0))
  if four_d:
    data = data[:, :, None, :]
  path = os.path.join(directory, name + ".nii.gz")
  nib.save(nib.Nifti1Image(data, np.eye(4)), path)
  return path


def write_nifti_raw(directory, name, data) -> str:
  """Any array as-is (for wrong-dimensionality variants)."""
  import nibabel as nib

  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".nii.gz")
  nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
  return path


def _mr_dataset(frame_pixels, series_uid, slope, intercept, frames=1):
  from pydicom.dataset import Dataset
  from pydicom.uid import generate_uid

  sop_class = ("1.2.840.10008.5.1.4.1.1.4" if frames == 1          # MR Image Storage
               else "1.2.840.10008.5.1.4.1.1.7.3")                 # multi-frame grey word SC
  uid = generate_uid()
  ds = Dataset()
  ds.file_meta = _dicom_file_meta(sop_class, uid)
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = uid
  ds.Modality = "MR"
  ds.PatientID = "fixture"
  ds.SeriesInstanceUID = series_uid
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.Rows, ds.Columns = frame_pixels.shape[-2:]
  ds.BitsAllocated = 16
  ds.BitsStored = 16
  ds.HighBit = 15
  ds.PixelRepresentation = 0
  if frames > 1:
    ds.NumberOfFrames = frames
  ds.RescaleSlope = f"{slope:g}"
  ds.RescaleIntercept = f"{intercept:g}"
  ds.PixelData = frame_pixels.astype("<u2").tobytes()
  return ds


def _to_stored(cine_arr, slope, intercept):
  raw = np.rint((np.asarray(cine_arr, np.float64) - intercept) / slope)
  if raw.min() < 0 or raw.max() > 65535:
    raise ValueError("cine out of uint16 range for this slope/intercept")
  return raw.astype(np.uint16)


def write_dicom_series(directory, name, cine_arr, shuffle_files=True, *, slope=0.5,
                       intercept=-10.0, instance_numbers=True, seed=0,
                       series_uids=None, frame_shapes=None) -> str:
  """A folder `name`/ of single-frame MR DICOMs, one per frame; returns the folder.

  Stored value = round((value - intercept) / slope) as uint16, so the reader's rescale gives the
  cine back within slope / 2. Files get InstanceNumber (1-based, unless instance_numbers=False),
  TriggerTime (40 ms apart) and one SeriesInstanceUID; with shuffle_files they are named in a
  random order unrelated to InstanceNumber. `series_uids` / `frame_shapes` (per frame) override
  the uid / crop a frame, for the corrupted variants.
  """
  import pydicom
  from pydicom.uid import generate_uid

  folder = os.path.join(directory, name)
  os.makedirs(folder, exist_ok=True)
  stored = _to_stored(cine_arr, slope, intercept)
  n = stored.shape[0]
  perm = np.random.default_rng(seed).permutation(n) if shuffle_files else np.arange(n)
  uid = generate_uid()
  for f in range(n):
    pixels = stored[f]
    if frame_shapes is not None and frame_shapes[f] is not None:
      pixels = pixels[:frame_shapes[f][0], :frame_shapes[f][1]]
    ds = _mr_dataset(np.ascontiguousarray(pixels),
                     series_uids[f] if series_uids is not None else uid, slope, intercept)
    if instance_numbers:
      ds.InstanceNumber = f + 1
    ds.TriggerTime = f"{40.0 * f:g}"
    pydicom.dcmwrite(os.path.join(folder, f"IM{perm[f]:05d}.dcm"), ds, enforce_file_format=True)
  return folder


def write_dicom_multiframe(directory, name, cine_arr, *, slope=0.5, intercept=-10.0) -> str:
  """One multi-frame DICOM file (NumberOfFrames = F); returns its path."""
  import pydicom
  from pydicom.uid import generate_uid

  os.makedirs(directory, exist_ok=True)
  stored = _to_stored(cine_arr, slope, intercept)
  ds = _mr_dataset(stored, generate_uid(), slope, intercept, frames=stored.shape[0])
  path = os.path.join(directory, name + ".dcm")
  pydicom.dcmwrite(path, ds, enforce_file_format=True)
  return path


# ------------------------------------------------------------------------------------------------
# Corrupted variants
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BadCase:
  """A corrupted fixture: `read_*(path, ...)` (stage "read") or the preprocessing of what it reads
  (stage "preprocess") raises RecordError(`reason`) whose message contains every `needles`."""
  name: str
  path: str
  reason: str
  stage: str
  needles: tuple = ()
  fs: float | None = None          # the rate to pass to read_ecg (npy / csv), else None


def bad_ecg_cases(directory, fs=500, seed=0) -> dict:
  """Writes one file per corrupted ECG variant under `directory`; returns {name: BadCase}."""
  os.makedirs(directory, exist_ok=True)
  x = ecg_signal(fs, 10.0, seed)
  cases = []

  def add(name, path, reason, stage, *needles, fs=None):
    base = os.path.basename(path)
    cases.append(BadCase(name, path, reason, stage, (base,) + needles, fs))

  rec = write_wfdb(directory, "truncated_dat", x, fs)
  truncate_file(rec + ".dat", 0.5)
  add("truncated_dat", rec, "length_mismatch", "read")
  rec = write_wfdb(directory, "header_longer", x, fs)
  set_wfdb_length(rec, x.shape[1] + 1000)
  add("header_longer", rec + ".hea", "length_mismatch", "read")
  rec = write_wfdb(directory, "header_shorter", x, fs)
  set_wfdb_length(rec, x.shape[1] - 1000)
  add("header_shorter", rec, "length_mismatch", "read")
  rec = write_wfdb(directory, "missing_dat", x, fs)
  os.remove(rec + ".dat")
  add("missing_dat", rec, "missing_file", "read", "missing_dat.dat")
  rec = write_wfdb(directory, "missing_hea", x, fs)
  os.remove(rec + ".hea")
  add("missing_hea", rec, "missing_file", "read", "missing_hea.hea")
  rec = write_wfdb(directory, "garbled_header", x, fs)
  with open(rec + ".hea", "w") as f:
    f.write("garbled_header twelve leads\nnot a signal line\n")
  add("garbled_header", rec + ".dat", "unreadable", "read", "garbled_header.hea")
  add("missing_record", os.path.join(directory, "no_such_record"), "missing_file", "read")
  add("missing_npy", os.path.join(directory, "no_such.npy"), "missing_file", "read", fs=fs)
  leads = list(STANDARD_LEADS)
  leads[4] = "V7x"
  add("unknown_lead", write_wfdb(directory, "unknown_lead", x, fs, leads=leads),
      "unknown_lead", "read", "V7x")
  rec = write_wfdb(directory, "duplicate_lead", x, fs)
  rename_wfdb_lead(rec, 9, "v2")                                  # V4 renamed to a second V2
  add("duplicate_lead", rec, "duplicate_lead", "read", "V2")
  limb = [0, 1, 2, 3, 4, 5]
  add("six_limb_leads", write_wfdb(directory, "six_limb_leads", x[limb], fs,
                                   leads=[STANDARD_LEADS[i] for i in limb]),
      "too_few_leads", "preprocess", "V1", "V6")
  y = x.copy()
  y[7, 1200:1260] = np.nan
  add("nan_run_wfdb", write_wfdb(directory, "nan_run_wfdb", y, fs), "nonfinite", "preprocess",
      "V2", "1200")
  add("nan_run_npy", write_npy(directory, "nan_run_npy", y), "nonfinite", "preprocess", "V2",
      "1200", fs=fs)
  y = x.copy()
  y[10] = 0.0
  add("flat_lead", write_wfdb(directory, "flat_lead", y, fs), "flat_lead", "preprocess", "V5")
  z = ecg_signal(20, 10.0, seed)
  add("fs_too_low", write_wfdb(directory, "fs_too_low", z, 20), "sampling_rate", "preprocess",
      "20")
  z = ecg_signal(fs, 8.0, seed)
  add("too_short", write_wfdb(directory, "too_short", z, fs), "too_short", "preprocess")
  add("npy_without_fs", write_npy(directory, "npy_without_fs", x), "sampling_rate", "read")
  add("object_npy", write_object_npy(directory, "object_npy"), "unreadable", "read", fs=fs)
  add("npy_bad_shape", write_npy(directory, "npy_bad_shape", x[:8]), "unreadable", "read",
      "(8, ", fs=fs)
  add("csv_unknown_column", write_csv(directory, "csv_unknown_column", x[:, :50],
                                      leads=["time"] + list(STANDARD_LEADS[1:])),
      "unknown_lead", "read", "time", fs=fs)
  path = os.path.join(directory, "garbage.dcm")
  with open(path, "wb") as f:
    f.write(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
  add("garbage_dicom", path, "unreadable", "read")
  path = write_dicom_ecg(directory, "dicom_truncated_waveform", x, fs)
  _truncate_waveform(path)
  add("dicom_truncated_waveform", path, "length_mismatch", "read")
  path = write_dicom_ecg(directory, "dicom_truncated_file", x, fs)
  truncate_file(path, 0.5)
  add("dicom_truncated_file", path, "length_mismatch", "read")
  path = write_dicom_multiframe(directory, "dicom_image_not_ecg", cine(12, 16, seed))
  add("dicom_image_not_ecg", path, "unsupported_format", "read", "WaveformSequence")
  path = write_dicom_ecg(directory, "dicom_unknown_lead", x, fs,
                         leads=list(STANDARD_LEADS[:11]) + ["Foo"])
  add("dicom_unknown_lead", path, "unknown_lead", "read", "Foo")
  path = os.path.join(directory, "signal.edf")
  with open(path, "wb") as f:
    f.write(b"0       not really an EDF")
  add("unsupported", path, "unsupported_format", "read")
  return {c.name: c for c in cases}


def _truncate_waveform(path):
  """Rewrites a DICOM ECG with the RHYTHM WaveformData cut to half its samples."""
  import pydicom

  ds = pydicom.dcmread(path)
  g = ds.WaveformSequence[-1]
  data = bytes(g.WaveformData)
  g.WaveformData = data[:len(data) // 2]
  pydicom.dcmwrite(path, ds, enforce_file_format=True)


def bad_cmr_cases(directory, seed=0) -> dict:
  """Writes one file per corrupted CMR variant under `directory`; returns {name: BadCase}."""
  import pydicom

  os.makedirs(directory, exist_ok=True)
  c = cine(20, 32, seed)
  cases = []

  def add(name, path, reason, stage, *needles):
    cases.append(BadCase(name, path, reason, stage, (os.path.basename(path),) + needles))

  multi = np.stack([np.transpose(c, (2, 1, 0))] * 3, axis=2)        # (x, y, 3 slices, t)
  add("nifti_multislice", write_nifti_raw(directory, "nifti_multislice", multi), "cmr_ndim",
      "read", "(32, 32, 3, 20)")
  add("nifti_2d", write_nifti_raw(directory, "nifti_2d", c[0]), "cmr_ndim", "read", "(32, 32)")
  add("three_frames", write_nifti(directory, "three_frames", c[:3]), "cmr_frames",
      "preprocess", "3 frames")
  path = write_nifti(directory, "truncated_nifti", c)
  truncate_file(path, 0.5)
  add("truncated_nifti", path, "unreadable", "read")
  add("missing_nifti", os.path.join(directory, "no_such.nii.gz"), "missing_file", "read")
  uids = [f"1.2.826.0.1.3680043.9.7{seed}.1"] * c.shape[0]
  uids[5] = f"1.2.826.0.1.3680043.9.7{seed}.2"                      # one frame from another series
  add("series_mixed_uid", write_dicom_series(directory, "series_mixed_uid", c,
                                             series_uids=uids),
      "cmr_series", "read", "SeriesInstanceUID")
  shapes = [None] * c.shape[0]
  shapes[7] = (32, 30)
  add("series_mixed_shape", write_dicom_series(directory, "series_mixed_shape", c,
                                               frame_shapes=shapes),
      "unreadable", "read", "32x30")
  folder = os.path.join(directory, "series_no_order")
  write_dicom_series(directory, "series_no_order", c, instance_numbers=False)
  for n in os.listdir(folder):                                     # drop TriggerTime too
    ds = pydicom.dcmread(os.path.join(folder, n))
    del ds.TriggerTime
    pydicom.dcmwrite(os.path.join(folder, n), ds, enforce_file_format=True)
  add("series_no_order", folder, "unreadable", "read", "InstanceNumber")
  os.makedirs(os.path.join(directory, "empty_series"), exist_ok=True)
  add("empty_series", os.path.join(directory, "empty_series"), "missing_file", "read")
  add("npy_2d", write_npy(directory, "cmr_2d", c[0]), "cmr_ndim", "read", "(32, 32)")
  add("object_npy", write_object_npy(directory, "cmr_object"), "unreadable", "read")
  path = os.path.join(directory, "object.npz")
  np.savez(path, cmr=np.array([None, {"x": 1}], dtype=object))
  add("object_npz", path, "unreadable", "read")
  path = os.path.join(directory, "two_arrays.npz")
  np.savez(path, a=c, b=c)
  add("npz_ambiguous", path, "unreadable", "read", "'cmr'")
  y = c.copy()
  y[4, 10, 10] = np.nan
  add("nan_pixel", write_npy(directory, "nan_pixel", y), "nonfinite", "preprocess", "frame 4")
  add("single_frame_dicom", write_dicom_multiframe(directory, "single_frame", c[:1]),
      "cmr_frames", "read")
  path = os.path.join(directory, "cine.mp4")
  with open(path, "wb") as f:
    f.write(b"\0\0\0\x18ftypmp42")
  add("unsupported", path, "unsupported_format", "read")
  return {c_.name: c_ for c_ in cases}
