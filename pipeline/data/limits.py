"""The one memory limit on input items: how large an item may be once decoded, checked from its header.

Every reader of untrusted files (ingest's discovery, DICOM headers, inference) estimates an item's decoded
size from its header alone (:func:`decoded_bytes`) and refuses anything above the limit before reading
pixel data, so a few-KB file claiming gigabytes (a hostile or damaged header) costs nothing.
"""

from __future__ import annotations

# Largest decoded size in bytes one item may claim; ingest's --max-item-bytes overrides it. 1 GiB reads a
# 256^3 MRI volume (0.3 GB), a 512 x 512 x 220 int16 CT volume or a 7500 x 7500 grey photograph.
MAX_ITEM_BYTES = 2**30
# Bytes per value on top of the stored ones while an item is read and sliced: the float32 array every loader
# returns and three float32 working copies (validation, intensity scaling, percentile scratch). Measured on a
# 12000 x 12000 grey PNG (144 M values): reading took 1.5 GB, reading and slicing 2.2 GB; this estimate
# says 2.4 GB.
WORKING_BYTES = 4 * 4


def decoded_bytes(values: int, stored_bytes: int) -> int:
    """Memory reading one item takes: ``values`` (voxels x channels) at its stored width plus the float32
    copies the loaders and the slicing make (:data:`WORKING_BYTES`)."""
    return values * (stored_bytes + WORKING_BYTES)


def too_large(size: int, max_item_bytes: int) -> str:
    """The rejection reason for a header claiming a decoded size above the limit (checked before reading)."""
    return (f"header claims {size:,} bytes once decoded, more than the limit of {max_item_bytes:,} "
            "(--max-item-bytes): refused before reading the data")
