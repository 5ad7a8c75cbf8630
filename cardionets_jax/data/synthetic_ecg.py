"""The built-in cohort's 12-lead ECG: a vectorcardiogram projected onto the leads.

A 3-D cardiac dipole built from Gaussian P, Q, R, S and T waves per beat, projected onto jittered
lead vectors, with textbook couplings to the phenotypes (QRS voltage with LV mass, QRS width with
LV dilation, low voltage / T inversion / fragmented QRS with low LVEF, right-axis deviation and
tall R in V1 with RV enlargement, peaked P with a large RA, broad bifid P with a large LA) and
nuisance that is not in the CMR (habitus, electrode placement, baseline wander, mains and white
noise). The limb leads obey Einthoven and Goldberger exactly, noise included. Pure numpy; the
subject is drawn in `synthetic.py`.
"""

# `simulate_ecg` is over the 60-line limit on purpose: one beat model, read top to bottom.

from __future__ import annotations

import numpy as np

ECG_FS = 250            # Hz
ECG_SECONDS = 10.0
ECG_SAMPLES = int(round(ECG_FS * ECG_SECONDS))
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# Dipole axes: x towards the patient's left, y inferior (feet), z anterior.
_LEAD_I = np.array([1.0, 0.0, 0.0])
_LEAD_II = np.array([0.5, np.sqrt(3) / 2, 0.0])
# Precordial leads: angle in the horizontal plane from +x towards +z, inferior component, gain.
_PRECORDIAL = np.array([
    [115.0, 0.00, 1.10],
    [95.0, 0.00, 1.50],
    [75.0, 0.05, 1.50],
    [55.0, 0.15, 1.35],
    [30.0, 0.20, 1.10],
    [5.0, 0.20, 0.85],
])
_DIR = dict(
    q=_unit([-0.55, 0.25, 0.80]),     # septal depolarisation: rightward, anterior
    r=_unit([0.75, 0.45, -0.35]),     # main LV force: left, inferior, posterior
    s=_unit([-0.35, -0.55, -0.75]),   # terminal basal forces
    rv=_unit([-0.55, 0.45, 0.70]),    # RV forces: right, anterior
    p_ra=_unit([0.25, 0.85, 0.45]),   # right atrium: inferior, anterior
    p_la=_unit([0.75, 0.45, -0.45]),  # left atrium: leftward, posterior
    t=_unit([0.65, 0.55, 0.35]),
)


def _lead_vectors(rng: np.random.Generator) -> np.ndarray:
  """(8, 3): I, II, V1..V6 with electrode-placement jitter."""
  out = np.empty((8, 3))
  for i, base in enumerate((_LEAD_I, _LEAD_II)):
    ang = np.arctan2(base[1], base[0]) + np.deg2rad(2.0) * rng.normal()
    out[i] = np.exp(0.03 * rng.normal()) * np.array([np.cos(ang), np.sin(ang), 0.0])
  for j, (deg, inf, gain) in enumerate(_PRECORDIAL):
    ang = np.deg2rad(deg + 7.0 * rng.normal())
    yy = inf + 0.06 * rng.normal()
    vec = np.array([np.cos(ang), yy, np.sin(ang)])
    out[2 + j] = gain * np.exp(0.08 * rng.normal()) * vec / np.linalg.norm(vec)
  return out


def _rotate_towards(v, target, amount):
  return _unit(v + amount * (target - v))


def simulate_ecg(rng: np.random.Generator, subj: dict, noise: bool = True) -> np.ndarray:
  """(12, ECG_SAMPLES) float32 mV in LEADS order for a subject of `synthetic._draw_subject`
  (its phenotypes by name under "named"); `noise=False` leaves out the recording nuisance."""
  p = subj["named"]
  lvedv, lvef, mass = p["lvedv"], p["lvef"], p["lv_mass"]
  wall, rvedv, rvef = p["lv_wall_thickness"], p["rvedv"], p["rvef"]
  la, ra, hr = p["la_volume"], p["ra_volume"], p["heart_rate"]
  size = subj["size"]
  r = rng.random(size=16)
  n = rng.normal(size=16)

  # Severity scores, partial and noisy.
  low_ef = float(np.clip((50.0 - lvef) / 30.0, 0.0, 1.0))
  rv_sev = float(np.clip(0.6 * (rvedv / lvedv - 1.1) / 0.4 + 0.4 * (55.0 - rvef) / 20.0, 0.0, 1.5))
  rv_sev *= 0.6 + 0.6 * r[0]
  ra_sev = float(np.clip((ra / (70.0 * size) - 1.2) / 0.8, 0.0, 1.5)) * (0.6 + 0.6 * r[1])
  la_sev = float(np.clip((la / (66.0 * size) - 1.2) / 0.8, 0.0, 1.5)) * (0.6 + 0.6 * r[2])
  strain = max(1.0 / (1.0 + np.exp(-(42.0 - lvef) / 4.0)),
               1.0 / (1.0 + np.exp(-(wall - 15.0) / 2.0)))
  t_inv = float(np.clip(strain * (0.6 + 0.5 * r[3]), 0.0, 1.0))
  frag = low_ef * (0.3 + 0.7 * r[4])

  # Voltages and durations.
  habitus = np.exp(0.12 * n[0]) * (1.9 / subj["bsa"]) ** 0.8       # not in the CMR
  amp = 1.75 * (mass / 110.0) ** 0.85 * (1.0 - 0.35 * low_ef) * habitus * (1 - 0.2 * rv_sev)
  qrs = float(np.clip(0.088 + 0.00012 * (lvedv - 150.0) + 0.015 * low_ef * r[5]
                      + 0.005 * n[1], 0.07, 0.17))
  wq = qrs / 0.09
  pr = float(np.clip(0.15 + 0.015 * n[2] + 0.01 * la_sev, 0.11, 0.24))
  qtc = 0.41 + 0.015 * n[3] + 0.02 * (subj["cm_type"] > 0)
  rr_mean = 60.0 / (hr * np.exp(0.01 * n[4]))
  qt = qtc * np.sqrt(rr_mean)

  r_dir = _rotate_towards(_DIR["r"], _DIR["rv"], 0.45 * rv_sev)     # right-axis deviation
  t_vec = (0.3 * habitus * (amp / habitus) ** 0.5
           * ((1.0 - t_inv) * _DIR["t"] - 0.9 * t_inv * r_dir))        # T inversion (discordant)
  # Each wave: (offset from the R peak in s, width in s, dipole vector in mV).
  waves = [
      (-0.022 * wq, 0.007 * wq, 0.18 * amp * _DIR["q"]),
      (0.0, 0.011 * wq, amp * r_dir),
      (0.024 * wq, 0.009 * wq, 0.35 * amp * _DIR["s"]),
      (0.010 * wq, 0.004, -0.3 * frag * amp * r_dir),                   # QRS fragmentation
      (0.016 * wq, 0.010 * wq, 0.9 * rv_sev * habitus * _DIR["rv"]),     # tall R in V1
  ]
  p_on = -qrs / 2 - pr
  sep = 0.022 + 0.03 * la_sev
  waves += [
      (p_on + 0.04, 0.018 * (1.0 - 0.2 * min(ra_sev, 1.0)),
       0.09 * (1.0 + 1.3 * ra_sev) * habitus ** 0.5 * _DIR["p_ra"]),
      (p_on + 0.04 + sep, 0.02 * (1.0 + 0.25 * la_sev),
       0.08 * (1.0 + 0.5 * la_sev) * habitus ** 0.5 * _DIR["p_la"]),
      (-qrs / 2 + qt - 0.085, 0.045 * np.sqrt(rr_mean), t_vec),
  ]
  mu = np.array([w[0] for w in waves])
  sd = np.array([w[1] for w in waves])
  vec = np.stack([w[2] for w in waves])                               # (W, 3)

  # Beat times: mean RR from the heart rate, respiratory sinus arrhythmia, small jitter.
  resp_f = 0.2 + 0.1 * r[6]
  resp_ph = 2 * np.pi * r[7]
  t_beat = [-rr_mean * (0.3 + r[8])]
  while t_beat[-1] < ECG_SECONDS + 1.0:
    tb = t_beat[-1]
    rsa = 1.0 + 0.025 * np.sin(2 * np.pi * resp_f * tb + resp_ph) + 0.012 * rng.normal()
    t_beat.append(tb + rr_mean * rsa)
  t_beat = np.array(t_beat)
  nb = len(t_beat)
  beat_amp = 1.0 + 0.04 * np.sin(2 * np.pi * resp_f * t_beat + resp_ph) + 0.02 * rng.normal(
      size=nb)

  t = np.arange(ECG_SAMPLES) / ECG_FS
  centres = (t_beat[:, None] + mu[None, :]).ravel()                    # (B*W,)
  widths = np.tile(sd, nb)
  gains = (beat_amp[:, None, None] * vec[None]).reshape(-1, 3)         # (B*W, 3)
  # Only waves that reach the record.
  keep = (centres > -5 * widths) & (centres < ECG_SECONDS + 5 * widths)
  centres, widths, gains = centres[keep], widths[keep], gains[keep]
  z = (t[None, :] - centres[:, None]) / widths[:, None]
  basis = np.exp(-0.5 * z * z)                                         # (N, T)
  dipole = gains.T @ basis                                             # (3, T)

  leads8 = _lead_vectors(rng) @ dipole                                 # I, II, V1..V6

  # Recording nuisance on the eight independent leads: baseline wander, mains, white noise.
  wander_amp = 0.05 + 0.2 * r[9]
  f = rng.uniform(0.1, 0.5, size=(8, 2))
  phs = rng.uniform(0, 2 * np.pi, size=(8, 2))
  a = wander_amp * rng.uniform(0.2, 1.0, size=(8, 2))
  wander = (a[:, :, None] * np.sin(2 * np.pi * f[:, :, None] * t + phs[:, :, None])).sum(1)
  resp = 0.3 * wander_amp * np.sin(2 * np.pi * resp_f * t + resp_ph)
  mains_f = 50.0 if r[10] < 0.5 else 60.0
  mains = 0.01 * r[11] * np.sin(2 * np.pi * mains_f * t + 2 * np.pi * r[12])
  white = (0.015 + 0.025 * r[13]) * rng.standard_normal((8, ECG_SAMPLES))
  if noise:
    leads8 = leads8 + wander + resp + mains + white

  lead_i, lead_ii = leads8[0], leads8[1]
  ecg = np.empty((12, ECG_SAMPLES), np.float32)
  ecg[0] = lead_i
  ecg[1] = lead_ii
  ecg[2] = lead_ii - lead_i                # III   (Einthoven)
  ecg[3] = -(lead_i + lead_ii) / 2         # aVR   (Goldberger)
  ecg[4] = lead_i - lead_ii / 2            # aVL = (I - III) / 2
  ecg[5] = lead_ii - lead_i / 2            # aVF = (II + III) / 2
  ecg[6:] = leads8[2:]
  return ecg
