"""ECG and cine-CMR preprocessing: pure, configurable numpy/scipy functions.

ECG (docs/method.md, Preprocessing): quality checks -> standard lead order -> zero-phase Butterworth band-pass
(order 5, 0.67-40 Hz, `sosfiltfilt`) at the native rate -> polyphase resampling to 250 Hz ->
centre-crop / end-pad to 10 s -> float32 (12, 2500) mV. (The z-scoring over (leads, time) belongs to
the model input pipeline, not to this stage.)

CMR: 3-D and frame-count checks -> periodic linear resampling of the cardiac cycle to 50 frames ->
centre square crop and resize to 96 x 96 -> robust (percentile) rescale to uint8.

Failures raise `readers.RecordError` with a reason code and a message naming the file (`path`)
and the lead where relevant.
"""

from __future__ import annotations

import dataclasses
import fractions

import numpy as np
from scipy import signal as sps

from cardionets_jax.data.readers import STANDARD_LEADS, EcgRecord, RecordError, canonical_lead

TARGET_FS = 250

# Limb leads as linear combinations of (I, II) (Einthoven: III = II - I; Goldberger:
# aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2).
_LIMB_COEF = {
    "I": (1.0, 0.0), "II": (0.0, 1.0), "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0),
}


def _where(path):
  return f"{path}: " if path else ""


# ------------------------------------------------------------------------------------------------
# ECG
# ------------------------------------------------------------------------------------------------

def rational_ratio(fs_in, fs_out):
  """(up, down, rate error in ppm): the rational up / down that resampling by fs_out / fs_in uses.

  Exact (error 0) for integer rates, whatever they are (2048 -> 250 is 125/1024); a fractional
  rate gets the nearest ratio with a denominator up to 1000, and its error is reported.
  """
  if float(fs_in).is_integer() and float(fs_out).is_integer():
    frac = fractions.Fraction(int(fs_out), int(fs_in))
  else:
    frac = fractions.Fraction(float(fs_out) / float(fs_in)).limit_denominator(1000)
  error = (frac.numerator / frac.denominator) / (float(fs_out) / float(fs_in)) - 1.0
  return frac.numerator, frac.denominator, 1e6 * error


def resample(signal, fs_in, fs_out=TARGET_FS) -> np.ndarray:
  """Polyphase resampling along the last axis by the rational up/down of `rational_ratio`.

  Exact for every integer rate (500 -> 250 is 1/2, 360 -> 250 is 25/36, 2048 -> 250 is
  125/1024). Output sample k is at time k / fs_out. The signal is extended by a line through its
  end points ("line" padding), which keeps the anti-aliasing filter from ringing at the ends.
  Identity (a float64 copy) when the rates are equal.
  """
  x = np.asarray(signal, np.float64)
  if not (np.isfinite(fs_in) and np.isfinite(fs_out) and fs_in > 0 and fs_out > 0):
    raise ValueError(f"bad sampling rates fs_in={fs_in}, fs_out={fs_out}")
  if float(fs_in) == float(fs_out):
    return x.copy()
  up, down, _ = rational_ratio(fs_in, fs_out)
  if up == down:
    return x.copy()
  return sps.resample_poly(x, up, down, axis=-1, padtype="line")


def bandpass(signal, fs, low=0.67, high=40.0, order=5, *, path="") -> np.ndarray:
  """Zero-phase Butterworth band-pass along the last axis (the paper's filter).

  `butter(order, [low, high], btype="bandpass", fs=fs, output="sos")` applied forwards and
  backwards with `sosfiltfilt` (so the effective order doubles and the phase is zero).
  A rate whose Nyquist frequency is not above `high` raises RecordError("sampling_rate"); a signal
  too short for the filter's edge padding raises RecordError("too_short").
  """
  x = np.asarray(signal, np.float64)
  if not 0 < low < high:
    raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
  if not fs / 2.0 > high:
    raise RecordError("sampling_rate", f"{_where(path)}fs={fs:g} Hz is too low for the "
                      f"{high:g} Hz low-pass (Nyquist {fs / 2:g} Hz)")
  sos = sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
  try:
    return sps.sosfiltfilt(sos, x, axis=-1)
  except ValueError as e:
    raise RecordError("too_short", f"{_where(path)}{x.shape[-1]} samples are too few to "
                      f"band-pass filter: {e}") from e


def to_standard_order(signal, leads, allow_missing=False, *, path=""
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Reorders (n_leads, T) into STANDARD_LEADS order: ((12, T) float64, lead_mask (12,) uint8).

  Missing limb leads are derived when two limb leads are present (all six follow from any two by
  Einthoven/Goldberger; (I, II) is used when present): in particular a record of the 8 independent
  leads (I, II, V1-V6) gets III, aVR, aVL and aVF derived and marked present (mask 1). Leads that
  remain missing are zero-filled with mask 0 when `allow_missing`, else RecordError
  ("too_few_leads") names them. Unknown / duplicate names raise "unknown_lead" / "duplicate_lead".
  """
  x = np.asarray(signal, np.float64)
  if x.ndim != 2 or x.shape[0] != len(leads):
    raise ValueError(f"signal of shape {x.shape} does not match {len(leads)} lead names")
  index = {}
  for i, name in enumerate(leads):
    lead = canonical_lead(name)
    if lead is None:
      raise RecordError("unknown_lead", f"{_where(path)}unknown lead name {name!r}")
    if lead in index:
      raise RecordError("duplicate_lead", f"{_where(path)}duplicate lead {lead!r} "
                        f"({leads[index[lead]]!r} and {name!r})")
    index[lead] = i
  out = np.zeros((len(STANDARD_LEADS), x.shape[1]), np.float64)
  mask = np.zeros(len(STANDARD_LEADS), np.uint8)
  for k, lead in enumerate(STANDARD_LEADS):
    if lead in index:
      out[k] = x[index[lead]]
      mask[k] = 1
  limb_present = [l for l in _LIMB_COEF if l in index]
  limb_missing = [l for l in _LIMB_COEF if l not in index]
  if limb_missing and len(limb_present) >= 2:
    a, b = ("I", "II") if {"I", "II"} <= set(limb_present) else limb_present[:2]
    basis = np.array([_LIMB_COEF[a], _LIMB_COEF[b]])       # rows: a, b in terms of (I, II)
    i_ii = np.linalg.solve(basis, np.stack([x[index[a]], x[index[b]]]))   # (2, T): I, II
    for lead in limb_missing:
      k = STANDARD_LEADS.index(lead)
      out[k] = np.asarray(_LIMB_COEF[lead]) @ i_ii
      mask[k] = 1
  missing = [l for l, m in zip(STANDARD_LEADS, mask) if not m]
  if missing and not allow_missing:
    raise RecordError("too_few_leads", f"{_where(path)}missing leads {missing} (found "
                      f"{[canonical_lead(n) for n in leads]})")
  return out, mask


def crop_or_pad(signal, length, min_length=None, *, path="") -> np.ndarray:
  """Centre-crops the last axis to `length`, or zero-pads it at the end when it is shorter.

  Shorter than `min_length` (default `length`) raises RecordError("too_short"). Pad after filtering,
  so the zeros do not enter the filter.
  """
  x = np.asarray(signal)
  n = x.shape[-1]
  min_length = length if min_length is None else min_length
  if n < min_length:
    raise RecordError("too_short", f"{_where(path)}{n} samples, fewer than the minimum "
                      f"{min_length} (target {length})")
  if n >= length:
    start = (n - length) // 2
    return x[..., start:start + length].copy()
  pad = [(0, 0)] * (x.ndim - 1) + [(0, length - n)]
  return np.pad(x, pad)


def _runs(bad):
  """(start, length) of the runs of True in a 1-D boolean array."""
  d = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
  starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
  return list(zip(starts.tolist(), (ends - starts).tolist()))


# Amplitude limits of an ECG in mV: the median absolute deviation of a lead is ~0.02-0.3 mV and
# QRS peaks stay below ~10 mV; microvolts or ADC counts are 100-1000x larger.
MAX_MEDIAN_MV = 2.0
MAX_PEAK_MV = 30.0


def check_ecg(signal, fs, *, fs_range=(50.0, 5000.0), max_nonfinite_run=0, flat_std_mv=0.005,
              max_median_mv=MAX_MEDIAN_MV, max_peak_mv=MAX_PEAK_MV, saturation_s=0.04,
              path="", leads=None) -> dict:
  """Quality checks of a raw (n_leads, T) ECG in mV; raises RecordError or returns flags.

  * "sampling_rate": fs outside `fs_range` (inclusive).
  * "nonfinite": a NaN/Inf run longer than `max_nonfinite_run` samples (the message names the lead,
    the first sample index and the run length), or a lead with no finite sample. Shorter runs are
    linearly interpolated from their finite neighbours (held constant at the record ends) and
    reported in `interpolated_runs` as (lead, start, length).
  * "flat_lead": a lead whose standard deviation is below `flat_std_mv` (named, with its std).
  * "amplitude_units": amplitudes no ECG in mV has: a median over leads of the median absolute
    deviation from the lead's median above `max_median_mv`, or a peak deviation above
    `max_peak_mv` (microvolts or raw ADC counts labelled mV).
  * flag "saturated" (kept, listed in "flags"): a run of at least `saturation_s` seconds held at
    a lead's extreme value, away from its baseline: the amplifier's or the ADC's limit.

  Returns {"signal": the repaired float64 copy, "n_nonfinite", "n_interpolated",
  "interpolated_runs", "lead_std_mv", "min_lead_std_mv", "max_abs_mv"}; everything but "signal"
  is JSON-serialisable.
  """
  x = np.array(signal, np.float64)
  if x.ndim != 2:
    raise ValueError(f"expected (n_leads, T), got shape {x.shape}")
  names = list(leads) if leads is not None else (
      list(STANDARD_LEADS) if x.shape[0] == 12 else [f"lead {i}" for i in range(x.shape[0])])
  lo, hi = fs_range
  if not (np.isfinite(fs) and lo <= fs <= hi):
    raise RecordError("sampling_rate", f"{_where(path)}sampling rate {fs:g} Hz is outside "
                      f"the accepted range [{lo:g}, {hi:g}] Hz")
  n_nonfinite = int((~np.isfinite(x)).sum())
  interpolated = _repair_nonfinite(x, max_nonfinite_run, path, names)
  std = x.std(axis=1)
  flat = [f"{names[i]} (std {std[i]:.2g} mV)" for i in np.flatnonzero(std < flat_std_mv)]
  if flat:
    raise RecordError("flat_lead", f"{_where(path)}flat lead(s) {', '.join(flat)}: below "
                      f"{flat_std_mv:g} mV")
  _check_amplitude(x, max_median_mv, max_peak_mv, path, names)
  saturated = _saturated_runs(x, max(3, int(round(saturation_s * fs))), names)
  return {
      "signal": x,
      "flags": [dict(code="saturated", lead=lead, start=start, length=length)
                for lead, start, length in saturated],
      "n_nonfinite": n_nonfinite,
      "n_interpolated": int(sum(n for _, _, n in interpolated)),
      "interpolated_runs": interpolated,
      "lead_std_mv": [float(s) for s in std],
      "min_lead_std_mv": float(std.min()) if std.size else 0.0,
      "max_abs_mv": float(np.abs(x).max()) if x.size else 0.0,
  }


def _repair_nonfinite(x, max_run, path, names):
  """Interpolates NaN/Inf runs of at most `max_run` samples in place; returns the runs."""
  bad = ~np.isfinite(x)
  interpolated = []
  t = np.arange(x.shape[1])
  for i in np.flatnonzero(bad.any(axis=1)):
    if bad[i].all():
      raise RecordError("nonfinite", f"{_where(path)}lead {names[i]} has no finite sample")
    runs = _runs(bad[i])
    for start, length in runs:
      if length > max_run:
        raise RecordError("nonfinite", f"{_where(path)}lead {names[i]}: {length} non-finite "
                          f"samples (NaN/Inf) from sample {start} (at most {max_run} are "
                          "interpolated)")
    good = ~bad[i]
    x[i, bad[i]] = np.interp(t[bad[i]], t[good], x[i, good])
    interpolated += [(names[i], int(s), int(n)) for s, n in runs]
  return interpolated


def _check_amplitude(x, max_median_mv, max_peak_mv, path, names):
  deviation = np.abs(x - np.median(x, axis=1, keepdims=True))
  typical = float(np.median(np.median(deviation, axis=1)))
  lead, peak = int(np.argmax(deviation.max(axis=1))), float(deviation.max())
  if typical > max_median_mv or peak > max_peak_mv:
    raise RecordError("amplitude_units", f"{_where(path)}amplitudes no ECG in mV has (typical "
                      f"{typical:.3g} mV, peak {peak:.3g} mV in lead {names[lead]}; limits "
                      f"{max_median_mv:g} and {max_peak_mv:g} mV): microvolts or ADC counts "
                      "labelled mV?")


def _saturated_runs(x, min_run, names):
  """(lead, start, length) of runs of >= min_run samples held at a lead's max or min, where that
  extreme is more than a quarter of the lead's range from its median (clipping, not a flat baseline)."""
  out = []
  for i, lead in enumerate(x):
    median, span = np.median(lead), np.ptp(lead)
    for extreme in (lead.max(), lead.min()):
      if abs(extreme - median) <= 0.25 * span:
        continue
      out += [(names[i], int(s), int(n)) for s, n in _runs(lead == extreme) if n >= min_run]
  return out


@dataclasses.dataclass(frozen=True)
class EcgConfig:
  fs: int = TARGET_FS
  seconds: float = 10.0
  min_seconds: float = 9.0          # the encoder's crop is 9 s = 2250 samples at 250 Hz
  low: float = 0.67
  high: float = 40.0
  order: int = 5
  allow_missing_leads: bool = False
  fs_range: tuple = (50.0, 5000.0)
  max_nonfinite_run: int = 0
  flat_std_mv: float = 0.005
  max_median_mv: float = MAX_MEDIAN_MV
  max_peak_mv: float = MAX_PEAK_MV


def checked_leads(record: EcgRecord, cfg: EcgConfig = EcgConfig()):
  """The checks and lead harmonisation every preprocessing order starts with: (float64 (12, T)
  at the native rate, lead_mask (12,), info with the checks' flags and the leads' provenance)."""
  path, fs_in = record.path, float(record.fs)
  flags = check_ecg(record.signal, fs_in, fs_range=cfg.fs_range,
                    max_nonfinite_run=cfg.max_nonfinite_run, flat_std_mv=cfg.flat_std_mv,
                    max_median_mv=cfg.max_median_mv, max_peak_mv=cfg.max_peak_mv,
                    path=path, leads=record.leads)
  x = flags.pop("signal")
  n_in = x.shape[1]
  if n_in / fs_in < cfg.min_seconds - 0.5 / cfg.fs:
    raise RecordError("too_short", f"{_where(path)}{n_in} samples at {fs_in:g} Hz = "
                      f"{n_in / fs_in:.3g} s, shorter than the minimum {cfg.min_seconds:g} s")
  x, mask = to_standard_order(x, record.leads, cfg.allow_missing_leads, path=path)
  found = [canonical_lead(n) for n in record.leads]
  return x, mask, {"fs_in": fs_in, "fs_out": cfg.fs, "leads_found": found,
                   "leads_derived": [l for l, m in zip(STANDARD_LEADS, mask) if m and l not in found],
                   "leads_missing": [l for l, m in zip(STANDARD_LEADS, mask) if not m],
                   "n_samples_in": int(n_in), **flags}


def preprocess_ecg(record: EcgRecord, cfg: EcgConfig = EcgConfig()
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
  """A raw record -> (float32 (12, cfg.seconds * cfg.fs) mV, lead_mask uint8 (12,), info).

  check -> standard order (deriving limb leads) -> band-pass at the native rate -> resample to
  cfg.fs -> centre-crop / end-pad; at cfg.fs already, only filtered. Release: release_preprocess.
  """
  path, fs_in = record.path, float(record.fs)
  length = int(round(cfg.seconds * cfg.fs))
  min_length = int(round(cfg.min_seconds * cfg.fs))
  x, mask, info = checked_leads(record, cfg)
  # Band-pass before resampling, at the native rate: the 40 Hz low-pass then removes content
  # above the 125 Hz Nyquist of 250 Hz before the rate change (resample_poly's own anti-aliasing
  # filter comes on top), and the filter is the one the paper applies, whatever the input rate.
  x = bandpass(x, fs_in, cfg.low, cfg.high, cfg.order, path=path)
  x = x * mask[:, None]                     # zero-filled leads stay exactly zero
  resampled = float(fs_in) != float(cfg.fs)
  if resampled:
    x = resample(x, fs_in, cfg.fs)
  n_res = x.shape[1]
  x = crop_or_pad(x, length, min_length, path=path)
  info.update(
      resampled=resampled,
      resample_ratio="{}/{}".format(*rational_ratio(fs_in, cfg.fs)[:2]) if resampled else "1/1",
      resample_rate_error_ppm=rational_ratio(fs_in, cfg.fs)[2] if resampled else 0.0,
      n_samples_resampled=int(n_res), n_cropped=int(max(n_res - length, 0)),
      n_padded=int(max(length - n_res, 0)))
  return x.astype(np.float32), mask, info


# ------------------------------------------------------------------------------------------------
# CMR
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CmrConfig:
  frames: int = 50
  size: int = 96
  min_frames: int = 10
  max_frames: int = 200
  crop: str = "center"
  low_pct: float = 0.5
  high_pct: float = 99.5


def resample_frames(cine, frames) -> np.ndarray:
  """(F, H, W) -> (frames, H, W) by linear interpolation over one periodic cardiac cycle.

  Output frame k sits at input time k * F / frames; the interval after the last frame wraps to
  frame 0. `frames == F` returns the input (as float32) unchanged.
  """
  x = np.asarray(cine, np.float32)
  n = x.shape[0]
  if frames == n:
    return x.copy()
  t = np.arange(frames, dtype=np.float64) * n / frames
  i0 = np.floor(t).astype(np.int64)
  w = (t - i0).astype(np.float32)[:, None, None]
  i0 %= n
  i1 = (i0 + 1) % n
  return (1.0 - w) * x[i0] + w * x[i1]


def _resize_matrix(n_in, n_out):
  """(n_out, n_in) linear map: exact area averaging when shrinking, bilinear when enlarging."""
  if n_out == n_in:
    return np.eye(n_in, dtype=np.float64)
  m = np.zeros((n_out, n_in), np.float64)
  if n_out < n_in:
    scale = n_in / n_out
    edges = np.arange(n_out + 1) * scale
    for j in range(n_out):
      a, b = edges[j], edges[j + 1]
      for i in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
        m[j, i] = (min(b, i + 1) - max(a, i)) / scale
  else:
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = pos - i0
    m[np.arange(n_out), i0] += 1 - w
    m[np.arange(n_out), i1] += w
  return m


def crop_and_resize(cine, size, crop="center") -> np.ndarray:
  """Centre-crops each frame to a square, then resizes it to (size, size), float32.

  The resize is separable and exact: area averaging when shrinking (no aliasing), bilinear with
  half-pixel centres when enlarging.
  """
  if crop != "center":
    raise ValueError(f"unsupported crop {crop!r} (only 'center')")
  x = np.asarray(cine, np.float64)
  _, h, w = x.shape
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  x = x[:, top:top + s, left:left + s]
  if s != size:
    r = _resize_matrix(s, size)
    x = r @ x @ r.T
  return x.astype(np.float32)


def to_uint8(cine, low_pct=0.5, high_pct=99.5) -> np.ndarray:
  """Maps the [low_pct, high_pct] percentiles of the whole cine to [0, 255] (clipped), uint8.

  A constant cine maps to zeros.
  """
  x = np.asarray(cine, np.float64)
  lo, hi = np.percentile(x, [low_pct, high_pct])
  if not hi > lo:
    return np.zeros(x.shape, np.uint8)
  y = (x - lo) * (255.0 / (hi - lo))
  return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def preprocess_cmr(cine, cfg: CmrConfig = CmrConfig(), path="") -> np.ndarray:
  """A (F, H, W) cine -> uint8 (cfg.frames, cfg.size, cfg.size).

  Raises RecordError "cmr_ndim" (not 3-D), "cmr_frames" (F outside [min_frames, max_frames]),
  "nonfinite" (NaN/Inf pixels) and "unreadable" (a constant image: no content).
  """
  x = np.asarray(cine)
  if x.ndim != 3:
    raise RecordError("cmr_ndim", f"{_where(path)}cine of shape {x.shape}: expected 3-D "
                      "(frames, height, width)")
  n = x.shape[0]
  if not cfg.min_frames <= n <= cfg.max_frames:
    raise RecordError("cmr_frames", f"{_where(path)}{n} frames, outside the accepted "
                      f"[{cfg.min_frames}, {cfg.max_frames}]")
  x = x.astype(np.float32)
  bad = ~np.isfinite(x)
  if bad.any():
    f = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
    raise RecordError("nonfinite", f"{_where(path)}{int(bad.sum())} non-finite pixels "
                      f"(first in frame {f})")
  if float(x.max()) == float(x.min()):
    raise RecordError("unreadable", f"{_where(path)}constant cine (all pixels "
                      f"{float(x.min()):g}): no image content")
  x = resample_frames(x, cfg.frames)
  x = crop_and_resize(x, cfg.size, cfg.crop)
  return to_uint8(x, cfg.low_pct, cfg.high_pct)
