"""CMR readers: single-slice cine CMRs from NIfTI, DICOM (series, multi-frame, or the 4-chamber
series of a multi-series folder or zip such as UK Biobank's field 20208), `.npy`, `.npz`.

`read_cmr` returns (F, H, W) float32 in file intensity units (DICOM rescale slope/intercept and
NIfTI scl_slope/scl_inter applied). Failures raise `RecordError` (record_errors.py) with a reason
from `REASONS` and a message naming the file. No pickle is ever loaded:
`np.load(..., allow_pickle=False)` throughout.
"""

from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np

from cardionets_jax.data.record_errors import (RecordError, _as_float_array, _fail,
                                               _has_dicm_preamble)


def read_cmr(path: str) -> np.ndarray:
  """Reads a single-slice cine as (F, H, W) float32 in file intensity units.

  NIfTI (`.nii`, `.nii.gz`): 3-D (x, y, t) or 4-D (x, y, 1, t), transposed to time-first with rows
  = y. A DICOM cine: a directory holding one series of single-frame files (ordered by
  InstanceNumber, else TriggerTime), or one multi-frame file. A folder or `.zip` holding several
  series (UK Biobank 20208: the 2-, 3- and 4-chamber long-axis cines) gives its 4-chamber series,
  known from its SeriesDescription, frames ordered by TriggerTime and kept as the scanner gave
  them; none or two such series is "cmr_series", naming the series found. `.npy` (F, H, W) and
  `.npz` (key `cmr`, or its only array), never unpickled.
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
  elif low.endswith(".zip"):
    cine = _read_dicom_zip(p)
  elif low.endswith(".dcm") or _has_dicm_preamble(p):
    cine = _read_dicom_multiframe(p)
  else:
    _fail("unsupported_format", p, "not a recognised CMR format (NIfTI .nii/.nii.gz, DICOM "
          "series directory, zip or multi-frame file, .npy, .npz)")
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
                 if not _not_a_frame(n) and os.path.isfile(os.path.join(directory, n)))
  if not names:
    _fail("missing_file", directory, "directory holds no DICOM files")
  if len(names) == 1:
    return _read_dicom_multiframe(os.path.join(directory, names[0]))
  return _series_cine(directory, _read_series_files(directory, names))


def _series_cine(where, items):
  """(F, H, W) of the one series in `items` ((name, dataset) pairs), or of its 4-chamber one."""
  chosen = _four_chamber(where, items)
  _check_one_series(where, chosen)
  # A series chosen among several (UK Biobank 20208) is ordered by its acquisition's timing.
  keys = ("InstanceNumber", "TriggerTime") if chosen is items else ("TriggerTime", "InstanceNumber")
  frames = []
  for i in _series_order(where, chosen, keys):
    n, ds = chosen[i]
    try:
      pixels = ds.pixel_array
    except Exception as e:  # pylint: disable=broad-except
      _fail("unreadable", where, f"cannot decode pixels of {n}: {type(e).__name__}: {e}")
    if pixels.ndim != 2:
      _fail("cmr_ndim", where, f"{n} has pixel array of shape {pixels.shape}: expected "
            "a 2-D grey-level frame")
    frames.append(_rescale(ds, pixels))
  return np.stack(frames)


# "LAX_4Ch", "4CH", "4 chamber", "4-Ch view"; not "14Ch" nor "2Ch"/"3Ch".
_FOUR_CHAMBER = re.compile(r"(?<![0-9])4\s*[-_ ]?\s*ch", re.IGNORECASE)


def _four_chamber(where, items):
  """The files of `items` to read: all of them when they are one series; of several series,
  those of the one whose SeriesDescription names the 4-chamber view."""
  series = {}
  for n, ds in items:
    key = (str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", "")).strip())
    series.setdefault(key, []).append((n, ds))
  if len(series) == 1:
    return items
  found = "; ".join(f"{d or '(no description)'!r} (SeriesInstanceUID {u}, {len(v)} files)"
                   for (u, d), v in series.items())
  four = [k for k in series if _FOUR_CHAMBER.search(k[1])]
  if len(four) != 1:
    _fail("cmr_series", where, f"{len(series)} series and {len(four) or 'no'} 4-chamber one "
          f"among them (a cine is one series; by SeriesDescription): {found}")
  return series[four[0]]


# A series folder's or zip's files that are its index, not images (UK Biobank: "manifest.cvs").
_INDEX_SUFFIXES = (".csv", ".cvs", ".txt", ".json", ".xml")


def _not_a_frame(name):
  base = os.path.basename(name)
  return base.startswith(".") or base.upper() == "DICOMDIR" or base.lower().endswith(_INDEX_SUFFIXES)

_MAX_MEMBER = 256 << 20  # bytes: a larger "frame" is a zip bomb or not a cine frame


def _read_dicom_zip(path):
  """A zip of DICOM files (UK Biobank 20208), read in memory: nothing is extracted to disk."""
  import pydicom  # pylint: disable=import-outside-toplevel

  try:
    with zipfile.ZipFile(path) as z:
      members = [m for m in z.infolist() if not m.is_dir() and not _not_a_frame(m.filename)]
      items = []
      for m in members:
        if m.file_size > _MAX_MEMBER:
          _fail("unreadable", path, f"{m.filename}: {m.file_size} bytes uncompressed")
        try:
          items.append((m.filename, pydicom.dcmread(io.BytesIO(z.read(m)))))
        except Exception as e:  # pylint: disable=broad-except
          _fail("unreadable", path, f"{m.filename} is not a readable DICOM file: "
                f"{type(e).__name__}: {e}")
  except (zipfile.BadZipFile, OSError) as e:
    _fail("unreadable", path, f"not a readable zip: {type(e).__name__}: {e}")
  if not items:
    _fail("missing_file", path, "the zip holds no DICOM files")
  for n, ds in items:
    if "PixelData" not in ds:
      _fail("unreadable", path, f"{n} has no PixelData")
  return _series_cine(path, items)


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


def _series_order(directory, items, keys=("InstanceNumber", "TriggerTime")):
  """Frame order by the first of `keys` that every frame has, without duplicates."""
  for key in keys:
    vals = [ds.get(key) for _, ds in items]
    if all(v not in (None, "") for v in vals):
      keys = [float(v) for v in vals]
      if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        files = [n for (n, _), k in zip(items, keys) if k == dup]
        if key != keys[-1]:
          continue                                  # try the next key before giving up
        _fail("unreadable", directory, f"cannot order the frames: duplicate {key} {dup:g} in "
              f"{files[:2]}")
      return np.argsort(keys, kind="stable")
  _fail("unreadable", directory, f"cannot order the frames: {' and '.join(keys)} are missing "
        "or duplicated")
