"""The one memory limit on input items: how large an item may be once decoded, checked from its header.

Every reader of untrusted files (ingest's discovery, DICOM headers, inference) estimates an item's decoded
size from its header alone (:func:`decoded_bytes`) and refuses anything above the limit before reading
pixel data, so a few-KB file claiming gigabytes (a hostile or damaged header) costs nothing.
"""

from __future__ import annotations

# Largest decoded size in bytes one item may claim; ingest's --max-item-bytes overrides it. 1 GiB holds a
# 512 x 512 x 1024 CT volume or a 16000 x 16000 grey photograph as float32.
MAX_ITEM_BYTES = 2**30
LOADED_BYTES = 4  # every loader returns float32


def decoded_bytes(values: int, stored_bytes: int) -> int:
    """Memory one item takes once decoded: ``values`` (voxels x channels) at the wider of the stored type
    and the float32 every loader returns."""
    return values * max(stored_bytes, LOADED_BYTES)


def too_large(size: int, max_item_bytes: int) -> str:
    """The rejection reason for a header claiming a decoded size above the limit (checked before reading)."""
    return (f"header claims {size:,} bytes once decoded, more than the limit of {max_item_bytes:,} "
            "(--max-item-bytes): refused before reading the data")
