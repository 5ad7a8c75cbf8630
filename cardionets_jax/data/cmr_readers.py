"""CMR readers: single-slice cine CMRs from NIfTI, DICOM (series or multi-frame), `.npy`, `.npz`.

`read_cmr` returns (F, H, W) float32 in file intensity units (DICOM rescale slope/intercept and
NIfTI scl_slope/scl_inter applied). Failures raise `RecordError` (record_errors.py) with a reason
from `REASONS` and a message naming the file. No pickle is ever loaded:
`np.load(..., allow_pickle=False)` throughout.
"""

from __future__ import annotations

import os

import numpy as np

from cardionets_jax.data.record_errors import (RecordError, _as_float_array, _fail,
                                               _has_dicm_preamble)


def read_cmr(path: str) -> np.ndarray:
  """Reads a single-slice cine as (F, H, W) float32 in file intensity units.

  NIfTI (`.nii`, `.nii.gz`): 3-D (x, y, t) or 4-D (x, y, 1, t), transposed to time-first with rows
  = y. A DICOM cine: a directory holding one series of single-frame files (ordered by
  InstanceNumber, else TriggerTime), or one multi-frame file. `.npy` (F, H, W) and `.npz` (key
  `cmr`, or its only array), never unpickled.
  """
  p = os.fspath(path)
  low = p.lower()
  if not os.path.exists(p):
    _fail("missing_file", p, "no such file or directory")
  if os.path.isdir(p):
    cine = _read_dicom_series(p)
  elif low.endswith(".nii") or low.endswith(".nii.gz"):
    cine = _read_nifti(p)
  elif low.endswith(".npy"):
    try:
      arr = np.load(p, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      _fail("unreadable", p, f"cannot load .npy: {type(e).__name__}: {e}")
    cine = _as_float_array(arr, p)
  elif low.endswith(".npz"):
    cine = _read_cmr_npz(p)
  elif low.endswith(".dcm") or _has_dicm_preamble(p):
    cine = _read_dicom_multiframe(p)
  else:
    _fail("unsupported_format", p, "not a recognised CMR format (NIfTI .nii/.nii.gz, DICOM "
          "series directory or multi-frame file, .npy, .npz)")
  if cine.ndim != 3:
    _fail("cmr_ndim", p, f"array of shape {cine.shape}: expected a 3-D cine (F, H, W)")
  return np.ascontiguousarray(cine, dtype=np.float32)


def _read_cmr_npz(path):
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = list(npz.files)
      if "cmr" in keys:
        key = "cmr"
      elif len(keys) == 1:
        key = keys[0]
      else:
        _fail("unreadable", path, f".npz holds {keys}: expected a key 'cmr' or a single array")
      arr = npz[key]
  except RecordError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot load .npz: {type(e).__name__}: {e}")
  return _as_float_array(arr, path)


def _read_nifti(path):
  import nibabel as nib  # pylint: disable=import-outside-toplevel

  try:
    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot parse NIfTI header: {type(e).__name__}: {e}")
  if len(shape) == 4 and shape[2] == 1:
    pass
  elif len(shape) != 3:
    _fail("cmr_ndim", path, f"NIfTI of shape {shape}: expected a single-slice cine, 3-D "
          "(x, y, t) or 4-D (x, y, 1, t)")
  try:
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot read NIfTI data: {type(e).__name__}: {e}")
  data = data.reshape(shape[0], shape[1], shape[-1])        # (x, y, t)
  return np.transpose(data, (2, 1, 0))                      # (t, y, x) = (F, H, W)


def _rescale(ds, pixels, frame=None):
  """Applies RescaleSlope/Intercept (top level, or from the functional groups)."""
  slope, inter = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
  if slope is None and inter is None:
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"),
                   ds.get("SharedFunctionalGroupsSequence")):
      if not groups:
        continue
      g = groups[frame if (frame is not None and len(groups) > 1) else 0]
      pvt = g.get("PixelValueTransformationSequence")
      if pvt:
        slope, inter = pvt[0].get("RescaleSlope"), pvt[0].get("RescaleIntercept")
        break
  slope = 1.0 if slope in (None, "") else float(slope)
  inter = 0.0 if inter in (None, "") else float(inter)
  return pixels.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _read_dicom_multiframe(path):
  import pydicom  # pylint: disable=import-outside-toplevel

  try:
    ds = pydicom.dcmread(path, force=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array
  except Exception as e:  # pylint: disable=broad-except
    _fail("unreadable", path, f"cannot read DICOM pixels: {type(e).__name__}: {e}")
  if frames <= 1:
    _fail("cmr_frames", path, "a single-frame DICOM image (NumberOfFrames=1): a cine is a "
          "directory of frames or one multi-frame file")
  if pixels.ndim != 3:
    _fail("cmr_ndim", path, f"DICOM pixel array of shape {pixels.shape}: expected "
          "(frames, rows, columns)")
  if ds.get("PerFrameFunctionalGroupsSequence") and ds.get("RescaleSlope") is None:
    return np.stack([_rescale(ds, pixels[f], f) for f in range(pixels.shape[0])])
  return _rescale(ds, pixels)


def _read_dicom_series(directory):
  names = sorted(n for n in os.listdir(directory)
                 if not n.startswith(".") and n.upper() != "DICOMDIR"
                 and os.path.isfile(os.path.join(directory, n)))
  if not names:
    _fail("missing_file", directory, "directory holds no DICOM files")
  if len(names) == 1:
    return _read_dicom_multiframe(os.path.join(directory, names[0]))
  items = _read_series_files(directory, names)
  _check_one_series(directory, items)
  frames = []
  for i in _series_order(directory, items):
    n, ds = items[i]
    try:
      pixels = ds.pixel_array
    except Exception as e:  # pylint: disable=broad-except
      _fail("unreadable", directory, f"cannot decode pixels of {n}: {type(e).__name__}: {e}")
    if pixels.ndim != 2:
      _fail("cmr_ndim", directory, f"{n} has pixel array of shape {pixels.shape}: expected "
            "a 2-D grey-level frame")
    frames.append(_rescale(ds, pixels))
  return np.stack(frames)


def _read_series_files(directory, names):
  """(name, dataset) of each file: every one a readable single-frame DICOM image."""
  import pydicom  # pylint: disable=import-outside-toplevel

  items = []
  for n in names:
    f = os.path.join(directory, n)
    try:
      ds = pydicom.dcmread(f)
    except Exception as e:  # pylint: disable=broad-except
      _fail("unreadable", directory, f"{n} is not a readable DICOM file: {type(e).__name__}: {e}")
    if "PixelData" not in ds:
      _fail("unreadable", directory, f"{n} has no PixelData")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
      _fail("unreadable", directory, f"{n} is multi-frame inside a series of "
            f"{len(names)} files")
    items.append((n, ds))
  return items


def _check_one_series(directory, items):
  """Every file of the same series and frame size as the first."""
  uid0 = items[0][1].get("SeriesInstanceUID")
  for n, ds in items[1:]:
    if ds.get("SeriesInstanceUID") != uid0:
      _fail("unreadable", directory, f"mixed series: {n} has SeriesInstanceUID "
            f"{ds.get('SeriesInstanceUID')} but {items[0][0]} has {uid0}")
  shape0 = (items[0][1].get("Rows"), items[0][1].get("Columns"))
  for n, ds in items[1:]:
    if (ds.get("Rows"), ds.get("Columns")) != shape0:
      _fail("unreadable", directory, f"frame size mismatch: {n} is "
            f"{ds.get('Rows')}x{ds.get('Columns')} but {items[0][0]} is {shape0[0]}x{shape0[1]}")


def _series_order(directory, items):
  """Frame order by InstanceNumber, else (missing or duplicated) by TriggerTime."""
  for key in ("InstanceNumber", "TriggerTime"):
    vals = [ds.get(key) for _, ds in items]
    if all(v not in (None, "") for v in vals):
      keys = [float(v) for v in vals]
      if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        files = [n for (n, _), k in zip(items, keys) if k == dup]
        if key == "InstanceNumber":
          continue                                  # try TriggerTime before giving up
        _fail("unreadable", directory, f"cannot order the frames: duplicate {key} {dup:g} in "
              f"{files[:2]}")
      return np.argsort(keys, kind="stable")
  _fail("unreadable", directory, "cannot order the frames: InstanceNumber and TriggerTime are "
        "missing or duplicated")
