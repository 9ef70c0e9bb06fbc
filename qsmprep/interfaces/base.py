"""Helpers shared by the thin Nipype wrappers: NIfTI in, float32 NIfTI out, same affine."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, traits


class QSMInputSpec(BaseInterfaceInputSpec):
    """Inputs every numerical interface has."""

    num_threads = traits.Int(1, usedefault=True, desc="threads for FFTs and other parallel numerics")


def load(path, dtype=np.float32):
    """Load a NIfTI image; return (data as ``dtype``, image)."""
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=dtype), img


def load_mask(path):
    return load(path, dtype=np.float32)[0] > 0.5


def save_like(data, ref, name, runtime_cwd, dtype=np.float32):
    """Save ``data`` with the geometry of ``ref`` (an image) into the node's directory.

    Intermediate files are uncompressed ``.nii``: gzip costs seconds per 4D volume at
    1 mm and the work directory is scratch; derivatives are compressed by the writer.
    """
    data = np.asarray(data)
    if data.dtype == bool:
        dtype = np.uint8
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    if data.ndim == 3 and len(header.get_zooms()) > 3:
        header.set_zooms(header.get_zooms()[:3])
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    img = nib.Nifti1Image(data.astype(dtype), ref.affine, header)
    path = Path(runtime_cwd) / name
    img.to_filename(path)
    return os.fspath(path)


def voxel_size_of(img):
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def jsonable(value):
    """Make numpy scalars/arrays in an info dictionary JSON-serialisable."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
