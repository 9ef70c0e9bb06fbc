"""Registration benchmark: GRE→T1w affine and T1w→template SyN on the full (1 mm) demo.

Usage::

    python benchmarks/bench_registration.py [--size full|small] [--threads 2] [--motions 1-3]
                                            [--skip-precise-syn] [--skip-syn]

The T1w of demo subject 1 is moved by known head motions (:data:`MOTIONS`, up to 10° and
8 mm).  Measured for each:

* T1w brain extraction (N4 + threshold/morphology);
* GRE→T1w rigid+affine (``precise`` and ``gre2t1w``, the coregistration's default; ``--sloppy``
  runs the same schedule as ``gre2t1w``): seconds and the rotation / translation error
  against the known motion, and the deep-grey χ ROI-mean error of T1w labels brought into GRE
  space (against the true GRE labels; plain and eroded by one voxel);
* T1w→template SyN (precise and ``--sloppy``; on the first motion's T1w): the template is
  another demo subject (seed 1, different pose and anatomy χ; TemplateFlow's MNI templates
  are not available offline), with the error as the Dice overlap of its deep-grey labels
  warped onto the subject against the subject's true labels.

Prints seconds per step and the peak resident memory (``ru_maxrss``).  Numbers depend on the
machine and its load: report them with the core count.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


#: Known T1w head motions (rotations in degrees about x, y, z; shifts in mm), up to 10° and 8 mm.
MOTIONS = ((6.0, 0.0, 0.0, 0.0, 4.0, 0.0), (-4.0, 8.0, 3.0, -3.0, 2.0, 6.0), (10.0, -5.0, -6.0, 8.0, -4.0, 2.0))


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-precise-syn", action="store_true", help="only time the --sloppy SyN")
    parser.add_argument("--skip-syn", action="store_true", help="only the GRE->T1w affine")
    parser.add_argument("--motions", type=int, default=len(MOTIONS), choices=range(1, len(MOTIONS) + 1),
                        help="how many of the head motions (MOTIONS) to register")
    args = parser.parse_args(argv)

    from qsmprep.anat import (
        apply_transforms, brain_extract_t1w, read_affine, register, rigid_error, write_dilated_mask,
    )
    from qsmprep.analysis.roi import roi_statistics
    from qsmprep.demo import BRAIN_LABELS, DEEP_GREY_LABELS, make_phantom, render_t1w, simulate_gre
    from qsmprep.demo.anatomy import _head_coords, _labels_at, _rotation, _subject_variation

    root = Path(tempfile.mkdtemp(prefix="qsmprep-bench-reg-"))
    t = time.perf_counter()
    ph = make_phantom(args.size, seed=0)
    sig, _ = simulate_gre(ph, snr=100.0, seed=0)
    avg = root / "average.nii.gz"
    nib.Nifti1Image(np.sqrt((np.abs(sig) ** 2).mean(-1)).astype(np.float32), ph.affine).to_filename(avg)
    del sig
    print(f"data ({args.size}): {time.perf_counter() - t:.1f} s (not part of the benchmark)", flush=True)
    box = np.array([[x, y, z] for x in (-60, 60) for y in (-80, 80) for z in (-50, 60)], dtype=float)
    (rot, shift), _ = _subject_variation(0)
    first = None
    for m, motion in enumerate(MOTIONS[:args.motions]):
        t1w = render_t1w(args.size, seed=0, t1w_motion=motion)
        t1w_path = root / f"t1w_m{m}.nii.gz"
        t1w.to_filename(t1w_path)
        m_rot = _rotation(*motion[:3])
        labels_t1w = _labels_at(*_head_coords(t1w.affine, t1w.shape,
                                              (m_rot @ rot, m_rot @ shift + np.array(motion[3:]))))
        nib.Nifti1Image(labels_t1w.astype(np.int16), t1w.affine).to_filename(root / "t1w_labels.nii.gz")
        truth = np.eye(4)
        truth[:3, :3] = m_rot.T
        truth[:3, 3] = -m_rot.T @ np.array(motion[3:])
        t = time.perf_counter()
        be = brain_extract_t1w(t1w_path, root / f"be_m{m}", num_threads=args.threads)
        print(f"motion {m} {motion}: T1w brain extraction (N4 + threshold): {time.perf_counter() - t:.1f} s",
              flush=True)
        if first is None:
            first = (t1w_path, labels_t1w, be)
        write_dilated_mask(be["mask"], root / "mask_dil.nii.gz", 4.0)
        for preset in ("precise", "gre2t1w"):
            t = time.perf_counter()
            reg = register(be["corrected"], avg, root / f"coreg_m{m}_{preset}_", stages=("rigid", "affine"),
                           preset=preset, fixed_mask=root / "mask_dil.nii.gz", num_threads=args.threads)
            dt = time.perf_counter() - t
            est = read_affine(reg["forward"][0])
            angle, trans = rigid_error(est, truth)
            worst = rigid_error(est, truth, box)[1]
            lab = apply_transforms(root / "t1w_labels.nii.gz", avg, [(reg["forward"][0], True)],
                                   root / "lab.nii.gz", interpolation="nearestNeighbor", dtype=np.int16)
            lab = np.asarray(nib.load(lab).dataobj)
            errs = []
            for erode in (0, 1):
                kw = dict(voxel_size=ph.voxel_size, mask=ph.brain_mask, erode_voxels=erode, include=DEEP_GREY_LABELS)
                a = roi_statistics({"chi": ph.chi}, lab, **kw)
                b = roi_statistics({"chi": ph.chi}, ph.labels, **kw)
                errs.append(max(abs(x["mean"] - y["mean"]) for x, y in zip(a, b)))
            print(f"motion {m} GRE->T1w rigid+affine ({preset}): {dt:.1f} s; rotation error {angle:.3f} deg, "
                  f"translation {trans:.3f} mm (brain box max {worst:.3f} mm); max deep-grey chi ROI error "
                  f"{errs[0]:.4f} ppm, {errs[1]:.4f} ppm with 1-voxel erosion", flush=True)
    if args.skip_syn:
        print(f"peak RSS of this process: {_peak_gb():.2f} GB", flush=True)
        return
    t1w_path, labels_t1w, be = first

    # template: another demo subject, skull-stripped with its true brain mask
    tpl = render_t1w(args.size, seed=1)
    tpl_labels = _labels_at(*_head_coords(tpl.affine, tpl.shape, _subject_variation(1)[0]))
    tpl_brain = np.isin(tpl_labels, BRAIN_LABELS)
    nib.Nifti1Image(np.asarray(tpl.dataobj) * tpl_brain, tpl.affine).to_filename(root / "tpl_brain.nii.gz")
    nib.Nifti1Image(tpl_brain.astype(np.uint8), tpl.affine).to_filename(root / "tpl_mask.nii.gz")
    deep = np.where(np.isin(tpl_labels, DEEP_GREY_LABELS), tpl_labels, 0).astype(np.int16)
    nib.Nifti1Image(deep, tpl.affine).to_filename(root / "tpl_atlas.nii.gz")
    presets = ("sloppy",) if args.skip_precise_syn else ("sloppy", "precise")
    for preset in presets:
        t = time.perf_counter()
        reg = register(root / "tpl_brain.nii.gz", be["brain"], root / f"syn_{preset}_",
                       stages=("rigid", "affine", "syn"), preset=preset, syn_preset=preset,
                       fixed_mask=root / "tpl_mask.nii.gz", moving_mask=be["mask"], num_threads=args.threads,
                       composite=True)
        dt = time.perf_counter() - t
        warped = apply_transforms(root / "tpl_atlas.nii.gz", t1w_path, [reg["inverse"][0][0]],
                                  root / "atlas_t1w.nii.gz", interpolation="nearestNeighbor", dtype=np.int16)
        warped = np.asarray(nib.load(warped).dataobj)
        dice = []
        for lab in DEEP_GREY_LABELS:
            a, b = warped == lab, labels_t1w == lab
            dice.append(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
        print(f"T1w->template rigid+affine+SyN ({preset}): {dt:.1f} s; deep-grey Dice mean {np.mean(dice):.3f}, "
              f"min {np.min(dice):.3f} (atlas labels of the template subject warped onto the T1w)", flush=True)
    print(f"peak RSS of this process: {_peak_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
