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


def frame_grid(path, rows, title, num_frames=6, cell=1.5, dpi=110):
  """One row of frames per (label, cine (frames, H, W) in [-1, 1]), evenly spaced in time."""
  plt = pyplot()
  frames = np.linspace(0, len(rows[0][1]) - 1, num_frames).astype(int)
  fig, axes = plt.subplots(len(rows), num_frames, figsize=(cell * num_frames, 1.07 * cell * len(rows)),
                           squeeze=False)
  for r, (label, cine) in enumerate(rows):
    for c, f in enumerate(frames):
      ax = axes[r, c]
      ax.imshow(np.clip(cine[f], -1, 1), cmap="gray", vmin=-1, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(label, fontsize=7)
      if r == 0:
        ax.set_title(f"frame {f}", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
