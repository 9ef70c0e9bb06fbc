"""T1w tissue classes without a segmentation: antspyx Atropos, 3 classes (CSF, GM, WM).

Avants et al., "An open source multivariate framework for n-tissue segmentation with
evaluation on public data", *Neuroinformatics* 2011;9:381-400.  K-means initialisation with
three classes, MRF smoothing 0.2 on a 1-voxel neighbourhood, 5 EM iterations, inside the T1w
brain mask (ANTs' ``antsAtroposN4`` defaults without the N4 loop: the T1w given here is
already bias-corrected by :func:`qsmprep.anat.brain_extract_t1w`).  K-means orders the
classes by mean intensity, so on a T1w they are CSF < GM < WM.  GM here includes the deep
grey nuclei: a 3-class segmentation cannot tell them from cortex (recorded in the sidecar).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from qsmprep.analysis.lesions import TISSUE_CODES


def atropos_tissue(t1w_brain, mask, out_file, *, mrf=0.2, iterations=5, num_threads=1):
    """Write the tissue classes (:data:`qsmprep.analysis.lesions.TISSUE_CODES`: CSF 1,
    cortex/GM 2, WM 3) of a skull-stripped, bias-corrected T1w; returns ``(out_file, info)``."""
    import ants

    from qsmprep.anat.registration import set_threads

    set_threads(num_threads)
    img, msk = ants.image_read(os.fspath(t1w_brain)), ants.image_read(os.fspath(mask))
    msk = ants.threshold_image(msk, 0.5, 1e9)
    seg = ants.atropos(a=img, x=msk, i="kmeans[3]", m=f"[{mrf},1x1x1]", c=f"[{int(iterations)},0]",
                       verbose=0)["segmentation"]
    classes = seg.numpy().astype(np.int16)
    lut = np.array([0, TISSUE_CODES["csf"], TISSUE_CODES["cortex"], TISSUE_CODES["wm"]], np.int16)
    out = lut[np.clip(classes, 0, 3)]
    ref = nib.load(os.fspath(mask))
    nib.Nifti1Image(out, ref.affine).to_filename(os.fspath(out_file))
    info = {"TissueSource": "atropos", "TissueMethod": f"antspyx Atropos, k-means 3 classes (CSF < GM < WM by "
            f"T1w intensity), MRF {mrf} 1x1x1, {int(iterations)} iterations, in the T1w brain mask; GM includes "
            "the deep grey nuclei"}
    return os.fspath(out_file), info
