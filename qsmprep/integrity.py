"""Up-front integrity checks of input NIfTI files (damaged copies, truncated downloads).

nibabel reads a header and, lazily, only the bytes it needs, so a ``.nii.gz`` whose
compressed stream is damaged after the first blocks, or a file cut short by an interrupted
copy, loads "fine" and fails (or silently yields garbage) deep inside a processing step.
:func:`check_nifti` refuses such files before any processing, with one
:class:`~qsmprep.errors.InputError` naming the file:

* the file cannot be opened or read (permissions, I/O error, a folder in its place);
* it is not a single-file NIfTI-1/NIfTI-2 (wrong ``sizeof_hdr``, bad magic, a header
  nibabel refuses, a ``vox_offset`` inside the header, no voxels), or its name and its
  compression disagree (``.nii.gz`` not gzip, or gzip named ``.nii``);
* it is shorter than ``vox_offset`` + the data size its header declares (truncated);
* for ``.nii.gz`` in full mode: the *whole* gzip stream is decompressed (in chunks, never
  holding the data) so that zlib verifies every member's CRC-32 and length; corrupt
  deflate data, a CRC or length mismatch and a stream that ends early are refused.

``check_nifti(path, full=False)`` is the cheap mode for callers that only need to know
that a header can be trusted: header plus size; for ``.nii.gz`` the size comes from the
gzip trailer (ISIZE, the uncompressed length modulo 2**32), and only when that does not
match the header (a truncated file, or a valid multi-member gzip) is the stream read.

Cost (measured on 2 cores, 1 mm 224×224×144 echoes): full mode runs at zlib speed, about
0.10 s for an int16 echo of 13 MB compressed and 0.21 s for a float32 one of 26 MB (nibabel
reading the same data: 0.13 s and 0.27 s); :func:`check_files` on 16 such files: 2.7 s in one
thread, 1.5 s in two.  The cheap mode: 0.4 ms per file.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")

#: Compressed bytes read per call, and the most decompressed bytes produced per call
#: (a bound on memory: zeros compress ~1000:1, so the output side needs a bound too).
_READ_CHUNK = 1 << 20
_OUT_CHUNK = 4 << 20
_FIRST_CHUNK = 1 << 14
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper: zlib checks each member's CRC-32 and ISIZE
_GZIP_MAGIC = b"\x1f\x8b"
#: Extensions (between the header and vox_offset) are parsed like nibabel does, up to this size.
_MAX_EXTENSIONS = 64 << 20


class _Damaged(Exception):
    """Internal: the stream is damaged (message for the InputError)."""


def _plain_chunks(fh):
    while True:
        data = fh.read(_READ_CHUNK)
        if not data:
            return
        yield data


def _junk(fh):
    # junk after a complete, CRC-checked stream does not touch the image (nibabel never reads
    # it): say so rather than refuse a readable file
    LOGGER.warning("%s: ignoring data after the end of its gzip stream", getattr(fh, "name", "file"))


def _gzip_chunks(fh):
    """Decompressed bytes of every gzip member in ``fh``, in chunks; zlib checks each CRC."""
    decomp = zlib.decompressobj(_GZIP_WBITS)
    data = fh.read(_FIRST_CHUNK)  # a small first read: the header is all the cheap mode needs
    while True:
        if not data:
            data = fh.read(_READ_CHUNK)
            if not data:
                break
        if decomp.eof:  # the previous member ended: another member, zero padding, or junk
            data = data.lstrip(b"\0")  # (gzip allows zero padding, as Python's gzip module does)
            if len(data) < 2:
                more = fh.read(_READ_CHUNK)
                if not more:
                    if data:
                        _junk(fh)
                    return
                data += more
                continue
            if data[:2] != _GZIP_MAGIC:
                _junk(fh)
                return
            decomp = zlib.decompressobj(_GZIP_WBITS)
        try:
            out = decomp.decompress(data, _OUT_CHUNK if len(data) > _FIRST_CHUNK else _FIRST_CHUNK * 8)
        except zlib.error as exc:
            raise _Damaged(f"the gzip stream is corrupt (zlib: {exc}); copy or convert the file again") from None
        if out:
            yield out
        if decomp.eof:
            data = decomp.unused_data
        else:
            data = decomp.unconsumed_tail
    if not decomp.eof:
        try:  # output zlib still holds, and the end-of-stream check
            out = decomp.flush()
        except zlib.error as exc:
            raise _Damaged(f"the gzip stream is corrupt (zlib: {exc}); copy or convert the file again") from None
        if out:
            yield out
        if not decomp.eof:
            raise _Damaged("the gzip stream ends early (the file is truncated: an interrupted copy "
                           "or download?)")


class _Reader:
    """Pull exact byte counts from a chunk generator, counting everything it yields."""

    def __init__(self, chunks):
        self._chunks = chunks
        self._buf = b""
        self.total = 0

    def read(self, n):
        while len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self.total += len(chunk)
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def drain(self):
        """Consume the rest; the total number of bytes the stream held."""
        self._buf = b""
        for chunk in self._chunks:
            self.total += len(chunk)
        return self.total


def _parse_header(reader):
    """The nibabel header of the stream's start (as strict as ``nib.load``)."""
    import nibabel as nib
    import numpy as np

    head = reader.read(4)
    if len(head) < 4:
        raise _Damaged("is empty or too short to be a NIfTI file" if not head else
                       f"is too short to be a NIfTI file ({len(head)} bytes)")
    sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
    if 348 in sizes:
        klass = nib.Nifti1Header
    elif 540 in sizes:
        klass = nib.Nifti2Header
    else:
        raise _Damaged("is not a NIfTI file (sizeof_hdr is neither 348 nor 540)")
    size = klass.template_dtype.itemsize
    head += reader.read(size + 4 - 4)  # the header and the 4-byte extension flag
    if len(head) < size:
        raise _Damaged(f"is truncated inside its header ({len(head)} of {size} bytes)")
    probe = klass(head[:size], check=False)
    magic = probe["magic"].item()
    if magic != klass.single_magic:
        if magic == klass.pair_magic:
            raise _Damaged(f"has a NIfTI pair header (magic {magic.decode('latin1')!r}, data in a "
                           "separate .img); a .nii file needs a single-file header")
        raise _Damaged(f"is not a NIfTI file (magic {magic!r})")
    offset = int(probe["vox_offset"].item())
    if offset < size + 4:
        raise _Damaged(f"has vox_offset {offset}, inside its {size}-byte header (corrupt header)")
    if len(head) > size and head[size:size + 1] != b"\0":  # extensions, parsed as nib.load does
        if offset - len(head) <= _MAX_EXTENSIONS:
            head += reader.read(offset - len(head))
        else:  # implausibly large: the header alone decides
            head = head[:size] + b"\0\0\0\0"
    try:
        hdr = klass.from_fileobj(io.BytesIO(head), check=True)
        shape = tuple(int(d) for d in hdr.get_data_shape())
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError, ValueError, ...
        raise _Damaged(f"has a header nibabel cannot read ({exc})") from None
    if not shape or any(d < 1 for d in shape):
        raise _Damaged(f"has no voxels (shape {shape} in its header)")
    nbytes = itemsize
    for d in shape:
        nbytes *= d
    return hdr, offset, nbytes, shape


def _truncated(have, offset, nbytes, shape, hdr):
    return _Damaged(
        f"is truncated: {have:,} bytes where its header needs {offset + nbytes:,} "
        f"(vox_offset {offset} + {shape} {hdr.get_data_dtype()} voxels); copy or convert it again"
    )


def _is_gzip_name(path):
    return str(path).lower().endswith(".gz")


def check_nifti(path, full=True):
    """Refuse an unreadable, non-NIfTI, truncated or (``.nii.gz``) corrupt file.

    Parameters
    ----------
    path : path-like
        A ``.nii`` or ``.nii.gz`` file.
    full : bool
        ``True`` (default): also decompress the whole gzip stream, so zlib checks every
        CRC-32 and length (about the time of decompressing the file once; no data are
        kept).  ``False``: header + size only (for ``.nii.gz`` the gzip trailer's length,
        and the stream only where that disagrees with the header).

    Returns
    -------
    nibabel header (Nifti1Header or Nifti2Header) of the file.

    Raises
    ------
    InputError
        ``"<path>: <what is wrong>"``.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    try:
        with fh:
            return _check_open(fh, path, full)
    except _Damaged as exc:
        raise InputError(str(exc), path=path) from None
    except OSError as exc:  # EIO on a failing disk, a network share going away, ...
        raise InputError(f"cannot be read ({exc.strerror or exc})", path=path) from None


def _check_open(fh, path, full):
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise _Damaged("is not a regular file")
    gz = _is_gzip_name(path)
    magic = fh.read(2)
    fh.seek(0)
    if gz and magic != _GZIP_MAGIC:
        raise _Damaged("is named .gz but is not gzip-compressed (rename it to .nii, or gzip it)")
    if not gz and magic == _GZIP_MAGIC:
        raise _Damaged("is gzip-compressed but not named .gz (rename it to .nii.gz)")
    if not gz:
        hdr, offset, nbytes, shape = _parse_header(_Reader(_plain_chunks(fh)))
        if st.st_size < offset + nbytes:
            raise _truncated(st.st_size, offset, nbytes, shape, hdr)
        return hdr
    reader = _Reader(_gzip_chunks(fh))
    hdr, offset, nbytes, shape = _parse_header(reader)
    if not full:
        # ISIZE: the (last) member's uncompressed length modulo 2**32; equal → sizes agree
        if st.st_size >= 18:
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == (offset + nbytes) % (1 << 32):
                return hdr
        fh.seek(0)  # a mismatch: truncated, padded or multi-member; only the stream can tell
        reader = _Reader(_gzip_chunks(fh))
        _parse_header(reader)
    total = reader.drain()
    if total < offset + nbytes:
        raise _truncated(total, offset, nbytes, shape, hdr)
    return hdr


def check_files(paths, full=True, max_workers=None):
    """:func:`check_nifti` every file (in threads: zlib and file reads release the GIL).

    All files are checked, so one run names every damaged file: a single bad file raises its
    own :class:`InputError`; several raise one ``InputError`` whose message lists each as
    ``<path>: <problem>`` clauses separated by ``"; "`` (``exc.errors`` holds the individual
    errors).  Duplicates and ``None`` entries are skipped.

    Cost: about the time of decompressing each ``.nii.gz`` once (1.5 s for a 1 mm 8-echo
    magnitude + phase acquisition on 2 cores; see the module docstring).

    Returns
    -------
    dict path → nibabel header.
    """
    unique = list(dict.fromkeys(str(p) for p in paths if p is not None))
    if not unique:
        return {}
    workers = max_workers or min(4, os.cpu_count() or 1, len(unique))

    def one(p):
        try:
            return check_nifti(p, full=full)
        except InputError as exc:
            return exc

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, unique))
    else:
        results = [one(p) for p in unique]
    errors = [r for r in results if isinstance(r, InputError)]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        exc = InputError(f"{len(errors)} input files are damaged: " + "; ".join(str(e) for e in errors))
        exc.errors = errors
        raise exc
    return dict(zip(unique, results))
