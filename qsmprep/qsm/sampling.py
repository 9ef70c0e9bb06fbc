"""Which axes of a GRE image to unring, from how its sidecar says it was sampled (pure metadata).

Kept apart from :mod:`qsmprep.qsm.unring`, whose compiled numerics need numba, so that
:mod:`qsmprep.bids` can read :data:`SAMPLING_KEYS` without importing them.
"""

from __future__ import annotations


#: The sidecar keys (of the GRE's first echo) :func:`plan` reads.
SAMPLING_KEYS = ("MRAcquisitionType", "SliceEncodingDirection", "AcquisitionMatrixPE", "ReconMatrixPE",
                 "PartialFourier")


def plan(sampling, voxel_size=None, max_voxel_mm=None):
    """Which axes to unring, from the acquisition's sidecar (``SAMPLING_KEYS``) and voxel size, and why.

    * ``ReconMatrixPE`` above ``AcquisitionMatrixPE``: the image was reconstructed on a finer
      grid than it was sampled on (zero-filled), so it rings with a longer period than one
      voxel and the subvoxel shifts do not apply: not unringed (``axes`` empty).
    * ``MRAcquisitionType`` ``2D``: the two in-plane axes; the slice axis is
      ``SliceEncodingDirection`` (i, j, k), else k (dcm2niix stacks slices along k).
    * ``3D``, or absent: all three axes (GRE for QSM is 3D-encoded); an absent type is said so.
    * Of those, axes whose voxel is coarser than ``max_voxel_mm`` (when both are given) are left
      alone (:func:`qsmprep.qsm.unring.unring_as_planned` says why).

    Returns ``{"axes": [...], "basis": str}`` plus the sidecar values read; ``PartialFourier``
    below 1 is noted (the method corrects the symmetric ringing of full sampling).
    """
    sampling = {k: sampling[k] for k in SAMPLING_KEYS if sampling.get(k) is not None}
    out = dict(sampling)
    acq, recon = sampling.get("AcquisitionMatrixPE"), sampling.get("ReconMatrixPE")
    notes = []
    try:
        zero_filled = acq is not None and recon is not None and float(recon) > float(acq)
    except (TypeError, ValueError):
        zero_filled = False
        notes.append(f"AcquisitionMatrixPE {acq!r} / ReconMatrixPE {recon!r} not numbers: not checked")
    if zero_filled:
        out.update(axes=[], basis=f"not unringed: reconstructed on a finer grid than sampled (ReconMatrixPE "
                                  f"{recon} > AcquisitionMatrixPE {acq}); zero-filled data ring over more "
                                  f"than one voxel")
        return out
    kind = str(sampling.get("MRAcquisitionType", "")).upper()
    if kind == "2D":
        sed = str(sampling.get("SliceEncodingDirection", "k")).strip("-")
        slice_axis = {"i": 0, "j": 1, "k": 2}.get(sed, 2)
        axes = [a for a in (0, 1, 2) if a != slice_axis]
        if "SliceEncodingDirection" not in sampling:
            src = "k (dcm2niix's slice axis)"
        elif sed in ("i", "j", "k"):
            src = "SliceEncodingDirection"
        else:
            src = f"k (SliceEncodingDirection {sampling['SliceEncodingDirection']!r} is not i, j or k)"
        basis = f"MRAcquisitionType 2D: in-plane axes {axes}, slice axis {slice_axis} from {src}"
    elif kind == "3D":
        axes, basis = [0, 1, 2], "MRAcquisitionType 3D: all three axes"
    else:
        axes = [0, 1, 2]
        basis = ("MRAcquisitionType absent: 3D Fourier encoding assumed (all three axes)" if not kind
                 else f"MRAcquisitionType {sampling['MRAcquisitionType']!r} unknown: all three axes")
    if acq is None or recon is None:
        notes.append("AcquisitionMatrixPE/ReconMatrixPE absent: zero-filling not checked")
    pf = sampling.get("PartialFourier")
    try:
        if pf is not None and float(pf) < 1:
            notes.append(f"PartialFourier {pf}: the ringing is asymmetric and is corrected in part")
    except (TypeError, ValueError):
        pass
    if voxel_size is not None and max_voxel_mm is not None:
        coarse = [a for a in axes if float(voxel_size[a]) > max_voxel_mm]
        if coarse:
            axes = [a for a in axes if a not in coarse]
            sizes = ", ".join(f"{float(voxel_size[a]):g}" for a in coarse)
            notes.append(f"axes {coarse} left alone: voxels of {sizes} mm are coarser than max_voxel_mm "
                         f"{max_voxel_mm:g}")
    out.update(axes=axes, basis="; ".join([basis] + notes))
    return out
