"""Realistic multi-echo GRE head phantom and demo BIDS dataset with known ground truth.

Modules: :mod:`~qsmprep.demo.anatomy` (labels, geometry, grids), :mod:`~qsmprep.demo.physics`
(field, signal, T1w), :mod:`~qsmprep.demo.dataset` (the BIDS dataset and its truth).

The anatomy is analytic (ellipsoids, shells with gyral folding, a cylinder, a sphere) and
defined in continuous world coordinates (mm, RAS+), so it can be rendered on any grid:
an oblique GRE acquisition, or a T1w moved by a known rigid transform.  The MR physics
is qsm-forward's forward model (Stewart et al., MRM 2022; ``qsm_forward.generate_field``,
``generate_signal``, ``add_noise``, ``generate_phase_offset``):

* χ (ppm, relative to water/CSF) of every tissue including the skull (−2.0 ppm) and air
  (+9.4 ppm) inside the sinuses and all around the head, so the total field has a real,
  strong background component; the field is the dipole convolution of χ on a grid padded
  with air, as ``qsm_forward.generate_field`` does (:func:`dipole_field` is a memory-lean
  equivalent, tested against it), computed on the GRE grid extended 64 mm below the FOV
  where head and neck continue, so the FOV edge is not a false tissue/air interface;
* complex multi-echo signal ``M0 · exp(−TE·R2*) · exp(i(2π γ̄ B0 Δχ TE + φ0))`` with a
  smooth receive phase offset φ0 and complex Gaussian noise at a given peak SNR;
* Siemens-style integer output: magnitude uint16 (max ≈ 4000) and phase 0..4095 for [−π, π).

Ground-truth conventions (``Phantom``):

* ``total_field``: the field used to simulate the signal (ppm), not demeaned;
* ``local_field``: the dipole field of χ·brain_mask alone (no sources outside the brain),
  demeaned inside the brain mask;
* ``background_field``: ``total − local`` (the field of everything outside the brain),
  demeaned inside the brain mask.
* ``chi``: inside the brain mask the voxel mean of brain tissue χ only (bone partial
  volume at the brain's edge is background), elsewhere the voxel mean of all tissue;
* ``brain_mask``: CSF inside the skull (subarachnoid and ventricles), GM, WM, the deep
  grey nuclei, the vein, the calcification, a haemorrhage and two white-matter lesions
  (labels in :data:`BRAIN_LABELS`);
* ``chi_para``, ``chi_dia``, ``r2``: the χ-separation truth, each tissue's paramagnetic and
  diamagnetic sources (:data:`~qsmprep.demo.anatomy.CHISEP_SOURCES`, summing to χ) and its
  R2, with R2* = R2 + D_r (χ⁺ − χ⁻) (D_r 137 Hz/ppm at 3 T).

Only isotropic voxels are generated: qsm-forward's dipole kernel assumes them.
"""

from qsmprep.demo.anatomy import (
    B0, BRAIN_LABELS, CHISEP_SOURCES, DEEP_GREY_LABELS, DEMO_DR, DEMO_LABELS, FLIP, LESION_DSEG, LESION_LABELS, MS_LESION_LABELS, SIZES,
    QSMCI_LABELS, SKULL_AND_AIR_LABELS, TR, Phantom, grid_affine, label_name, qsmci_segmentation,
)
from qsmprep.demo.dataset import write_demo_dataset
from qsmprep.demo.physics import dipole_field, make_phantom, render_r2, render_t1w, simulate_gre, t1w_labels

__all__ = [
    "B0", "BRAIN_LABELS", "CHISEP_SOURCES", "DEEP_GREY_LABELS", "DEMO_DR", "DEMO_LABELS", "LESION_DSEG", "LESION_LABELS", "MS_LESION_LABELS", "QSMCI_LABELS", "FLIP", "SIZES", "SKULL_AND_AIR_LABELS", "TR", "Phantom",
    "dipole_field", "grid_affine", "label_name", "make_phantom", "qsmci_segmentation", "render_r2", "render_t1w", "simulate_gre", "t1w_labels",
    "write_demo_dataset",
]
