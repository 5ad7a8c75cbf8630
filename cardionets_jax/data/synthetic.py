"""A deterministic simulator of a paired ECG / 4-chamber cine CMR cohort.

A simulator, not noise: each subject has latent factors (sex, body size, age, hypertension,
cardiomyopathy, pulmonary hypertension) from which correlated cardiac phenotypes follow. The same
phenotypes then drive

  * a rendered 4-chamber long-axis cine over one cardiac cycle: LV, RV, LA and RA blood pools whose
    areas follow their volume curves (area ~ volume^(2/3)) on a fixed field of view, the LV inside a
    myocardial ring whose thickness is the wall thickness (thickening in systole), the atria filling
    while the ventricles eject; with pose, intensity and noise nuisance;
  * a 12-lead ECG at 250 Hz (`synthetic_ecg.py`): a 3-D cardiac dipole projected onto jittered
    lead vectors, with textbook couplings to the phenotypes and nuisance that is not in the CMR;
  * disease labels that follow from the phenotypes (with a little label noise).

The limb leads obey Einthoven and Goldberger exactly, noise included (I and II are "recorded", the
other four derived, as electrocardiographs do): I + III == II and aVR + aVL + aVF == 0.

Everything is a function of (seed, index) alone, so a subject does not depend on which other
subjects were generated or in which order. Pure numpy.
"""

# `_draw_subject` and `_render_cine` are over the 60-line limit on purpose: the physics of one
# subject reads best as long, commented functions, top to bottom.

from __future__ import annotations

import numpy as np

from cardionets_jax.data import synthetic_ecg

# The ECG's format is the ECG model's, and part of this module's interface too.
ECG_FS, ECG_SECONDS = synthetic_ecg.ECG_FS, synthetic_ecg.ECG_SECONDS
ECG_SAMPLES, LEADS = synthetic_ecg.ECG_SAMPLES, synthetic_ecg.LEADS
PHENOTYPES: tuple[tuple[str, str], ...] = (
    ("lvedv", "mL"),
    ("lvesv", "mL"),
    ("lvef", "%"),
    ("lvsv", "mL"),
    ("lv_mass", "g"),
    ("lv_wall_thickness", "mm"),
    ("rvedv", "mL"),
    ("rvesv", "mL"),
    ("rvef", "%"),
    ("la_volume", "mL"),
    ("ra_volume", "mL"),
    ("heart_rate", "bpm"),
)
LABELS: tuple[str, ...] = ("cardiomyopathy", "pulmonary_hypertension")

CMR_FOV_MM = 180.0      # the square field of view of the cine, whatever its size in pixels

_P = {name: i for i, (name, _) in enumerate(PHENOTYPES)}


def phenotype_names() -> list[str]:
  return [name for name, _ in PHENOTYPES]


def phenotype_units() -> list[str]:
  return [unit for _, unit in PHENOTYPES]


# ----------------------------------------------------------------------------------------------
# Latent factors and phenotypes
# ----------------------------------------------------------------------------------------------

def _draw_subject(rng: np.random.Generator) -> dict:
  """Latent factors and the phenotypes that follow from them (a fixed number of draws)."""
  male = rng.random() < 0.5
  age = rng.uniform(40.0, 80.0)
  bsa = float(np.clip(rng.normal(2.0 if male else 1.75, 0.16), 1.35, 2.6))   # m^2
  size = bsa / 1.9
  htn = rng.random() < 0.25                 # hypertension: thicker walls, bigger LA, no label
  u = rng.random()
  cm_type = 1 if u < 0.085 else (2 if u < 0.12 else 0)   # 1 dilated, 2 hypertrophic
  ph = rng.random() < 0.10
  z_vent = rng.normal()                     # shared ventricular size (beyond body size)
  n = rng.normal(size=16)
  uu = rng.random(size=12)

  # Left ventricle.
  lvedv_base = 150.0 * size**1.1 * (1.07 if male else 0.93) * np.exp(0.10 * z_vent + 0.07 * n[0])
  lvedv = lvedv_base
  lvef = float(np.clip(60.0 + 5.0 * n[1], 48.0, 75.0))
  wall = 8.4 + 1.3 * male + 0.03 * (age - 60.0) + 1.2 * htn + 0.9 * n[2]
  if cm_type == 1:      # dilated: big, thin-walled, poorly contracting LV
    lvedv *= 1.35 + 0.65 * uu[0]
    lvef = 18.0 + 26.0 * uu[1]
    wall = 9.0 + 1.0 * n[2]
  elif cm_type == 2:    # hypertrophic: thick wall, small hyperdynamic cavity
    lvedv *= 0.55 + 0.25 * uu[0]
    lvef = float(np.clip(67.0 + 5.0 * n[1], 55.0, 82.0))
    wall = 14.0 + 10.0 * uu[1] ** 1.5
  if ph:
    lvef -= 2.0 * uu[2]   # septal interaction
  wall = float(np.clip(wall, 5.5, 30.0))
  lvedv = float(np.clip(lvedv, 55.0, 480.0))
  lvesv = lvedv * (1.0 - lvef / 100.0)
  lvsv = lvedv - lvesv
  # LV mass: a half prolate ellipsoid shell (long = 2.2 x short semi-axis), 1.05 g/mL myocardium,
  # x0.8 for the compacted myocardium a CMR contour sees.
  a = (lvedv / (2.0 / 3.0 * np.pi * 2.2)) ** (1.0 / 3.0)      # cm
  t = wall / 10.0
  shell = 2.0 / 3.0 * np.pi * ((a + t) ** 2 * (2.2 * a + t) - a * a * 2.2 * a)
  lv_mass = float(np.clip(0.8 * 1.05 * shell * np.exp(0.06 * n[3]), 40.0, 450.0))

  # Right ventricle.
  rvedv = 1.07 * lvedv_base * np.exp(0.07 * n[4])
  rvef = float(np.clip(57.0 + 5.0 * n[5], 45.0, 75.0))
  if cm_type == 1:
    rvedv *= 1.0 + 0.3 * uu[3]
    rvef -= 15.0 * uu[4]
  if ph:
    rvedv *= 1.3 + 0.7 * uu[5]
    rvef = 18.0 + 24.0 * uu[6]
  rvedv = float(np.clip(rvedv, 55.0, 480.0))
  rvesv = rvedv * (1.0 - rvef / 100.0)

  # Atria (maximal volumes, at end-systole).
  la = 66.0 * size * np.exp(0.16 * n[6]) * (1.0 + 0.005 * (age - 60.0)) * (1.1 if htn else 1.0)
  if cm_type == 1:
    la *= 1.3 + 0.6 * uu[7]
  elif cm_type == 2:
    la *= 1.3 + 0.5 * uu[8]
  ra = 70.0 * size * np.exp(0.18 * n[7])
  if ph:
    ra *= 1.4 + 0.8 * uu[9]
  elif cm_type == 1:
    ra *= 1.15
  la = float(np.clip(la, 20.0, 250.0))
  ra = float(np.clip(ra, 20.0, 280.0))

  hr = 68.0 + 9.0 * n[8] + 8.0 * (cm_type == 1) + 7.0 * ph - 3.0 * male
  hr = float(np.clip(hr, 50.0, 100.0))

  phen = np.array([lvedv, lvesv, lvef, lvsv, lv_mass, wall, rvedv, rvesv, rvef, la, ra, hr],
                  np.float64)

  # Labels follow from the phenotypes, with ~2% label noise.
  cm_label = (lvef < 45.0) or (wall > 13.0)
  ph_label = (rvef < 45.0) and (rvedv > 1.2 * lvedv)
  flips = rng.random(size=2) < 0.02
  labels = np.array([cm_label ^ flips[0], ph_label ^ flips[1]], np.int8)

  return dict(phen=phen, named=dict(zip(phenotype_names(), phen)), labels=labels, male=male,
              age=age, bsa=bsa, size=size, cm_type=cm_type,
              ph=ph, htn=htn)


# ----------------------------------------------------------------------------------------------
# Cardiac cycle
# ----------------------------------------------------------------------------------------------

def _ventricular_fill(phase, t_es, tau_early):
  """Normalised ventricular volume over the cycle: 1 at end-diastole (phase 0), 0 at t_es."""
  phase = np.asarray(phase, np.float64)
  sys = 0.5 * (1.0 + np.cos(np.pi * np.clip(phase / t_es, 0.0, 1.0)))
  s = np.clip((phase - t_es) / (1.0 - t_es), 0.0, 1.0)
  early = 1.0 - np.exp(-((s / tau_early) ** 2))
  kick = np.where(s < 0.8, 0.0, 0.5 * (1.0 - np.cos(np.pi * np.clip((s - 0.8) / 0.2, 0.0, 1.0))))
  dia = 0.8 * early + 0.2 * kick
  return np.where(phase <= t_es, sys, dia)


# ----------------------------------------------------------------------------------------------
# Cine CMR
# ----------------------------------------------------------------------------------------------

def _soft_ellipse(img, u, v, cu, cv, a, b, px, value, cut=None, keep_above=True):
  """Blends `value` into img (F, h, w) inside ellipses with per-frame centre and semi-axes.

  u, v: (h, w) chamber-frame coordinates in mm; cu, cv, a, b: (F,) arrays. With `cut` (F,), only
  the part with v above (keep_above) or below the line v = cut is drawn (a truncated ellipse).
  Edges are anti-aliased over about one pixel (first-order signed distance)."""
  f32 = lambda x: np.asarray(x, np.float64)[:, None, None].astype(np.float32)
  du = (u - f32(cu)) * f32(1.0 / a)
  dv = (v - f32(cv)) * f32(1.0 / b)
  q = du * du
  q += dv * dv
  # m = clip(0.5 + (1 - q) * k, 0, 1), k = half the smaller semi-axis in pixels
  np.subtract(np.float32(1.0), q, out=q)
  q *= f32(np.minimum(a, b) / (2.0 * px))
  q += np.float32(0.5)
  np.clip(q, 0.0, 1.0, out=q)
  if cut is not None:
    h = (v - f32(cut)) * np.float32(1.0 / px if keep_above else -1.0 / px)
    h += np.float32(0.5)
    np.clip(h, 0.0, 1.0, out=h)
    q *= h
  # img += (value - img) * m
  diff = np.subtract(np.float32(value), img)
  diff *= q
  img += diff


class _Grid:
  """Pixel coordinates of the image in the heart frame, restricted to sub-windows on demand."""

  def __init__(self, size, theta, shift):
    self.size = size
    self.px = CMR_FOV_MM / size
    c = (np.arange(size, dtype=np.float64) + 0.5) * self.px - CMR_FOV_MM / 2.0
    self.c = c
    self.cos, self.sin = np.cos(theta), np.sin(theta)
    self.shift = shift

  def to_image(self, x, y):
    """Heart-frame mm -> image (col, row) in mm (x right, y up)."""
    xi = self.cos * x - self.sin * y + self.shift[0]
    yi = self.sin * x + self.cos * y + self.shift[1]
    return xi, yi

  def window(self, xs, ys, rx, ry, tilt):
    """Pixel window covering ellipses centred at (xs, ys) (heart frame) with semi-axes up to
    (rx, ry), tilted by `tilt`; returns (row slice, col slice, u, v) where (u, v) are coordinates in
    the chamber frame (heart frame rotated by -tilt), in mm."""
    ang = np.arctan2(self.sin, self.cos) + tilt
    hx = np.sqrt((rx * np.cos(ang)) ** 2 + (ry * np.sin(ang)) ** 2) + 2 * self.px
    hy = np.sqrt((rx * np.sin(ang)) ** 2 + (ry * np.cos(ang)) ** 2) + 2 * self.px
    xi, yi = self.to_image(np.asarray(xs), np.asarray(ys))
    x0, x1 = xi.min() - hx, xi.max() + hx
    y0, y1 = yi.min() - hy, yi.max() + hy
    half = CMR_FOV_MM / 2.0
    c0 = int(np.clip(np.floor((x0 + half) / self.px), 0, self.size))
    c1 = int(np.clip(np.ceil((x1 + half) / self.px), 0, self.size))
    # Image rows grow downwards: row r has y = half - (r + 0.5) px.
    r0 = int(np.clip(np.floor((half - y1) / self.px), 0, self.size))
    r1 = int(np.clip(np.ceil((half - y0) / self.px), 0, self.size))
    xw = self.c[c0:c1][None, :] - self.shift[0]
    yw = -self.c[r0:r1][:, None] - self.shift[1]
    # image -> heart frame (rotate by -theta), then heart -> chamber frame (rotate by -tilt).
    xh = self.cos * xw + self.sin * yw
    yh = -self.sin * xw + self.cos * yw
    ct, st = np.cos(tilt), np.sin(tilt)
    u = (ct * xh + st * yh).astype(np.float32)
    v = (-st * xh + ct * yh).astype(np.float32)
    return slice(r0, r1), slice(c0, c1), u, v, (ct, st)


def _render_cine(rng: np.random.Generator, subj: dict, frames: int, size: int) -> np.ndarray:
  p = subj["phen"]
  lvedv, lvesv = p[_P["lvedv"]], p[_P["lvesv"]]
  rvedv, rvesv = p[_P["rvedv"]], p[_P["rvesv"]]
  la_max, ra_max = p[_P["la_volume"]], p[_P["ra_volume"]]
  wall, hr = p[_P["lv_wall_thickness"]], p[_P["heart_rate"]]
  r = rng.random(size=24)
  nrm = rng.normal(size=8)

  # Volume curves over one RR interval; frame t is at phase t / frames, frame 0 = end-diastole.
  phase = np.arange(frames, dtype=np.float64) / frames
  t_es = float(np.clip(0.35 + 0.0025 * (hr - 70.0) + 0.01 * nrm[0], 0.27, 0.46))
  tau = 0.15 + 0.08 * (subj["cm_type"] == 2) + 0.04 * (subj["cm_type"] == 1)
  fill = _ventricular_fill(phase, t_es, tau)
  lv = lvesv + (lvedv - lvesv) * fill
  rv_fill = _ventricular_fill((phase - 0.01) % 1.0, t_es, tau)     # RV a touch later
  rv = rvesv + (rvedv - rvesv) * rv_fill
  la_min = la_max * (0.42 + 0.1 * r[0] + 0.25 * (subj["cm_type"] > 0))
  ra_min = ra_max * (0.45 + 0.1 * r[1] + 0.2 * subj["ph"])
  la = la_max - (la_max - la_min) * fill
  ra = ra_max - (ra_max - ra_min) * rv_fill

  # Chamber geometry in the heart frame (mm): x towards the patient's left (image right), y towards
  # the apex (image up); the interventricular septum is centred on x = 0, the AV plane at y = av.
  # Ventricles are half-ellipses standing on the AV plane (half-width a, length L), atria
  # ellipses hanging below it, cut by it. Areas scale with volume^(2/3): lengths ~ V^(1/4) and
  # widths ~ V^(5/12), so systole shortens the long axis less than the short one.
  dil = np.clip((lvedv - 150.0) / 150.0, 0.0, 1.0)
  sph = np.exp(0.05 * nrm[1] + 0.18 * dil)                  # dilated LVs are more spherical
  lv_a = 3.0 * lv ** (5 / 12) * sph
  lv_l = 23.0 * lv ** 0.25 / sph
  rv_a = 2.4 * rv ** (5 / 12)
  rv_l = 18.0 * rv ** 0.25
  la_a, la_b = 5.3 * np.cbrt(la), 6.1 * np.cbrt(la)
  ra_a, ra_b = 5.3 * np.cbrt(ra), 5.8 * np.cbrt(ra)
  # Myocardium: the wall thickens in systole, conserving the ring's area in the slice:
  # solves (a + w)(L + 0.8 w) - a L = ring for w (the apex is thinner: 0.8 w).
  ring = (lv_a[0] + wall) * (lv_l[0] + 0.8 * wall) - lv_a[0] * lv_l[0]
  lin = 0.8 * lv_a + lv_l
  w = (-lin + np.sqrt(lin**2 + 3.2 * ring)) / 1.6
  rv_wall = 3.0 + 0.3 * nrm[2] + 2.5 * subj["ph"]
  atrial_wall = 2.0

  la_drop = 0.7                                            # atria: centre 0.7 b below the cut
  height = lv_l[0] + 3.0 + (1.0 + la_drop) * max(la_b.max(), ra_b.max())
  lv_apex = height / 2.0                                   # centre the heart at ED
  av = lv_apex - lv_l                                      # AV plane: descends in systole
  tilt_rv = np.deg2rad(-9.0 + 3.0 * nrm[3])                # RV apex leans toward the LV apex
  rv_half = np.sqrt((rv_a * np.cos(tilt_rv)) ** 2 + (rv_l * np.sin(tilt_rv)) ** 2)
  lv_cx = w / 2 + lv_a
  rv_cx, rv_cy = -w / 2 - rv_half - 0.5 * rv_wall, av + 5.0
  la_cx, la_cy = 1.5 + la_a, av - 3.0 - la_drop * la_b
  ra_cx, ra_cy = -1.5 - ra_a, av - 3.0 - la_drop * ra_b

  # Pose: the cine is cropped around the heart, as the paper's preprocessing does (centred to
  # +-1.8 mm), and a 4-chamber plane is planned on the LV long axis (in-plane tilt +-8 degrees).
  # Simulator v1 had +-20 degrees and +-9 mm: pose then carried most of the pixel variance, and
  # 84 labelled cines read LVEF from the raw pixels at ridge R2 0.02 (0.50 now).
  theta = np.deg2rad(-8.0 + 16.0 * r[2])
  shift = (np.array([r[3], r[4]]) - 0.5) * 0.02 * CMR_FOV_MM
  g = _Grid(size, theta, shift)
  px = g.px

  # Static background (lungs either side, liver below-left, soft tissue, descending aorta),
  # placed in the heart frame so that it moves with the pose.
  _, _, xh, yh, _ = g.window([0.0], [0.0], 1e4, 1e4, 0.0)
  bg = np.full((1, size, size), 95.0 + 15.0 * r[5], np.float32)
  one = lambda x: np.array([x], np.float64)
  for (cx, cy, ax, by, val) in (
      (-85.0 - 10 * r[6], 10.0, 38.0 + 8 * r[15], 90.0, 20.0),        # right lung (image left)
      (88.0 + 10 * r[7], 25.0, 42.0 + 8 * r[16], 95.0, 20.0),         # left lung
      (-50.0, -105.0 - 10 * r[8], 80.0, 40.0, 110.0 + 15 * r[9]),     # liver
  ):
    _soft_ellipse(bg, xh, yh, one(cx), one(cy), one(ax), one(by), px, val)
  # Epicardial fat and pericardium: a brighter rim around the whole heart.
  hx = (ra_cx[0] - ra_a.max() + lv_cx[0] + lv_a[0] + w[0]) / 2
  hy = (lv_apex + la_cy[0] - la_b.max()) / 2
  fat = 112.0 + 12.0 * r[17]
  _soft_ellipse(bg, xh, yh, one(hx), one(hy),
                one((lv_cx[0] + lv_a[0] + w[0] - ra_cx[0] + ra_a.max()) / 2 + 2.0),
                one((lv_apex - la_cy[0] + la_b.max()) / 2 + 2.0), px, fat)
  ao_r = 10.0 * np.sqrt(subj["size"]) * (1.0 + 0.004 * (subj["age"] - 60))
  ao_x, ao_y = one(la_cx[0] + 0.5 * la_a.max()), one(la_cy[0] - la_b.max() - ao_r + 1.0)
  _soft_ellipse(bg, xh, yh, ao_x, ao_y, one(ao_r + 1.5), one(ao_r + 1.5), px, 60.0)
  _soft_ellipse(bg, xh, yh, ao_x, ao_y, one(ao_r), one(ao_r), px, 185.0)
  # Smooth texture: a few random low-frequency cosines.
  k = rng.normal(size=(5, 2)) * (2 * np.pi / 60.0)
  ph0 = rng.uniform(0, 2 * np.pi, size=5)
  tex = sum(np.cos(k[i, 0] * xh + k[i, 1] * yh + ph0[i]) for i in range(5))
  bg += (5.0 * tex).astype(np.float32)

  img = np.broadcast_to(bg, (frames, size, size)).copy()

  myo, blood = 55.0 + 12.0 * r[10], 205.0 + 12.0 * r[11]
  tilt_at = np.deg2rad(3.0 * nrm[5])

  def draw(cx, cy, a, b, tilt, value, cut=None, keep_above=True):
    rows, cols, u, v, (ct, st) = g.window(cx, cy, a.max(), b.max(), tilt)
    if rows.stop <= rows.start or cols.stop <= cols.start:
      return
    cu, cv = ct * cx + st * cy, -st * cx + ct * cy          # centres in the chamber frame
    if cut is not None:
      cut = cv + cut
    _soft_ellipse(img[:, rows, cols], u, v, cu, cv, a, b, px, value, cut, keep_above)

  zero = np.zeros(frames)
  # Walls first (myocardium), then the blood pools.
  draw(ra_cx, ra_cy, ra_a + atrial_wall, ra_b + atrial_wall, tilt_at, myo + 20,
       la_drop * ra_b + 1.0, False)
  draw(la_cx, la_cy, la_a + atrial_wall, la_b + atrial_wall, tilt_at, myo + 20,
       la_drop * la_b + 1.0, False)
  draw(rv_cx, rv_cy, rv_a + rv_wall, rv_l + rv_wall, tilt_rv, myo, zero - 3.0)
  draw(lv_cx, av, lv_a + w, lv_l + 0.8 * w, 0.0, myo, zero - 3.0)
  draw(ra_cx, ra_cy, ra_a, ra_b, tilt_at, blood - 12, la_drop * ra_b, False)
  draw(la_cx, la_cy, la_a, la_b, tilt_at, blood - 8, la_drop * la_b, False)
  draw(rv_cx, rv_cy, rv_a, rv_l, tilt_rv, blood - 5, zero)
  draw(lv_cx, av, lv_a, lv_l, 0.0, blood, zero)

  # Acquisition nuisance: intensity scale and offset, Gaussian noise; no blur.
  scale = 0.82 + 0.3 * r[12]
  offset = -12.0 + 24.0 * r[13]
  sigma = 3.0 + 6.0 * r[14]
  img *= np.float32(scale)
  img += np.float32(offset)
  img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
  np.clip(img, 0.0, 255.0, out=img)
  return np.rint(img).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Public entry
# ----------------------------------------------------------------------------------------------

def subject_id(index: int) -> bytes:
  return b"SYN-%06d" % int(index)


def subject_index(sid) -> int:
  """The index of `subject_id(index)` (bytes or str)."""
  sid = sid.decode() if isinstance(sid, bytes) else str(sid)
  if not sid.startswith("SYN-") or not sid[4:].isdigit():
    raise ValueError(f"{sid!r} is not a synthetic subject id (SYN-NNNNNN)")
  return int(sid[4:])


def _subject(seed, index, frames, size):
  if frames < 1 or size < 8:
    raise ValueError(f"need frames >= 1 and size >= 8, got frames={frames}, size={size}")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
  return _draw_subject(rng), rng


def rescan(seed: int, index: int, *, frames: int, size: int, session: int = 1) -> np.ndarray:
  """`simulate_subject(seed, index)`'s heart imaged again: the same phenotypes, the cine's other
  draws (pose, intensities, background, noise, the cycle's timing and shape) afresh for each
  `session` >= 1. What a generator that knew the subject's phenotypes exactly could produce at
  best: the test-retest reference for generation scores."""
  if session < 1:
    raise ValueError(f"session 0 is the cohort's own cine; rescans are sessions >= 1, got {session}")
  subj, rng = _subject(seed, index, frames, size)
  # Child 0 draws the ECG and child 1 the cohort's cine; later children are fresh and independent.
  return _render_cine(rng.spawn(2 + session)[-1], subj, frames, size)


def simulate_subject(seed: int, index: int, *, frames: int, size: int) -> dict[str, np.ndarray]:
  """One paired subject, a function of (seed, index) alone.

  Returns {"ecg": float32 (12, 2500) mV, raw (wander and noise, unfiltered), leads in LEADS order;
  "cmr": uint8 (frames, size, size), a 4-chamber cine over one RR interval starting at
  end-diastole; "phenotypes": float32 (len(PHENOTYPES),); "labels": int8 (len(LABELS),);
  "subject_id": bytes, b"SYN-%06d" % index}. The phenotypes and the ECG do not depend on
  frames or size.
  """
  subj, rng = _subject(seed, index, frames, size)
  ecg_rng, cmr_rng = rng.spawn(2)
  ecg = synthetic_ecg.simulate_ecg(ecg_rng, subj)
  cmr = _render_cine(cmr_rng, subj, frames, size)
  return {
      "ecg": ecg,
      "cmr": cmr,
      "phenotypes": subj["phen"].astype(np.float32),
      "labels": subj["labels"],
      "subject_id": subject_id(index),
  }
