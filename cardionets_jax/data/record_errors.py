"""The failure vocabulary the ECG and CMR readers share, and the two checks both use.

Kept apart from either reader so that neither imports the other: `RecordError` with a `reason`
from `REASONS`, the `_fail` shorthand that names the file, and the DICM-preamble sniff and numeric
array check that both the ECG and the CMR dispatch need.
"""

from __future__ import annotations

import numpy as np

REASONS = (
    "missing_file", "unreadable", "length_mismatch", "unknown_lead", "duplicate_lead",
    "too_few_leads", "nonfinite", "flat_lead", "sampling_rate", "too_short",
    "cmr_ndim", "cmr_frames", "cmr_series", "unsupported_format", "amplitude_units",
)


class RecordError(ValueError):
  """A record that cannot be used: `reason` a short code, `str(e)` the message.

  The readers and the preprocessing raise only the codes in `REASONS`; other stages (e.g. the
  dataset build) may add their own codes.
  """

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason
    self.message = message

  def __str__(self):
    return self.message

  def __reduce__(self):  # picklable across worker processes despite the 2-argument constructor
    return (type(self), (self.reason, self.message))


def _fail(reason, path, detail):
  raise RecordError(reason, f"{path}: {detail}")


def _has_dicm_preamble(path):
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def _as_float_array(arr, path):
  if not isinstance(arr, np.ndarray):
    _fail("unreadable", path, f"expected one array, found {type(arr).__name__}")
  if arr.dtype.kind not in "biuf":
    _fail("unreadable", path, f"array dtype {arr.dtype} is not numeric")
  return arr.astype(np.float64)
