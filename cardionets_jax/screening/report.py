"""Screening outputs: the one-page report and the synthetic cine files."""

import os

import numpy as np

from cardionets_jax import plots
from cardionets_jax.data import readers

CLINICAL_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))


def _ecg_paper(ax, seconds, low, high):
  """Standard ECG paper: 0.04 s / 0.1 mV minor and 0.2 s / 0.5 mV major squares."""
  for step, width in ((0.04, 0.3), (0.2, 0.8)):
    for x in np.arange(0, seconds + 1e-9, step):
      ax.axvline(x, color="#f4b6b6", lw=width, zorder=0)
  for step, width in ((0.1, 0.3), (0.5, 0.8)):
    for y in np.arange(np.floor(low / step) * step, high + 1e-9, step):
      ax.axhline(y, color="#f4b6b6", lw=width, zorder=0)


def write_report(path, name, ecg, fs, result, cine=None, num_frames=5):
  """One page: the 12-lead ECG (3 x 4 at 25 mm/s, 10 mm/mV, a lead II rhythm strip), the
  phenotypes against the reference ranges, the disease probabilities, frames of the cine."""
  plt = plots.pyplot()
  fig = plt.figure(figsize=(11, 12))
  grid = fig.add_gridspec(3, 2, height_ratios=[5.0, 3.2, 1.6], hspace=0.3, wspace=0.25,
                          left=0.1, right=0.97, top=0.94, bottom=0.03)
  _draw_ecg(fig.add_subplot(grid[0, :]), ecg, fs, name, result["input"])
  _draw_phenotypes(fig.add_subplot(grid[1, 0]), result["phenotypes"])
  _draw_diseases(fig.add_subplot(grid[1, 1]), result["diseases"])
  if cine is not None:
    frames = np.linspace(0, len(cine) - 1, num_frames).astype(int)
    sub = grid[2, :].subgridspec(1, num_frames, wspace=0.05)
    for c, f in enumerate(frames):
      a = fig.add_subplot(sub[0, c])
      a.imshow(cine[f], cmap="gray", vmin=-1, vmax=1)
      a.set_xticks([]), a.set_yticks([])
      a.set_title(f"synthetic cine, frame {f}", fontsize=7)
  fig.suptitle("CardioNets screening report (research use; not a diagnosis)", fontsize=11)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _draw_ecg(ax, ecg, fs, name, checks, row_gap=3.0):
  """The 3 x 4 clinical layout and a lead II rhythm strip on ECG paper."""
  leads = list(readers.STANDARD_LEADS)
  seconds = ecg.shape[1] / fs
  segment = seconds / 4
  t = np.arange(ecg.shape[1]) / fs
  for r, row in enumerate(CLINICAL_LAYOUT):
    base = -r * row_gap
    for c, lead in enumerate(row):
      sl = (t >= c * segment) & (t < (c + 1) * segment)
      ax.plot(t[sl], ecg[leads.index(lead), sl] + base, color="k", lw=0.6)
      ax.text(c * segment + 0.05, base + 0.9, lead, fontsize=8)
  base = -3 * row_gap
  ax.plot(t, ecg[leads.index("II")] + base, color="k", lw=0.6)
  ax.text(0.05, base + 0.9, "II", fontsize=8)
  low, high = base - 1.5, 1.5
  _ecg_paper(ax, seconds, low, high)
  ax.set(xlim=(0, seconds), ylim=(low, high), xlabel="s (25 mm/s)", yticks=[])
  ax.set_aspect(0.4)  # 25 mm/s and 10 mm/mV: 0.2 s and 0.5 mV are both one 5 mm square
  ax.set_title(f"{name}: 12-lead ECG ({checks['fs_in']:g} Hz"
               f"{', resampled to 250 Hz' if checks['resampled'] else ''}; band-passed 0.67-40 Hz)",
               fontsize=10)


def _draw_phenotypes(ax, phen):
  """Each phenotype as a dot on its reference range (red outside it)."""
  names = list(phen)
  for i, n in enumerate(names):
    p = phen[n]
    lo, hi = p["reference_range"]
    x = (p["value"] - lo) / max(hi - lo, 1e-9)
    ax.barh(i, 1.0, left=0.0, color="#d9ead3", height=0.6)
    ax.plot([x], [i], "o", color="#cc0000" if p["outside_reference_range"] else "#1f4e79")
    ax.text(1.6, i, f"{p['value']:.1f} {p['unit']}  ({lo:.0f}-{hi:.0f})", va="center", fontsize=7)
  ax.set(yticks=range(len(names)), xlim=(-0.6, 2.8), xticks=[0, 1])
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xticklabels(["2.5th pct", "97.5th pct"], fontsize=7)
  ax.invert_yaxis()
  ax.set_title("Predicted phenotypes vs the cohort's reference range", fontsize=9)


def _draw_diseases(ax, diseases):
  """Each disease probability as a bar with its decision threshold."""
  for i, (n, d) in enumerate(diseases.items()):
    ax.barh(i, d["probability"], color="#cc0000" if d["positive"] else "#1f4e79", height=0.4)
    ax.plot([d["threshold"]] * 2, [i - 0.3, i + 0.3], "k--", lw=1)
    ax.text(0.0, i - 0.32, f"{n.replace('_', ' ')}: {d['probability']:.2f}"
            f"{' (above threshold)' if d['positive'] else ''}", fontsize=8)
  ax.set(yticks=[], xlim=(0, 1), ylim=(len(diseases) - 0.5, -0.7),
         xlabel="probability (dashed: decision threshold)")
  ax.set_title("Disease screening", fontsize=9)


def write_cine(out, name, cine):
  """`<name>.nii.gz` (x, y, t), as the project's reader reads it back, and `<name>.gif`."""
  plots.write_nifti(os.path.join(out, f"{name}.nii.gz"), cine)
  plots.write_gif(os.path.join(out, f"{name}.gif"), cine)
