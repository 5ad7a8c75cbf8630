"""Tests of the synthetic paired ECG / cine CMR cohort (cardionets_jax.data.synthetic)."""

import numpy as np
import pytest
from scipy import signal, stats

from cardionets_jax.data import synthetic

N_COHORT = 200
FRAMES, SIZE = 25, 48
IDX = {name: i for i, name in enumerate(synthetic.phenotype_names())}


@pytest.fixture(scope="module")
def cohort():
  subs = [synthetic.simulate_subject(7, i, frames=FRAMES, size=SIZE) for i in range(N_COHORT)]
  phen = np.stack([s["phenotypes"] for s in subs]).astype(np.float64)
  return dict(
      subs=subs,
      phen={name: phen[:, i] for name, i in IDX.items()},
      labels=np.stack([s["labels"] for s in subs]),
      ecg=np.stack([s["ecg"] for s in subs]).astype(np.float64),
  )


def _bright_counts(cmr):
  """Blood-pool pixels per frame: above a per-cine threshold between tissue and blood."""
  c = cmr.astype(np.float32)
  lo, hi = np.median(c), np.percentile(c, 99.5)
  return (c > lo + 0.6 * (hi - lo)).sum(axis=(1, 2))


def test_public_interface():
  assert synthetic.ECG_FS == 250 and synthetic.ECG_SECONDS == 10.0
  assert synthetic.LEADS == ("I", "II", "III", "aVR", "aVL", "aVF",
                             "V1", "V2", "V3", "V4", "V5", "V6")
  assert synthetic.LABELS == ("cardiomyopathy", "pulmonary_hypertension")
  first = [("lvedv", "mL"), ("lvesv", "mL"), ("lvef", "%"), ("lvsv", "mL"), ("lv_mass", "g"),
           ("lv_wall_thickness", "mm"), ("rvedv", "mL"), ("rvesv", "mL"), ("rvef", "%"),
           ("la_volume", "mL"), ("ra_volume", "mL"), ("heart_rate", "bpm")]
  assert list(synthetic.PHENOTYPES[:12]) == first
  assert synthetic.phenotype_names() == [n for n, _ in synthetic.PHENOTYPES]
  assert synthetic.phenotype_units() == [u for _, u in synthetic.PHENOTYPES]


@pytest.mark.parametrize("frames,size", [(50, 96), (25, 48)])
def test_shapes_and_dtypes(frames, size):
  s = synthetic.simulate_subject(0, 123, frames=frames, size=size)
  assert set(s) == {"ecg", "cmr", "phenotypes", "labels", "subject_id"}
  assert s["ecg"].shape == (12, 2500) and s["ecg"].dtype == np.float32
  assert s["cmr"].shape == (frames, size, size) and s["cmr"].dtype == np.uint8
  assert s["phenotypes"].shape == (len(synthetic.PHENOTYPES),)
  assert s["phenotypes"].dtype == np.float32
  assert s["labels"].shape == (len(synthetic.LABELS),) and s["labels"].dtype == np.int8
  assert s["subject_id"] == b"SYN-000123"
  assert np.all(np.isfinite(s["ecg"])) and np.all(np.isfinite(s["phenotypes"]))
  assert set(np.unique(s["labels"])) <= {0, 1}
  # The cine uses the intensity range: dark lungs, bright blood.
  assert s["cmr"].min() < 40 and s["cmr"].max() > 150


def test_deterministic_in_seed_and_index_alone():
  a = synthetic.simulate_subject(3, 5, frames=10, size=32)
  for i in range(5):   # other subjects first: must not matter
    synthetic.simulate_subject(3, i, frames=10, size=32)
  b = synthetic.simulate_subject(3, 5, frames=10, size=32)
  for k in ("ecg", "cmr", "phenotypes", "labels"):
    np.testing.assert_array_equal(a[k], b[k])
  assert a["subject_id"] == b["subject_id"]
  c = synthetic.simulate_subject(3, 6, frames=10, size=32)
  d = synthetic.simulate_subject(4, 5, frames=10, size=32)
  for other in (c, d):
    assert not np.array_equal(a["ecg"], other["ecg"])
    assert not np.array_equal(a["cmr"], other["cmr"])
    assert not np.array_equal(a["phenotypes"], other["phenotypes"])


def test_phenotypes_and_ecg_do_not_depend_on_cine_shape():
  a = synthetic.simulate_subject(1, 9, frames=50, size=96)
  b = synthetic.simulate_subject(1, 9, frames=25, size=48)
  np.testing.assert_array_equal(a["phenotypes"], b["phenotypes"])
  np.testing.assert_array_equal(a["labels"], b["labels"])
  np.testing.assert_array_equal(a["ecg"], b["ecg"])


def test_fixed_field_of_view_across_sizes():
  # The same heart covers the same fraction of the image at any size.
  # (Coarser pixels lose a little more of each blood pool to partial volume at the edges.)
  for i in range(3):
    small = synthetic.simulate_subject(2, i, frames=8, size=48)["cmr"]
    big = synthetic.simulate_subject(2, i, frames=8, size=96)["cmr"]
    f_small = _bright_counts(small).mean() / 48**2
    f_big = _bright_counts(big).mean() / 96**2
    assert 0.1 < f_big < 0.6
    np.testing.assert_allclose(f_small, f_big, rtol=0.12)


def test_a_rescan_images_the_same_heart_afresh(cohort):
  n = 40
  scans = np.stack([s["cmr"] for s in cohort["subs"][:n]])
  rescans = np.stack([synthetic.rescan(7, i, frames=FRAMES, size=SIZE) for i in range(n)])
  np.testing.assert_array_equal(rescans[3], synthetic.rescan(7, 3, frames=FRAMES, size=SIZE))
  assert not np.array_equal(rescans[3], synthetic.rescan(7, 3, frames=FRAMES, size=SIZE,
                                                          session=2))
  assert not np.array_equal(rescans, scans)   # pose, intensities and noise drawn again
  # ... but the heart is the same: its blood-pool areas agree with the first scan's far more
  # than with another subject's.
  swing = lambda c: np.ptp(np.stack([_bright_counts(x) for x in c]), axis=1)
  own = stats.pearsonr(swing(scans), swing(rescans))[0]
  assert own > 0.7 and abs(stats.pearsonr(swing(scans), swing(rescans[::-1]))[0]) < own - 0.4
  assert synthetic.subject_index(synthetic.subject_id(12)) == 12
  assert synthetic.subject_index("SYN-000012") == 12
  with pytest.raises(ValueError, match="session 0"):
    synthetic.rescan(7, 3, frames=FRAMES, size=SIZE, session=0)
  with pytest.raises(ValueError, match="not a synthetic subject id"):
    synthetic.subject_index("UKB-1")


def test_bad_arguments():
  with pytest.raises(ValueError):
    synthetic.simulate_subject(0, 0, frames=0, size=48)
  with pytest.raises(ValueError):
    synthetic.simulate_subject(0, 0, frames=10, size=4)


def test_phenotypes_plausible_and_consistent(cohort):
  p = cohort["phen"]
  ranges = dict(lvedv=(50, 500), lvesv=(5, 400), lvef=(10, 85), lvsv=(20, 250),
                lv_mass=(40, 450), lv_wall_thickness=(5, 30), rvedv=(50, 500), rvesv=(5, 420),
                rvef=(10, 80), la_volume=(15, 260), ra_volume=(15, 300), heart_rate=(45, 105))
  for name, (lo, hi) in ranges.items():
    assert lo <= p[name].min() and p[name].max() <= hi, name
  np.testing.assert_allclose(p["lvesv"], p["lvedv"] * (1 - p["lvef"] / 100), rtol=1e-4)
  np.testing.assert_allclose(p["lvsv"], p["lvedv"] - p["lvesv"], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(p["rvesv"], p["rvedv"] * (1 - p["rvef"] / 100), rtol=1e-4)
  # Typical adult values on average.
  assert 130 < p["lvedv"].mean() < 180
  assert 55 < np.median(p["lvef"]) < 65
  assert 60 < p["heart_rate"].mean() < 80


def test_correlated_phenotypes_and_labels(cohort):
  p, labels = cohort["phen"], cohort["labels"]
  assert np.corrcoef(p["lvedv"], p["rvedv"])[0, 1] > 0.3            # body size
  assert stats.spearmanr(p["lv_wall_thickness"], p["lv_mass"])[0] > 0.3
  cm, ph = labels[:, 0] == 1, labels[:, 1] == 1
  assert 0.05 <= cm.mean() <= 0.30
  assert 0.03 <= ph.mean() <= 0.25
  assert p["lvef"][cm].mean() < p["lvef"][~cm].mean()
  assert p["rvef"][ph].mean() < p["rvef"][~ph].mean()
  assert p["ra_volume"][ph].mean() > p["ra_volume"][~ph].mean()
  # Labels follow from the phenotypes (up to a little label noise).
  rule_cm = (p["lvef"] < 45) | (p["lv_wall_thickness"] > 13)
  rule_ph = (p["rvef"] < 45) & (p["rvedv"] > 1.2 * p["lvedv"])
  assert np.mean(rule_cm == cm) > 0.93
  assert np.mean(rule_ph == ph) > 0.93


def test_limb_leads_obey_einthoven_and_goldberger(cohort):
  ecg = cohort["ecg"]
  lead = {name: ecg[:, i] for i, name in enumerate(synthetic.LEADS)}
  np.testing.assert_allclose(lead["I"] + lead["III"], lead["II"], atol=1e-5)
  np.testing.assert_allclose(lead["aVR"] + lead["aVL"] + lead["aVF"], 0.0, atol=1e-5)
  np.testing.assert_allclose(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-5)
  np.testing.assert_allclose(lead["aVL"], (lead["I"] - lead["III"]) / 2, atol=1e-5)
  np.testing.assert_allclose(lead["aVF"], (lead["II"] + lead["III"]) / 2, atol=1e-5)


def test_ecg_is_raw_with_wander_and_noise(cohort):
  ecg = cohort["ecg"][:20]
  low = signal.sosfiltfilt(signal.butter(2, 0.6, "lowpass", fs=250, output="sos"), ecg, axis=-1)
  assert np.median(low.std(axis=-1)) > 0.01                         # baseline wander
  assert np.all(np.abs(ecg).max(axis=-1) < 10.0)                     # mV, not z-scored
  assert np.all(ecg.std(axis=-1) > 0.01)


def test_heart_rate_recovered_from_ecg(cohort):
  sos = signal.butter(2, [5, 25], "bandpass", fs=250, output="sos")
  errors = []
  for ecg, hr in zip(cohort["ecg"], cohort["phen"]["heart_rate"]):
    energy = (signal.sosfiltfilt(sos, ecg, axis=-1) ** 2).sum(0)
    peaks, _ = signal.find_peaks(energy, height=0.3 * np.percentile(energy, 99.5),
                                 distance=int(0.35 * synthetic.ECG_FS))
    errors.append(abs(60.0 * synthetic.ECG_FS / np.median(np.diff(peaks)) - hr))
  assert np.mean(np.array(errors) < 5.0) > 0.9


def test_ecg_couplings(cohort):
  p, labels = cohort["phen"], cohort["labels"]
  ecg = signal.sosfiltfilt(signal.butter(2, 0.67, "highpass", fs=250, output="sos"),
                           cohort["ecg"], axis=-1)
  hi, lo = np.percentile(ecg, 99.5, axis=-1), np.percentile(ecg, 0.5, axis=-1)
  qrs_amp = (hi - lo).max(axis=1)                                   # (N,) max over leads
  v5 = synthetic.LEADS.index("V5")
  assert stats.spearmanr(qrs_amp, p["lv_mass"])[0] > 0.3            # Sokolow-Lyon-like
  assert stats.spearmanr(hi[:, v5] - lo[:, v5], p["lv_mass"])[0] > 0.3
  # Pulmonary hypertension: taller R in V1 and a more rightward axis (lead III vs lead I).
  ph = labels[:, 1] == 1
  v1, l1, l3 = (synthetic.LEADS.index(n) for n in ("V1", "I", "III"))
  assert hi[ph, v1].mean() > hi[~ph, v1].mean()
  right = hi[:, l3] - hi[:, l1]
  assert right[ph].mean() > right[~ph].mean()


def test_cine_follows_volumes(cohort):
  p = cohort["phen"]
  bright = np.stack([_bright_counts(s["cmr"]) for s in cohort["subs"]])     # (N, F)
  # Blood-pool area swing over the cycle tracks the stroke volume ...
  assert stats.spearmanr(bright.max(1) - bright.min(1), p["lvsv"])[0] > 0.5
  # ... and the mean blood-pool area tracks the ventricular volumes.
  assert stats.spearmanr(bright.mean(1), p["lvedv"] + p["rvedv"])[0] > 0.5
  # Frame 0 is end-diastole, the smallest blood pool near ~35% of the cycle (in a poorly
  # contracting heart the atria, filling in systole, can hide the swing: not every subject).
  es = bright.argmin(1) / FRAMES
  assert np.mean(bright[:, 0] > bright.min(1)) > 0.9
  assert np.mean((es > 0.25) & (es < 0.5)) > 0.9
