"""Images for people: figure setup, float cines to uint8, cine files (NIfTI + GIF)."""

import os

import numpy as np


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display on servers and pods)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def to_uint8(x):
  """A cine in [-1, 1] -> uint8 [0, 255], rounded (the inverse of the model's input scaling)."""
  return np.round((np.clip(np.asarray(x, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def write_nifti(path, cine):
  """A (frames, height, width) cine in [-1, 1] as NIfTI (x, y, t), as the CMR reader reads it."""
  import nibabel as nib
  nib.save(nib.Nifti1Image(np.transpose(to_uint8(cine), (2, 1, 0)), np.eye(4)), path)


def write_gif(path, cine):
  """A (frames, height, width) cine in [-1, 1] as a looping GIF."""
  import imageio.v2 as imageio
  imageio.mimsave(path, list(to_uint8(cine)), duration=0.08, loop=0)


def frame_grid(path, rows, title, num_frames=6, cell=1.5, dpi=110, gap=2):
  """One row of frames per (label, cine (frames, H, W) in [-1, 1]), evenly spaced in time.

  The frames are tiled into one mosaic drawn by a single imshow (one axes, not one per frame:
  rendering dozens of axes is what made these figures slow)."""
  plt = pyplot()
  frames = np.linspace(0, len(rows[0][1]) - 1, num_frames).astype(int)
  h, w = rows[0][1].shape[1:]
  mosaic = np.ones((len(rows) * (h + gap) - gap, num_frames * (w + gap) - gap), np.float32)
  for r, (_, cine) in enumerate(rows):
    for c, f in enumerate(frames):
      mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = np.clip(cine[f], -1, 1)
  fig = plt.figure(figsize=(cell * num_frames + 1.2, 1.07 * cell * len(rows) + 0.5))
  ax = fig.add_axes([1.2 / (cell * num_frames + 1.2), 0.02, 1 - 1.25 / (cell * num_frames + 1.2),
                     0.9 - 0.3 / (1.07 * cell * len(rows) + 0.5)])
  ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
  ax.set_xticks([c * (w + gap) + w / 2 for c in range(num_frames)])
  ax.set_xticklabels([f"frame {f}" for f in frames], fontsize=7)
  ax.xaxis.tick_top()
  ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(rows))])
  ax.set_yticklabels([label for label, _ in rows], fontsize=7)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  fig.suptitle(title, fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
