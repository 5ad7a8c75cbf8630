"""ECG readers: 12-lead ECGs from WFDB, DICOM waveforms, archive XML / SCP, `.npy`, `.csv`, in mV.

`read_ecg` reads WFDB (PTB-XL / MIMIC-IV-ECG layouts), DICOM 12-lead waveform objects, the archive
formats of archive_ecg.py, `.npy` and `.csv`, and returns an `EcgRecord` with canonical lead names (`canonical_lead`, STANDARD_LEADS
spelling). Failures raise `RecordError` (record_errors.py) with a reason from `REASONS` and a
message naming the file and the lead or field at fault.

Units: ECGs are returned in millivolts (WFDB and DICOM units are converted; `.npy`/`.csv` carry no
units and are taken to be in `units`, mV by default). No pickle is ever loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re

import numpy as np

from cardionets_jax.data.record_errors import (RecordError, _as_float_array, _fail,
                                               _has_dicm_preamble)

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclasses.dataclass
class EcgRecord:
  signal: np.ndarray      # (n_leads, T) float64, millivolts, leads in file order
  fs: float               # sampling rate in Hz
  leads: list[str]        # canonical names (STANDARD_LEADS spelling), in file order
  path: str


# ------------------------------------------------------------------------------------------------
# Lead names, sampling rates and units
# ------------------------------------------------------------------------------------------------

_LEAD_ALIASES = {
    "i": "I", "ii": "II", "iii": "III",
    "d1": "I", "di": "I", "d2": "II", "dii": "II", "d3": "III", "diii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    **{f"v{k}": f"V{k}" for k in range(1, 7)},
}
# Prefixes stripped before the lookup ("Lead I", "LEAD_II", "MDC_ECG_LEAD_AVR", "ECG Lead V1").
_LEAD_PREFIX = re.compile(r"^(?:mdc_ecg_lead|ecg[\s_]*lead|lead)[\s_:.]*")
# DICOM CID 3001 numeric codes ("2:1" MDC, "5.6.3-9-1" SCPECG): the trailing number.
_LEAD_CODE_NUMBERS = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
                      **{k + 2: f"V{k}" for k in range(1, 7)}}


def canonical_lead(name: str) -> str | None:
  """The STANDARD_LEADS spelling of a lead name, or None when it is not one of the 12 leads.

  Case-insensitive; accepts "AVR"/"avr", "D1"/"DI" (I), "D2"/"DII" (II), "D3"/"DIII" (III),
  "Lead I", "LEAD_II", "MDC_ECG_LEAD_AVR", and a trailing description ("Lead I (Einthoven)",
  "Lead aVR, augmented voltage, right arm"). An inverted lead ("-aVR") is not the lead: None.
  Anything else (e.g. "MLII", "V7", "V4R") is None.
  """
  if not isinstance(name, str):
    return None
  s = name.strip().lower()
  s = re.split(r"[(,]", s, maxsplit=1)[0].strip()     # drop "(Einthoven)", ", augmented ..."
  s = _LEAD_PREFIX.sub("", s).strip()
  return _LEAD_ALIASES.get(s)


def _lead_from_code(value) -> str | None:
  """A lead from a DICOM CodeValue: "MDC_ECG_LEAD_I" style, or the numeric "2:1"/"5.6.3-9-1"."""
  if not isinstance(value, str):
    return None
  lead = canonical_lead(value)
  if lead is not None:
    return lead
  m = re.fullmatch(r"\s*(?:2:|5\.6\.3-9-)(\d+)\s*", value)
  return _LEAD_CODE_NUMBERS.get(int(m.group(1))) if m else None


def _canonical_leads(names, path, what="lead"):
  """Canonical names for `names`, raising unknown_lead / duplicate_lead (naming the lead)."""
  out = []
  for raw in names:
    lead = canonical_lead(raw)
    if lead is None:
      _fail("unknown_lead", path,
            f"unknown {what} name {raw!r} (not one of the 12 standard leads {STANDARD_LEADS})")
    if lead in out:
      first = names[out.index(lead)]
      _fail("duplicate_lead", path,
            f"duplicate lead {lead!r}: {what} names {first!r} and {raw!r} are the same lead")
    out.append(lead)
  return out


def _check_fs(path, fs, source):
  try:
    fs = float(fs)
  except (TypeError, ValueError):
    _fail("sampling_rate", path, f"sampling rate {fs!r} ({source}) is not a number")
  if not math.isfinite(fs) or fs <= 0:
    _fail("sampling_rate", path, f"sampling rate {fs!r} Hz ({source}) is not a positive number")
  return fs


def _reconcile_fs(path, file_fs, given_fs, strict=False):
  """The file's own rate if it has one, else the given rate; with `strict` they must agree."""
  if strict and given_fs is not None and file_fs is not None:
    given = _check_fs(path, given_fs, "given")
    if abs(given - file_fs) > 1e-6 * file_fs:
      _fail("sampling_rate", path,
            f"the file says fs={file_fs:g} Hz but fs={given:g} Hz was given")
  if file_fs is None:
    if given_fs is None:
      _fail("sampling_rate", path, "the file gives no sampling rate and none was given (fs=None)")
    return _check_fs(path, given_fs, "given")
  return file_fs


_UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
               "microvolt": 1e-3, "v": 1e3, "volt": 1e3, "nv": 1e-6, "nanovolt": 1e-6}


def _unit_scale(unit):
  """Factor converting `unit` to mV, or None if it is not a voltage unit we know."""
  if not isinstance(unit, str):
    return None
  return _UNIT_TO_MV.get(unit.strip().lower().rstrip("s"))


def read_ecg(path: str, fs: float | None = None, *, units: str = "mV",
             strict_fs: bool = False) -> EcgRecord:
  """Reads a 12-lead (or partial) ECG; returns the signal in mV with canonical lead names.

  Dispatch by what `path` is:
    * WFDB: `X.hea`, `X.dat` (read with `X.hea` beside it), or the record name `X` (PTB-XL
      `records500/00000/00001_hr`, MIMIC-IV-ECG `files/p1000/p10000032/s40689238/40689238`).
    * DICOM 12-lead ECG waveform: `*.dcm` or any file with the DICM preamble.
    * GE MUSE XML, GE CardioSoft XML (UK Biobank 20205), HL7 aECG, Philips Sierra XML and
      SCP-ECG, recognised from the content whatever the extension (archive_ecg.py).
    * `.npy` of shape (12, T) or (T, 12) and `.csv` (a header row of lead names, one column per
      lead; or no header and 12 columns), both in standard lead order when unnamed, in `units`.
  `fs` is required for `.npy`/`.csv` ("sampling_rate" without it). WFDB and DICOM files carry their
  own rate, which wins over a given `fs` (a caller's default); `fs` only supplies a rate the file
  lacks (a WFDB header without one: not WFDB's silent 250 Hz default). With `strict_fs`, a given
  `fs` that disagrees with the file's raises "sampling_rate".
  """
  p = os.fspath(path)
  low = p.lower()
  if low.endswith((".hea", ".dat")):
    return _read_wfdb(p[:-4], p, fs, strict_fs)
  for ext, reader in ((".npy", _read_ecg_npy), (".csv", _read_ecg_csv)):
    if low.endswith(ext):
      if not os.path.isfile(p):
        _fail("missing_file", p, "no such file")
      return reader(p, fs, units)
  if low.endswith(".dcm"):
    if not os.path.isfile(p):
      _fail("missing_file", p, "no such file")
    return _read_dicom_ecg(p, fs, strict_fs)
  if not os.path.exists(p):
    if os.path.exists(p + ".hea") or os.path.exists(p + ".dat"):
      return _read_wfdb(p, p, fs, strict_fs)
    _fail("missing_file", p, "no such file (nor a WFDB record of that name)")
  if os.path.isdir(p):
    _fail("unsupported_format", p, "is a directory, not an ECG file")
  if _has_dicm_preamble(p):
    return _read_dicom_ecg(p, fs, strict_fs)
  from cardionets_jax.data import archive_ecg  # pylint: disable=import-outside-toplevel
  fmt = archive_ecg.sniff_format(p)  # (it imports this module: imported here, not above)
  if fmt is not None:
    return archive_ecg.read_archive_ecg(p, fmt, fs, strict_fs)
  if os.path.exists(p + ".hea"):
    return _read_wfdb(p, p, fs, strict_fs)
  _fail("unsupported_format", p, "not a recognised ECG format (WFDB .hea/.dat, DICOM waveform, "
        "GE MUSE / CardioSoft XML, HL7 aECG, Philips Sierra XML, SCP-ECG, .npy, .csv)")


# Bytes per sample of the WFDB formats whose file size follows exactly from the header.
_WFDB_BYTES = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
               "212": 1.5, "310": 4.0 / 3.0, "311": 4.0 / 3.0}


def _wfdb_header_fs(hea_path):
  """The sampling-frequency field of a WFDB header's record line as written (its number before
  any `/counter` or `(base)`), or None when the line states none (WFDB then defaults to 250)."""
  with open(hea_path, "r", errors="replace") as f:
    fields = next((l.split() for l in f if l.strip() and not l.startswith("#")), [])
  return fields[2].split("/")[0].split("(")[0] if len(fields) >= 3 else None


def _read_wfdb(record, shown, fs, strict_fs=False):
  header, fs_stated = _read_wfdb_header(record, shown)
  if fs_stated is not None:  # wfdb reads a rate of -500 as its 250 Hz default: check the text
    fs_stated = _check_fs(shown, fs_stated, "the WFDB header")
  directory = os.path.dirname(record)
  files = _wfdb_signal_files(header, directory, shown)
  sig_len = header.sig_len
  rec = _read_wfdb_record(record, shown, files, directory, sig_len)
  sig = rec.p_signal
  if sig is None or sig.ndim != 2:
    _fail("unreadable", shown, "WFDB record has no physical signal")
  if sig_len and sig.shape[0] != sig_len:
    _fail("length_mismatch", shown,
          f"header says {sig_len} samples but {sig.shape[0]} were read")
  names = list(rec.sig_name or [])
  if len(names) != sig.shape[1]:
    _fail("unreadable", shown, f"{sig.shape[1]} signals but {len(names)} signal names")
  leads = _canonical_leads(names, shown, "signal")
  scales = []
  for name, unit in zip(names, rec.units or ["mV"] * len(names)):
    scale = _unit_scale(unit if unit else "mV")    # WFDB's default unit is mV
    if scale is None:
      _fail("unreadable", shown, f"signal {name!r} is in units {unit!r}, not a voltage")
    scales.append(scale)
  file_fs = fs_stated
  fs_out = _reconcile_fs(shown, file_fs, fs, strict_fs)
  signal = np.asarray(sig, np.float64).T * np.asarray(scales)[:, None]
  return EcgRecord(signal=np.ascontiguousarray(signal), fs=fs_out, leads=leads, path=shown)


def _read_wfdb_header(record, shown):
  """The parsed header of `record`, and the sampling rate its text states (None: none)."""
  import wfdb  # pylint: disable=import-outside-toplevel

  hea = record + ".hea"
  if not os.path.isfile(hea):
    _fail("missing_file", shown, f"WFDB header {os.path.basename(hea)} not found")
  try:
    return wfdb.rdheader(record), _wfdb_header_fs(hea)
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", shown, f"cannot parse WFDB header {hea}: {type(e).__name__}: {e}")


def _wfdb_signal_files(header, directory, shown):
  """Signal file -> its channels, each file checked to exist and to hold what the header says."""
  files = {}
  if getattr(header, "seg_len", None) is None:       # (multi-segment records: wfdb checks)
    for ch, name in enumerate(header.file_name or []):
      files.setdefault(name, []).append(ch)
  for name in files:
    if not os.path.isfile(os.path.join(directory, name)):
      _fail("missing_file", shown, f"WFDB signal file {name} (named in the header) not found")
  sig_len = header.sig_len
  # The header's length against the data: a file shorter (truncated) or longer than it says.
  for name, chans in files.items():
    fmts = {header.fmt[c] for c in chans}
    spf = [(header.samps_per_frame or [1] * header.n_sig)[c] or 1 for c in chans]
    offset = (header.byte_offset or [None] * header.n_sig)[chans[0]] or 0
    skew = any((header.skew or [None] * header.n_sig)[c] for c in chans)
    if len(fmts) != 1 or skew or not sig_len or next(iter(fmts)) not in _WFDB_BYTES:
      continue
    bps = _WFDB_BYTES[next(iter(fmts))]
    expected = offset + math.ceil(sig_len * sum(spf) * bps)
    actual = os.path.getsize(os.path.join(directory, name))
    if actual != expected and not (bps != int(bps) and 0 < actual - expected < 4):
      held = int((actual - offset) / (sum(spf) * bps))
      _fail("length_mismatch", shown,
            f"header says {sig_len} samples x {len(chans)} signals ({expected} bytes of "
            f"format {next(iter(fmts))}) but {name} holds {actual} bytes (~{held} samples)")
  return files


def _read_wfdb_record(record, shown, files, directory, sig_len):
  """wfdb.rdrecord in physical units; data shorter than the header is length_mismatch."""
  import wfdb  # pylint: disable=import-outside-toplevel

  try:
    return wfdb.rdrecord(record, physical=True)
  except Exception as e:  # pylint: disable=broad-except
    short = any(os.path.getsize(os.path.join(directory, n)) > 0 for n in files) and (
        "not loaded correctly" in str(e) or isinstance(e, (EOFError, IndexError)))
    if short:
      _fail("length_mismatch", shown, f"WFDB data shorter than the header says ({sig_len} "
            f"samples): {type(e).__name__}: {e}")
    _fail("unreadable", shown, f"cannot read WFDB record: {type(e).__name__}: {e}")


def _dicom_waveform_dtype(item, ds):
  bits = int(item.WaveformBitsAllocated)
  interp = str(item.WaveformSampleInterpretation).strip()
  kinds = {(8, "SB"): "i1", (8, "UB"): "u1", (8, "MB"): "u1", (8, "AB"): "u1",
           (16, "SS"): "i2", (16, "US"): "u2", (32, "SL"): "i4", (32, "UL"): "u4",
           (64, "SV"): "i8", (64, "UV"): "u8"}
  if (bits, interp) not in kinds:
    raise ValueError(f"unsupported WaveformBitsAllocated={bits} / "
                     f"WaveformSampleInterpretation={interp!r}")
  little = True
  tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
  if tsyntax is not None:
    try:
      little = bool(tsyntax.is_little_endian)
    except (AttributeError, ValueError):
      little = True
  return np.dtype(("<" if little else ">") + kinds[(bits, interp)])


def _read_dicom_ecg(path, fs, strict_fs=False):
  where, item, channels, raw = _dicom_samples(*_read_dicom_waveforms(path), path)
  names, signal = [], np.empty(raw.shape[::-1], np.float64)
  for j, ch in enumerate(channels):
    name, signal[j] = _dicom_channel_mv(ch, j, raw[:, j], where, path)
    names.append(name)
  leads = _canonical_leads(names, path, "channel")
  file_fs = item.get("SamplingFrequency")
  file_fs = None if file_fs in (None, "") else _check_fs(path, file_fs, "SamplingFrequency")
  fs_out = _reconcile_fs(path, file_fs, fs, strict_fs)
  return EcgRecord(signal=signal, fs=fs_out, leads=leads, path=path)


def _read_dicom_waveforms(path):
  """The dataset and its WaveformSequence; a DICOM object without one is not an ECG."""
  import pydicom  # pylint: disable=import-outside-toplevel

  try:
    ds = pydicom.dcmread(path, force=True)
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot parse DICOM: {type(e).__name__}: {e}")
  groups = ds.get("WaveformSequence")
  if not groups:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)+", sop):
      _fail("unreadable", path, "not a valid DICOM object (no valid SOPClassUID and no "
            "WaveformSequence)")
    _fail("unsupported_format", path,
          f"DICOM object (SOPClassUID {sop}) has no WaveformSequence: not an ECG waveform")
  return ds, groups


def _dicom_samples(ds, groups, path):
  """The multiplex group to read (RHYTHM, else the longest) as (where, item, channel
  definitions, raw (samples, channels) float64), its WaveformData checked against its size."""
  try:
    labels = [str(g.get("MultiplexGroupLabel", "")).strip().upper() for g in groups]
    if "RHYTHM" in labels:
      gi = labels.index("RHYTHM")
    else:
      gi = max(range(len(groups)), key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0)))
    item = groups[gi]
    n_ch = int(item.NumberOfWaveformChannels)
    n_s = int(item.NumberOfWaveformSamples)
    dtype = _dicom_waveform_dtype(item, ds)
    data = item.get("WaveformData")
    channels = list(item.get("ChannelDefinitionSequence") or [])
  except RecordError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"bad WaveformSequence: {type(e).__name__}: {e}")
  where = f"multiplex group {gi} ({labels[gi] or 'unlabelled'})"
  if data is None:
    _fail("unreadable", path, f"{where} has no WaveformData")
  if len(channels) != n_ch:
    _fail("unreadable", path, f"{where}: NumberOfWaveformChannels={n_ch} but "
          f"{len(channels)} items in ChannelDefinitionSequence")
  need = n_s * n_ch * dtype.itemsize
  if len(data) < need:
    _fail("length_mismatch", path,
          f"{where}: NumberOfWaveformSamples={n_s} x {n_ch} channels needs {need} bytes of "
          f"WaveformData but it holds {len(data)} "
          f"(~{len(data) // (n_ch * dtype.itemsize)} samples)")
  raw = np.frombuffer(bytes(data[:need]), dtype=dtype).reshape(n_s, n_ch).astype(np.float64)
  return where, item, channels, raw


def _dicom_channel_mv(ch, j, raw, where, path):
  """One channel definition applied to its raw samples: (lead name or label, values in mV)."""
  src = (ch.get("ChannelSourceSequence") or [None])[0]
  meaning = str(src.get("CodeMeaning", "")) if src is not None else ""
  value = str(src.get("CodeValue", "")) if src is not None else ""
  lead = canonical_lead(meaning) or _lead_from_code(value)
  name = lead if lead is not None else (meaning or value or f"channel {j}")
  label = meaning or value or f"channel {j}"
  sens = ch.get("ChannelSensitivity")
  if sens is None or str(sens).strip() == "":
    _fail("unreadable", path, f"{where}, channel {label!r}: no ChannelSensitivity, so the "
          "samples cannot be converted to mV")
  corr = ch.get("ChannelSensitivityCorrectionFactor")
  base = ch.get("ChannelBaseline")
  unit_item = (ch.get("ChannelSensitivityUnitsSequence") or [None])[0]
  unit = None if unit_item is None else (unit_item.get("CodeValue") or
                                         unit_item.get("CodeMeaning"))
  scale = _unit_scale(unit)
  if scale is None:
    _fail("unreadable", path, f"{where}, channel {label!r}: sensitivity units {unit!r} "
          "are not a voltage unit (uV, mV, V)")
  values = raw * float(sens) * (1.0 if corr in (None, "") else float(corr))
  values = values + (0.0 if base in (None, "") else float(base))
  return name, values * scale


def _read_ecg_npy(path, fs, units):
  fs = _reconcile_fs(path, None, fs)
  try:
    arr = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except  (object arrays land here: no unpickling)
    _fail("unreadable", path, f"cannot load .npy: {type(e).__name__}: {e}")
  arr = _as_float_array(arr, path)
  if arr.ndim == 2 and arr.shape[1] == 12 and arr.shape[0] != 12:
    arr = arr.T
  elif not (arr.ndim == 2 and arr.shape[0] == 12 and arr.shape[1] != 12):
    _fail("unreadable", path, f"array of shape {arr.shape}: expected (12, T) or (T, 12) in "
          "standard lead order")
  scale = _unit_scale(units)
  if scale is None:
    raise ValueError(f"units={units!r} is not a voltage unit")
  return EcgRecord(signal=np.ascontiguousarray(arr * scale), fs=fs,
                   leads=list(STANDARD_LEADS), path=path)


def _parse_float(cell):
  cell = cell.strip()
  return float("nan") if cell == "" else float(cell)


def _read_ecg_csv(path, fs, units):
  fs = _reconcile_fs(path, None, fs)
  try:
    with open(path, "r", newline="", encoding="utf-8-sig") as f:
      rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot read CSV: {type(e).__name__}: {e}")
  if not rows:
    _fail("unreadable", path, "empty CSV")
  header = None
  try:
    [_parse_float(c) for c in rows[0]]
  except ValueError:
    header, rows = [c.strip() for c in rows[0]], rows[1:]
  ncol = len(header) if header is not None else len(rows[0])
  if header is None and ncol != 12:
    _fail("unreadable", path, f"no header row and {ncol} columns: a CSV without lead names "
          "must have 12 columns in standard order")
  if not rows:
    _fail("unreadable", path, "CSV has a header but no samples")
  leads = (_canonical_leads(header, path, "column") if header is not None
           else list(STANDARD_LEADS))
  data = np.empty((len(rows), ncol), np.float64)
  for i, row in enumerate(rows):
    line = i + (2 if header is not None else 1)
    if len(row) != ncol:
      _fail("unreadable", path, f"line {line} has {len(row)} fields, expected {ncol}")
    try:
      data[i] = [_parse_float(c) for c in row]
    except ValueError as e:
      _fail("unreadable", path, f"line {line}: {e}")
  scale = _unit_scale(units)
  if scale is None:
    raise ValueError(f"units={units!r} is not a voltage unit")
  return EcgRecord(signal=np.ascontiguousarray(data.T * scale), fs=fs, leads=leads, path=path)
