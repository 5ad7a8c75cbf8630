"""Tests of cardionets_jax.data.preprocess against scipy and analytic signals."""

import fractions

import numpy as np
import pytest
from scipy import signal as sps

from cardionets_jax.data import preprocess as pp
from cardionets_jax.data import synthetic
from cardionets_jax.data.readers import STANDARD_LEADS, EcgRecord, RecordError, read_ecg
from tests import fixtures


def _record(x, fs, leads=STANDARD_LEADS, path="mem://rec"):
  return EcgRecord(signal=np.asarray(x, np.float64), fs=float(fs), leads=list(leads), path=path)


def _interior_gain(fs, freq, seconds=60.0):
  t = np.arange(int(seconds * fs)) / fs
  x = np.sin(2 * np.pi * freq * t)
  y = pp.bandpass(x, fs)
  k = int(15 * fs)                                           # away from the edges
  return np.sqrt(np.mean(y[k:-k] ** 2) / np.mean(x[k:-k] ** 2))


# ------------------------------------------------------------------------------------------------
# Band-pass
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", [250, 500, 1000])
def test_bandpass_is_scipy_butterworth_filtfilt(fs):
  x = np.random.default_rng(fs).normal(size=(12, 10 * fs))
  sos = sps.butter(5, [0.67, 40], "bandpass", fs=fs, output="sos")
  np.testing.assert_allclose(pp.bandpass(x, fs), sps.sosfiltfilt(sos, x), rtol=0, atol=1e-12)
  np.testing.assert_allclose(pp.bandpass(x[3], fs), sps.sosfiltfilt(sos, x[3]), atol=1e-12)
  # and the parameters matter
  other = sps.sosfiltfilt(sps.butter(3, [0.5, 40], "bandpass", fs=fs, output="sos"), x)
  assert np.abs(pp.bandpass(x, fs) - other).max() > 1e-3


@pytest.mark.parametrize("fs", [250, 500])
def test_bandpass_frequency_response(fs):
  assert abs(_interior_gain(fs, 10.0) - 1.0) < 0.01          # pass band: gain ~1
  assert abs(_interior_gain(fs, 5.0) - 1.0) < 0.01
  for f in (0.1, 60.0):                                      # stop bands: > 20 dB down
    assert 20 * np.log10(_interior_gain(fs, f)) < -20.0, f
  assert 20 * np.log10(_interior_gain(fs, 0.67)) == pytest.approx(-6.02, abs=0.1)   # -3 dB x 2
  assert 20 * np.log10(_interior_gain(fs, 40.0)) == pytest.approx(-6.02, abs=0.1)


def test_bandpass_is_zero_phase():
  fs = 500
  t = np.arange(10 * fs + 1) / fs
  pulse = np.exp(-0.5 * ((t - 5.0) / 0.02) ** 2)             # symmetric about sample 2500
  y = pp.bandpass(pulse, fs)
  assert int(np.argmax(y)) == 2500 and y[2500] > 0.5
  # symmetric up to the filter's edge transients (measured 1e-6 for a 10 s record)
  np.testing.assert_allclose(y[2500 - 400:2500], y[2501:2501 + 400][::-1], atol=1e-5)
  causal = sps.sosfilt(sps.butter(5, [0.67, 40], "bandpass", fs=fs, output="sos"), pulse)
  assert int(np.argmax(causal)) - 2500 >= 3                  # a one-way filter delays it (8 ms)


def test_bandpass_rejects_low_rates_and_short_signals():
  with pytest.raises(RecordError) as e:
    pp.bandpass(np.zeros((12, 600)), 60, path="low.hea")
  assert e.value.reason == "sampling_rate" and "low.hea" in str(e.value) and "60" in str(e.value)
  with pytest.raises(RecordError) as e:
    pp.bandpass(np.ones((12, 20)), 250, path="tiny.npy")
  assert e.value.reason == "too_short" and "tiny.npy" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Resampling
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fs_in", [500, 1000, 360, 2048, 4096])
def test_resample_sine_matches_analytic(fs_in):
  # Output sample k lies at k / 250 s exactly, whatever the integer input rate: a rate error of
  # 9.9 ppm (2048 Hz by a 99/811 approximation) would move the last samples by 1e-4 s, 3e-3 in
  # value here.
  t = np.arange(10 * fs_in) / fs_in
  x = np.stack([np.sin(2 * np.pi * 5 * t), np.cos(2 * np.pi * 3 * t)])
  y = pp.resample(x, fs_in, 250)
  assert y.shape == (2, 2500)
  t2 = np.arange(2500) / 250
  ref = np.stack([np.sin(2 * np.pi * 5 * t2), np.cos(2 * np.pi * 3 * t2)])
  assert np.abs(y - ref)[:, 10:-10].max() < 1e-3             # measured 4.6e-4 (1 kHz)


def test_resample_identity_and_ratio():
  x = np.random.default_rng(0).normal(size=(12, 2500))
  y = pp.resample(x, 250, 250)
  assert y is not x
  np.testing.assert_array_equal(y, x)
  assert pp.rational_ratio(500, 250) == (1, 2, 0.0) and pp.rational_ratio(1000, 250) == (1, 4, 0.0)
  assert pp.rational_ratio(360, 250) == (25, 36, 0.0) and pp.rational_ratio(128, 250) == (125, 64, 0.0)
  for fs in (2048, 4096, 1024, 977, 8000):   # any integer rate: the exact ratio
    up, down, error = pp.rational_ratio(fs, 250)
    assert fractions.Fraction(up, down) == fractions.Fraction(250, fs) and error == 0.0
  up, down, error = pp.rational_ratio(499.7, 250)   # fractional: nearest ratio, error reported
  assert down <= 1000 and abs(error - 1e6 * ((up / down) / (250 / 499.7) - 1)) < 1e-9
  assert pp.resample(x, 500, 250).shape == (12, 1250)


# ------------------------------------------------------------------------------------------------
# Leads
# ------------------------------------------------------------------------------------------------

def test_to_standard_order_reorders_mimic_order():
  x = fixtures.ecg_signal(250)
  mimic = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
  idx = [STANDARD_LEADS.index(l) for l in mimic]
  out, mask = pp.to_standard_order(x[idx], mimic)
  np.testing.assert_array_equal(out, x)
  assert mask.dtype == np.uint8 and mask.tolist() == [1] * 12


def test_to_standard_order_missing_leads():
  x = fixtures.ecg_signal(250)
  keep = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]                       # V5, V6 missing
  with pytest.raises(RecordError) as e:
    pp.to_standard_order(x[keep], [STANDARD_LEADS[i] for i in keep], path="p.hea")
  assert e.value.reason == "too_few_leads"
  assert "V5" in str(e.value) and "V6" in str(e.value) and "p.hea" in str(e.value)
  out, mask = pp.to_standard_order(x[keep], [STANDARD_LEADS[i] for i in keep], allow_missing=True)
  assert mask.tolist() == [1] * 10 + [0, 0]
  np.testing.assert_array_equal(out[:10], x[:10])
  assert not out[10:].any()


@pytest.mark.parametrize("pair", [("I", "II"), ("II", "aVL"), ("III", "aVR"), ("aVF", "I")])
def test_limb_leads_derived(pair):
  x = fixtures.ecg_signal(500, seed=7)
  keep = [STANDARD_LEADS.index(l) for l in pair] + list(range(6, 12))
  out, mask = pp.to_standard_order(x[keep], [STANDARD_LEADS[i] for i in keep])
  assert mask.tolist() == [1] * 12
  np.testing.assert_allclose(out, x, atol=1e-12)
  # Einthoven / Goldberger
  np.testing.assert_allclose(out[0] + out[2], out[1], atol=1e-12)
  np.testing.assert_allclose(out[3] + out[4] + out[5], 0, atol=1e-12)


def test_to_standard_order_names():
  x = np.ones((2, 10))
  with pytest.raises(RecordError) as e:
    pp.to_standard_order(x, ["I", "Foo"], allow_missing=True)
  assert e.value.reason == "unknown_lead" and "Foo" in str(e.value)
  with pytest.raises(RecordError) as e:
    pp.to_standard_order(x, ["AVR", "aVR"], allow_missing=True)
  assert e.value.reason == "duplicate_lead" and "aVR" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Crop / pad and checks
# ------------------------------------------------------------------------------------------------

def test_crop_or_pad():
  x = np.arange(30, dtype=float)[None].repeat(2, 0)
  np.testing.assert_array_equal(pp.crop_or_pad(x, 20)[0], np.arange(5, 25))   # centre crop
  np.testing.assert_array_equal(pp.crop_or_pad(x, 30), x)
  y = pp.crop_or_pad(x, 36, min_length=28)
  assert y.shape == (2, 36)
  np.testing.assert_array_equal(y[:, :30], x)
  assert not y[:, 30:].any()                                  # zeros at the end
  with pytest.raises(RecordError) as e:
    pp.crop_or_pad(x, 36, path="s.npy")                       # min_length defaults to length
  assert e.value.reason == "too_short" and "s.npy" in str(e.value) and "30" in str(e.value)
  with pytest.raises(RecordError):
    pp.crop_or_pad(x, 40, min_length=31)


def test_check_ecg_interpolates_short_runs():
  x = fixtures.ecg_signal(250)
  x[4, 100:103] = np.nan
  x[9, 0:2] = np.inf
  with pytest.raises(RecordError) as e:
    pp.check_ecg(x, 250, path="r.hea")
  assert e.value.reason == "nonfinite"
  assert "aVL" in str(e.value) and "100" in str(e.value) and "r.hea" in str(e.value)
  flags = pp.check_ecg(x, 250, max_nonfinite_run=3)
  y = flags["signal"]
  assert np.isfinite(y).all() and flags["n_nonfinite"] == 5 and flags["n_interpolated"] == 5
  assert flags["interpolated_runs"] == [("aVL", 100, 3), ("V4", 0, 2)]
  np.testing.assert_allclose(y[4, 100:103], x[4, 99] + (x[4, 103] - x[4, 99]) * np.arange(1, 4) / 4)
  np.testing.assert_array_equal(y[9, :2], x[9, 2])            # held at the record's start
  assert np.isnan(x[4, 100])                                  # the input is untouched
  with pytest.raises(RecordError) as e:
    pp.check_ecg(x, 250, max_nonfinite_run=2)
  assert e.value.reason == "nonfinite" and "aVL" in str(e.value)


def test_check_ecg_flat_and_fs():
  x = fixtures.ecg_signal(250)
  flags = pp.check_ecg(x, 250)
  assert flags["n_nonfinite"] == 0 and len(flags["lead_std_mv"]) == 12
  assert flags["min_lead_std_mv"] > 0.005 and 0.5 < flags["max_abs_mv"] < 5
  y = x.copy()
  y[8] = 0.3 + 1e-3 * np.sin(np.arange(y.shape[1]))           # flat at an offset
  with pytest.raises(RecordError) as e:
    pp.check_ecg(y, 250, path="f.hea")
  assert e.value.reason == "flat_lead" and "V3" in str(e.value) and "f.hea" in str(e.value)
  pp.check_ecg(y, 250, flat_std_mv=1e-4)                      # configurable
  for fs in (49.0, 5001.0, float("nan")):
    with pytest.raises(RecordError) as e:
      pp.check_ecg(x, fs)
    assert e.value.reason == "sampling_rate"
  pp.check_ecg(x, 20.0, fs_range=(10.0, 100.0))


# ------------------------------------------------------------------------------------------------
# preprocess_ecg
# ------------------------------------------------------------------------------------------------

def test_preprocess_ecg_at_250_only_filters():
  s = synthetic.simulate_subject(0, 3, frames=10, size=16)
  ecg = s["ecg"].astype(np.float64)
  out, mask, info = pp.preprocess_ecg(_record(ecg, synthetic.ECG_FS, synthetic.LEADS))
  assert out.shape == (12, 2500) and out.dtype == np.float32 and mask.tolist() == [1] * 12
  assert info["resampled"] is False and info["fs_in"] == 250 and info["n_samples_in"] == 2500
  assert info["n_cropped"] == 0 and info["n_padded"] == 0 and info["leads_derived"] == []
  np.testing.assert_array_equal(out, pp.bandpass(ecg, 250).astype(np.float32))


def test_preprocess_ecg_same_signal_at_500_and_1000(tmp_path):
  outs = {}
  for fs in (500, 1000):
    rec = read_ecg(fixtures.write_wfdb(str(tmp_path), f"r{fs}", fixtures.ecg_signal(fs), fs))
    out, mask, info = pp.preprocess_ecg(rec)
    assert out.shape == (12, 2500) and info["resampled"] is True and info["fs_in"] == fs
    assert info["n_samples_in"] == 10 * fs and info["n_samples_resampled"] == 2500
    outs[fs] = out
  diff = np.abs(outs[500] - outs[1000])
  peak = np.abs(outs[500]).max()
  # Measured: max 0.016 mV over the whole record (ends), 0.007 mV inside, for a ~1.5 mV peak;
  # the difference is the Butterworth's bilinear warping near 40 Hz at the two native rates.
  assert diff.max() < 0.03 and diff[:, 50:-50].max() < 0.015 and peak > 1.0
  assert np.sqrt(np.mean(diff ** 2)) < 0.005
  # and both match the same signal sampled at 250 Hz itself, filtered there, to within 0.06 mV
  direct = pp.bandpass(fixtures.ecg_signal(250), 250)
  assert np.abs(outs[500] - direct).max() < 0.06


def test_preprocess_ecg_lengths(tmp_path):
  x = fixtures.ecg_signal(500, seconds=9.5)
  out, _, info = pp.preprocess_ecg(_record(x, 500))
  assert out.shape == (12, 2500) and info["n_padded"] == 125
  assert not out[:, 2375:].any() and np.abs(out[:, 2300:2375]).max() > 0
  x = fixtures.ecg_signal(500, seconds=12.0)
  out, _, info = pp.preprocess_ecg(_record(x, 500))
  assert out.shape == (12, 2500) and info["n_cropped"] == 500
  full = pp.resample(pp.bandpass(x, 500), 500, 250)
  np.testing.assert_allclose(out, full[:, 250:2750], atol=1e-6)     # the centre 10 s
  with pytest.raises(RecordError) as e:
    pp.preprocess_ecg(_record(fixtures.ecg_signal(500, seconds=8.9), 500, path="short.hea"))
  assert e.value.reason == "too_short" and "short.hea" in str(e.value)
  pp.preprocess_ecg(_record(fixtures.ecg_signal(500, seconds=9.0), 500))     # 9 s is enough
  with pytest.raises(RecordError) as e:
    pp.preprocess_ecg(_record(fixtures.ecg_signal(500, seconds=9.5), 500),
                      pp.EcgConfig(min_seconds=10.0))
  assert e.value.reason == "too_short"


def test_preprocess_ecg_missing_and_derived_leads():
  x = fixtures.ecg_signal(500, seed=2)
  full, _, _ = pp.preprocess_ecg(_record(x, 500))
  keep = [0, 1, 6, 7, 8, 9, 10, 11]
  out, mask, info = pp.preprocess_ecg(_record(x[keep], 500, [STANDARD_LEADS[i] for i in keep]))
  assert mask.tolist() == [1] * 12 and info["leads_derived"] == ["III", "aVR", "aVL", "aVF"]
  np.testing.assert_allclose(out, full, atol=1e-5)
  keep = list(range(6))
  rec = _record(x[keep], 500, STANDARD_LEADS[:6], path="limb.hea")
  with pytest.raises(RecordError) as e:
    pp.preprocess_ecg(rec)
  assert e.value.reason == "too_few_leads" and "V1" in str(e.value) and "limb.hea" in str(e.value)
  out, mask, info = pp.preprocess_ecg(rec, pp.EcgConfig(allow_missing_leads=True))
  assert mask.tolist() == [1] * 6 + [0] * 6 and info["leads_missing"] == list(STANDARD_LEADS[6:])
  assert not out[6:].any()
  np.testing.assert_allclose(out[:6], full[:6], atol=1e-5)


def test_preprocess_ecg_nan_policy():
  x = fixtures.ecg_signal(500)
  x[2, 1000:1002] = np.nan
  with pytest.raises(RecordError) as e:
    pp.preprocess_ecg(_record(x, 500, path="n.hea"))
  assert e.value.reason == "nonfinite" and "III" in str(e.value) and "1000" in str(e.value)
  out, _, info = pp.preprocess_ecg(_record(x, 500), pp.EcgConfig(max_nonfinite_run=2))
  assert np.isfinite(out).all() and info["interpolated_runs"] == [("III", 1000, 2)]


# ------------------------------------------------------------------------------------------------
# CMR
# ------------------------------------------------------------------------------------------------

def test_resample_frames_identity_and_ramp():
  c = fixtures.cine(30, 16)
  np.testing.assert_array_equal(pp.resample_frames(c, 30), c)
  a, b = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
  ramp = a[None] + b[None] * np.arange(30, dtype=np.float32)[:, None, None]
  for frames in (10, 15, 6):                                  # sample times 0, 30/frames, ...
    t = np.arange(frames) * 30 / frames
    np.testing.assert_allclose(pp.resample_frames(ramp, frames),
                               a[None] + b[None] * t[:, None, None], atol=1e-4)
  up = pp.resample_frames(ramp, 60)                           # t = 0, 0.5, ..., 29.5
  t = np.arange(60) / 2
  np.testing.assert_allclose(up[:59], a[None] + b[None] * t[:59, None, None], atol=1e-4)
  np.testing.assert_allclose(up[59], (ramp[29] + ramp[0]) / 2, atol=1e-5)   # wraps to frame 0
  assert pp.resample_frames(c, 50).shape == (50, 16, 16)


def test_crop_and_resize():
  c = np.random.default_rng(1).uniform(size=(4, 80, 100)).astype(np.float32)
  assert pp.crop_and_resize(c, 96).shape == (4, 96, 96)
  assert pp.crop_and_resize(c.transpose(0, 2, 1), 50).shape == (4, 50, 50)
  cols = np.broadcast_to(np.arange(30, dtype=np.float32), (2, 10, 30))
  np.testing.assert_array_equal(pp.crop_and_resize(cols, 10)[0, 0], np.arange(10, 20))  # centre
  big = np.random.default_rng(2).uniform(size=(3, 192, 192))
  blocks = big.reshape(3, 96, 2, 96, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(pp.crop_and_resize(big, 96), blocks, atol=1e-6)  # area average
  const = np.full((2, 70, 70), 7.0)
  np.testing.assert_allclose(pp.crop_and_resize(const, 96), 7.0, atol=1e-5)
  np.testing.assert_allclose(pp.crop_and_resize(const, 33), 7.0, atol=1e-5)
  ramp = np.broadcast_to(np.arange(48, dtype=np.float64), (1, 48, 48))
  up = pp.crop_and_resize(ramp, 96)[0, 0]
  np.testing.assert_allclose(up[1:-1], (np.arange(1, 95) + 0.5) / 2 - 0.5, atol=1e-5)  # bilinear
  with pytest.raises(ValueError):
    pp.crop_and_resize(c, 96, crop="heart")


def test_to_uint8():
  x = np.random.default_rng(3).normal(100, 20, size=(10, 32, 32))
  u = pp.to_uint8(x)
  assert u.dtype == np.uint8 and u.shape == x.shape and u.min() == 0 and u.max() == 255
  lo, hi = np.percentile(x, [0.5, 99.5])
  frac_low = np.mean(x <= lo)
  assert np.mean(u == 0) == pytest.approx(frac_low, abs=2e-3)
  mid = (lo + hi) / 2
  assert abs(int(pp.to_uint8(np.concatenate([x.ravel(), [mid]]))[-1]) - 128) <= 1
  order = np.argsort(x.ravel())
  assert np.all(np.diff(u.ravel()[order].astype(int)) >= 0)   # monotone
  assert not pp.to_uint8(np.full((3, 4, 4), 5.0)).any()


def test_preprocess_cmr(tmp_path):
  c = fixtures.cine(30, 64)
  out = pp.preprocess_cmr(c)
  assert out.shape == (50, 96, 96) and out.dtype == np.uint8
  assert out.min() == 0 and out.max() == 255
  small = pp.preprocess_cmr(c, pp.CmrConfig(frames=20, size=32))
  assert small.shape == (20, 32, 32)
  from cardionets_jax.data.readers import read_cmr
  via_file = pp.preprocess_cmr(read_cmr(fixtures.write_nifti(str(tmp_path), "c", c, True)))
  np.testing.assert_array_equal(via_file, out)
  for bad, reason, needle in [
      (c[0], "cmr_ndim", "(64, 64)"), (c[None], "cmr_ndim", "(1, 30, 64, 64)"),
      (c[:3], "cmr_frames", "3 frames"), (np.concatenate([c] * 7), "cmr_frames", "210 frames"),
      (np.full((20, 8, 8), 3.0), "unreadable", "constant")]:
    with pytest.raises(RecordError) as e:
      pp.preprocess_cmr(bad, path="cine.nii.gz")
    assert e.value.reason == reason and needle in str(e.value) and "cine.nii.gz" in str(e.value)
  y = c.copy()
  y[12, 3, 3] = np.inf
  with pytest.raises(RecordError) as e:
    pp.preprocess_cmr(y, path="x.npy")
  assert e.value.reason == "nonfinite" and "frame 12" in str(e.value)
  assert pp.preprocess_cmr(c[:10]).shape == (50, 96, 96)      # min_frames is inclusive


def test_release_order_resamples_by_fft_then_filters_each_crop():
  from cardionets_jax.data import release_preprocess as rp
  t = np.arange(5000) / 500.0
  x = np.tile(0.5 * np.sin(2 * np.pi * 10 * t) + 0.3 * np.sin(2 * np.pi * 60 * t)
              + 0.8 * np.sin(2 * np.pi * 0.1 * t), (12, 1))
  x[:, :5] += 0.01 * np.arange(5)         # not a pure tone: the leads differ a little
  crops, mask, info = rp.preprocess_crops(EcgRecord(x, 500.0, list(STANDARD_LEADS), path="r"))
  assert crops.shape == (3, 12, 2250) and info["crop_starts"] == [0, 125, 250]
  # The release's chain, step by step with scipy.
  res = sps.resample(x, 2500, axis=-1)
  high = sps.butter(5, 0.67, btype="highpass", fs=250, output="sos")
  low = sps.butter(5, 40, btype="lowpass", fs=250, output="sos")
  for crop, start in zip(crops, (0, 125, 250)):
    want = sps.sosfiltfilt(low, sps.sosfiltfilt(high, res[:, start:start + 2250], axis=-1), axis=-1)
    np.testing.assert_allclose(crop, want, atol=1e-5)
  # What the filters are for: 10 Hz kept, 60 Hz hum and 0.1 Hz drift gone (away from the edges).
  mid = crops[1, 0, 500:1750]
  spectrum = np.abs(np.fft.rfft(mid)) / len(mid) * 2
  freqs = np.fft.rfftfreq(len(mid), 1 / 250)
  at = lambda f: spectrum[np.argmin(np.abs(freqs - f))]
  assert abs(at(10) - 0.5) < 0.03 and at(60) < 0.003 and abs(np.mean(mid)) < 0.02
  assert mask.tolist() == [1] * 12 and info["preprocessing"] == "release"
