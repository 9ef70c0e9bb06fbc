"""Write BIDS derivatives (our suffixes: Chimap, R2starmap, T2starmap, ...) with sidecars.

niworkflows' stock DataSink refuses the QSM suffixes, so qsmprep has its own small
writer.  Files are written atomically (temporary name in the same folder, then
``os.replace``), so an interrupted run never leaves a truncated NIfTI under its final name.
Their mode follows the umask like any other new file (``0o666 & ~umask``, e.g. 0644 under
umask 022), not the 0600 of the temporary file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits,
)

from qsmprep.bids import derivative_path
from qsmprep.interfaces.base import jsonable

#: Output dtype per suffix (anything else is float32).
_DTYPES = {"mask": np.uint8, "dseg": np.int16}


_UMASK_LOCK = threading.Lock()


def current_umask():
    """The process umask, read without changing it where possible.

    Linux reports it in ``/proc/self/status`` (thread-safe, no side effect); elsewhere it is
    read by setting and restoring it under a lock (``os.umask`` has no read-only form).
    Read at each write, not cached, so a umask changed after import is followed.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode():
    """Mode of a newly created regular file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path, writer):
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically.

    The result has the mode of a newly created file (``0o666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode())  # mkstemp's 0600 (or whatever writer left) → the umask's
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path, data):
    text = json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def write_nifti(in_file, out_file, dtype):
    img = nib.load(in_file)
    data = np.asanyarray(img.dataobj)
    if dtype is not np.float32:
        data = np.rint(data)
    header = img.header.copy()
    header.set_data_dtype(dtype)
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    out = nib.Nifti1Image(data.astype(dtype), img.affine, header)
    suffix = ".nii.gz" if str(out_file).endswith(".nii.gz") else ".nii"

    def _write(tmp):
        # nibabel picks compression from the extension, so write to a named sibling first
        named = tmp + suffix
        try:
            out.to_filename(named)
            shutil.move(named, tmp)
        finally:
            if os.path.exists(named):
                os.unlink(named)

    return atomic_write_bytes(out_file, _write)


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to write")
    out_dir = traits.Str(mandatory=True, desc="derivatives dataset root")
    entities = traits.Dict(mandatory=True, desc="BIDS entities (subject, session, acquisition, run)")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix, e.g. Chimap")
    desc = traits.Str(desc="desc- entity")
    space = traits.Str(desc="space- entity")
    extension = traits.Str(".nii.gz", usedefault=True, desc="file extension")
    meta = traits.Dict(desc="sidecar metadata")
    meta_extra = InputMultiObject(traits.Dict, desc="more sidecar metadata dictionaries, merged in order")
    units = traits.Str(desc="Units for the sidecar")
    sources = InputMultiObject(traits.Str, desc="input files this output derives from (BIDS URIs or paths)")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(desc="written derivative")
    out_meta = File(desc="written JSON sidecar")


class DerivativesSink(SimpleInterface):
    """Copy one file to its BIDS-derivatives name and write its JSON sidecar."""

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        out_file = derivative_path(
            inp.out_dir, inp.entities, inp.suffix,
            desc=inp.desc if isdefined(inp.desc) else None,
            space=inp.space if isdefined(inp.space) else None,
            extension=inp.extension,
        )
        if inp.extension.startswith(".nii"):
            write_nifti(inp.in_file, out_file, _DTYPES.get(inp.suffix, np.float32))
        else:
            atomic_write_bytes(out_file, lambda tmp: shutil.copyfile(inp.in_file, tmp))
        meta = {}
        if isdefined(inp.meta):
            meta.update(inp.meta)
        if isdefined(inp.meta_extra):
            for extra in inp.meta_extra:
                meta.update(extra)
        if isdefined(inp.units):
            meta["Units"] = inp.units
        if isdefined(inp.sources):
            meta["Sources"] = list(inp.sources)
        self._results["out_file"] = str(out_file)
        if inp.extension.startswith(".nii"):
            sidecar = str(out_file).rsplit(".nii", 1)[0] + ".json"
            write_json(sidecar, meta)
            self._results["out_meta"] = sidecar
        return runtime
