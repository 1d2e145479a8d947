"""Reading .npz archives (zips of .npy arrays, as np.savez writes) without trusting them."""

import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

# The .npy header that np.savez writes; anything else (a damaged header) is refused before NumPy parses it.
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d{0,9})', 'fortran_order': (False|True), "
                         r"'shape': \((\d{1,19},|(?:\d{1,19}(?:, \d{1,19})+)?)\), \} *\n")
_MAX_NPY_HEADER = 10000  # NumPy's own limit
_MAX_DEFLATE_RATIO = 1032  # deflate expands data at most this much


def read_npz(path):
    """{name: array} of the .npz file at `path` (a zip of .npy files, as np.savez writes), read defensively.

    Each member's zip entry and .npy header are checked, and the size its header declares matched against its
    size in the zip directory, before any array is allocated; arrays of Python objects (pickles) are never
    loaded.  Damage raises ValueError naming the member and the problem; OSError when the file cannot be read.
    """
    size = Path(path).stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            return {info.filename[:-4]: _read_npy_member(archive, info, size) for info in archive.infolist()}
    except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error) as error:
        raise ValueError(f"damaged zip archive ({error})") from None


def _read_npy_member(archive, info, archive_size):
    """The array in zip member `info`, read once its zip entry and .npy header have been checked."""
    name = info.filename
    if not name.endswith(".npy"):
        raise ValueError(f"member {name!r} is not an .npy array")
    if info.flag_bits & 0x41:  # traditional or strong encryption
        raise ValueError(f"member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"member {name!r} uses unsupported zip compression method {info.compress_type}")
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
    if info.compress_size > archive_size or info.file_size > ratio * info.compress_size:
        raise ValueError(f"member {name!r}: impossible sizes in the zip directory ({info.compress_size} bytes "
                         f"stored, {info.file_size} unpacked)")
    with archive.open(info) as handle:
        _check_npy_header(handle, info)
        handle.seek(0)
        array = np.lib.format.read_array(handle, allow_pickle=False)
        handle.read()  # to the member's end, where zipfile checks its CRC
    return array


def _check_npy_header(handle, info):
    """Check the .npy header at the start of zip member `info` against the member's size in the zip directory."""
    prefix = handle.read(8)
    if prefix[:6] != b"\x93NUMPY" or prefix[6:] not in (b"\x01\x00", b"\x02\x00", b"\x03\x00"):
        raise ValueError(f"member {info.filename!r} is not an .npy array (no valid .npy magic string)")
    width = 2 if prefix[6] == 1 else 4  # bytes of the header length
    length = int.from_bytes(handle.read(width), "little")
    start = 8 + width + length
    match = length <= _MAX_NPY_HEADER and _NPY_HEADER.fullmatch(handle.read(length).decode("latin-1"))
    if not match:
        raise ValueError(f"member {info.filename!r} has a damaged .npy header")
    try:
        dtype = np.dtype(match[1])
    except TypeError:
        raise ValueError(f"member {info.filename!r} has a damaged .npy header (dtype {match[1]!r})") from None
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects (a pickle), which are never loaded")
    shape = tuple(int(size) for size in re.findall(r"\d+", match[3]))
    declared = math.prod(shape) * dtype.itemsize
    if not dtype.itemsize or max(shape, default=0) > info.file_size or start + declared != info.file_size:
        raise ValueError(f"member {info.filename!r}: its header declares shape {shape} of {dtype}, {declared} "
                         f"bytes, but it holds {info.file_size - start}")


