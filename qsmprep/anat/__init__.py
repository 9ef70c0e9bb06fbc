"""Anatomy: ANTs registration driver, transform I/O, T1w brain extraction, GRE → T1w coregistration.

Pure functions on NIfTI files (no Nipype); :mod:`qsmprep.interfaces.registration` wraps them.
antspyx is imported when a function first needs it, not by ``import qsmprep.anat``.

- :mod:`~qsmprep.anat.registration`: :func:`register`, :func:`apply_transforms`,
  :func:`set_threads`, the presets (:data:`LINEAR_PRESETS`, :data:`SYN_PRESETS`) and
  :func:`linear_schedule` (their levels split between chained linear stages);
- :mod:`~qsmprep.anat.transforms`: ITK affine files (:func:`read_affine`, :func:`write_affine`,
  :func:`invert_affine_file`), :func:`rigid_error`, :func:`resample_to`;
- :mod:`~qsmprep.anat.brain`: :func:`brain_mask_threshold`, :func:`brain_extract_t1w`;
- :mod:`~qsmprep.anat.coreg`: :func:`coregister_gre_to_t1w`, :func:`align_to_gre`, :func:`register_to_gre`,
  :func:`write_dilated_mask`;
- :mod:`~qsmprep.anat.segmentation`: :func:`atropos_tissue` (3-class T1w tissue without a segmentation).
"""

from qsmprep.anat.brain import brain_extract_t1w, brain_mask_threshold
from qsmprep.anat.coreg import align_to_gre, coregister_gre_to_t1w, register_to_gre, write_dilated_mask
from qsmprep.anat.registration import (
    INITIALIZATIONS, INTERPOLATIONS, LINEAR_PRESETS, STAGES, SYN_PRESETS, apply_transforms, linear_schedule, register,
    set_threads,
)
from qsmprep.anat.transforms import invert_affine_file, read_affine, resample_to, rigid_error, write_affine

__all__ = [
    "INITIALIZATIONS", "INTERPOLATIONS", "LINEAR_PRESETS", "STAGES", "SYN_PRESETS", "linear_schedule",
    "align_to_gre", "apply_transforms", "brain_extract_t1w", "brain_mask_threshold", "coregister_gre_to_t1w",
    "invert_affine_file",
    "read_affine", "register", "register_to_gre", "resample_to", "rigid_error", "set_threads", "write_affine", "write_dilated_mask",
]
