"""Field-of-view coverage (whole head or a slab inside it) and the imaged-tissue mask.

No brain extraction: :func:`assess_coverage` tells whether a histogram split can separate
head and air, :func:`tissue_mask` keeps everything above the noise (method ``"none"`` and
the partial-coverage fallback of :func:`qsmprep.qsm.masking.brain_mask`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm.masking._morphology import _check_volume, _check_voxel_size, largest_component


#: Coverage rule (:func:`assess_coverage`): voxels darker than ``DARK_FRACTION`` × the 99th
#: percentile of the magnitude are background (air, noise) ...
DARK_FRACTION = 0.1
#: ... and an image with less than ``MIN_BACKGROUND_FRACTION`` of such voxels has no
#: background mode in its histogram: the field of view lies inside the head.
MIN_BACKGROUND_FRACTION = 0.05
#: The head touches the field-of-view faces when more than this fraction of the voxels on
#: the six faces is tissue (a whole head cut only at the neck has ~5-15 %).
MAX_BOUNDARY_TISSUE_FRACTION = 0.5
#: Noise-only voxels: below ``NOISE_MEDIAN_FACTOR`` × the median of the background voxels
#: (for Rayleigh noise 3 × median = 3.5 σ: 0.2 % of noise voxels above it).
NOISE_MEDIAN_FACTOR = 3.0


def _boundary_values(x):
    faces = [x[0], x[-1], x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]]
    return np.concatenate([f.ravel() for f in faces])


def assess_coverage(magnitude):
    """Does the field of view hold the whole head (with air around it) or only a slab inside it?

    Two documented tests on the echo-averaged magnitude, with ``dark`` = below
    :data:`DARK_FRACTION` × its 99th percentile:

    * **no background mode**: fewer than :data:`MIN_BACKGROUND_FRACTION` of the voxels are
      dark (a head scan with air around it has 30-70 %);
    * **head touching the faces**: more than :data:`MAX_BOUNDARY_TISSUE_FRACTION` of the
      voxels on the six faces of the field of view are not dark.

    Either one means partial coverage: a histogram split (Otsu) would then separate two
    kinds of tissue instead of head and air.

    Returns a JSON-serialisable dictionary: ``partial_coverage`` (bool), ``reason``,
    ``background_fraction``, ``boundary_tissue_fraction``, ``dark_level``.
    """
    mag = np.asarray(_check_volume(magnitude), dtype=np.float32)
    robust_max = float(np.percentile(mag, 99))
    if not robust_max > 0:
        raise ValueError("the magnitude is zero (or negative) almost everywhere")
    dark_level = DARK_FRACTION * robust_max
    background = float(np.mean(mag < dark_level))
    boundary = float(np.mean(_boundary_values(mag) >= dark_level))
    reasons = []
    if background < MIN_BACKGROUND_FRACTION:
        reasons.append(f"only {100 * background:.1f} % of the field of view is background (dark: below "
                       f"{DARK_FRACTION:g} × the 99th percentile; a whole-head scan has 30-70 %)")
    if boundary > MAX_BOUNDARY_TISSUE_FRACTION:
        reasons.append(f"tissue covers {100 * boundary:.0f} % of the field-of-view faces (more than "
                       f"{100 * MAX_BOUNDARY_TISSUE_FRACTION:.0f} %)")
    return {"partial_coverage": bool(reasons), "reason": "; ".join(reasons) or "air around the head",
            "background_fraction": round(background, 4), "boundary_tissue_fraction": round(boundary, 4),
            "dark_level": dark_level}


def tissue_mask(magnitude, voxel_size, *, coverage=None):
    """The imaged tissue: the whole field of view minus noise-only voxels (no brain extraction).

    With a background (see :func:`assess_coverage`), noise-only voxels are those below
    :data:`NOISE_MEDIAN_FACTOR` × the median of the dark voxels (3.5 σ for Rayleigh noise);
    without one (partial coverage) there is no noise population to measure and the dark
    level itself (:data:`DARK_FRACTION` × the 99th percentile) is used.  The largest
    connected component is kept and its holes filled (vessels, dark nuclei stay in).

    Returns ``(mask, threshold)``.
    """
    mag = np.asarray(_check_volume(magnitude), dtype=np.float32)
    _check_voxel_size(voxel_size)
    coverage = assess_coverage(mag) if coverage is None else coverage
    dark = mag < coverage["dark_level"]
    if coverage["background_fraction"] >= MIN_BACKGROUND_FRACTION and dark.any():
        threshold = min(NOISE_MEDIAN_FACTOR * float(np.median(mag[dark])), coverage["dark_level"])
    else:
        threshold = coverage["dark_level"]
    mask = largest_component(mag > threshold, "no voxel is above the noise level")
    return ndimage.binary_fill_holes(mask), float(threshold)
