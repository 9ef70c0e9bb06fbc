"""The demo BIDS dataset: Siemens-style echoes, T1w, ground truth and a T1w-space segmentation
(see :mod:`qsmprep.demo`)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.demo.anatomy import DEMO_LABELS, LESION_DSEG, TR, FLIP
from qsmprep.demo.physics import make_phantom, render_r2, render_t1w, simulate_gre, t1w_labels

LOGGER = logging.getLogger("nipype.workflow")


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


#: the longitudinal participant's sessions: session -> (head motion (rx, ry, rz deg, tx, ty, tz
#: mm), χ scale per label, acq_time): a year later the head lies 2 mm / 2° elsewhere, one
#: cavernous malformation's χ has grown by 10 % (a new bleed) and the other's by 2 %
LONGITUDINAL = {"1": (None, None, "2025-01-15T09:00:00"),
                "2": ((2.0, -1.0, 1.5, 2.0, -1.5, 1.0), {39: 1.10, 40: 1.02}, "2026-01-15T09:00:00")}


def write_demo_dataset(out_dir, *, size="small", n_subjects=2, seed=0, snr=100.0, oblique_deg=0.0,
                       overwrite=False, longitudinal=False):
    """Write the demo BIDS dataset to ``out_dir/bids`` and the truth to ``out_dir/truth``.

    Subject ``sub-0N`` (N = 1, 2, ...) is ``make_phantom(size, seed=seed + N - 1)`` and
    ``simulate_gre(..., snr=snr, seed=seed + N - 1)``.  BIDS: ``dataset_description.json``,
    ``participants.tsv``, ``README``, per echo ``anat/sub-0N_echo-<e>_part-{mag,phase}_MEGRE``
    (magnitude uint16 scaled so the maximum over all echoes is 4000; phase uint16
    ``round((φ + π) / 2π · 4096) mod 4096``, Siemens-style) with JSON sidecars, and
    ``anat/sub-0N_T1w``.  Truth (outside the BIDS tree, GRE grid): ``truth/sub-0N/sub-0N_``
    ``Chimap``, ``dseg`` (+ ``.tsv`` with this subject's χ), ``desc-brain_mask``,
    ``desc-{total,local,background}field_fieldmap`` (ppm), ``R2starmap`` and ``R2map`` (1/s),
    the χ-separation sources ``desc-{paramagnetic,diamagnetic}_Chimap`` (ppm), and the
    nominal look-up table ``truth/dseg.tsv``.  Two BIDS derivatives datasets beside them:
    ``truth/segmentation`` (the labels in T1w space, ``--segmentation-dir``) and ``truth/r2``
    (an R2 map per subject on the T1w grid, as a spin-echo scan of the session would give:
    ``--r2-dir`` for χ-separation), and ``truth/lesions``: each subject's lesion ``dseg`` in
    T1w space (:data:`qsmprep.demo.anatomy.LESION_DSEG`; ``--lesion-dir``).

    Parameters
    ----------
    out_dir : str or Path
        Parent folder of ``bids`` and ``truth``.
    size : {"small", "full"}
    n_subjects : int
    seed : int
        Seed of the first subject.
    snr : float
        Peak SNR of the complex signal.
    oblique_deg : float
        Tilt of the GRE grid about x.
    overwrite : bool
        Replace an existing non-empty ``out_dir/bids`` (and ``out_dir/truth``); otherwise
        :class:`FileExistsError` is raised.
    longitudinal : bool
        With two or more participants, the last one has two sessions a year apart
        (:data:`LONGITUDINAL`: ``ses-1``, ``ses-2``, ``sub-<N>_sessions.tsv`` with
        ``acq_time``); its files and truth keys carry ``ses-<S>`` (``"02_ses-1"``).

    Returns
    -------
    dict
        ``bids_dir``, ``truth_dir`` and ``subjects``: ``{"01": {"Chimap": path, ...}, ...}``
        (keys ``Chimap``, ``dseg``, ``dseg_tsv``, ``desc-brain_mask``,
        ``desc-totalfield_fieldmap``, ``desc-localfield_fieldmap``,
        ``desc-backgroundfield_fieldmap``, ``R2starmap``, ``R2map``,
        ``desc-paramagnetic_Chimap``, ``desc-diamagnetic_Chimap``, ``segmentation``, ``r2``,
        ``lesions``), ``segmentation_dir``, ``r2_dir`` and ``lesion_dir``.
    """
    out_dir = Path(out_dir)
    bids, truth = out_dir / "bids", out_dir / "truth"
    if bids.exists() and any(bids.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{bids} already exists and is not empty (use overwrite / --overwrite)")
        shutil.rmtree(bids)
        shutil.rmtree(truth, ignore_errors=True)
    bids.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    _write_json(bids / "dataset_description.json", {
        "Name": f"qsmprep demo phantom ({size})", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "qsmprep.demo", "Description": "analytic head phantom, qsm-forward forward model"}],
    })
    (bids / "README").write_text(
        "Synthetic multi-echo GRE head phantom made by qsmprep.demo with qsm-forward's forward model.\n"
        "Ground truth (chi, labels, mask, fields, R2*) is in ../truth, outside this dataset.\n"
    )
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    (bids / "participants.tsv").write_text(
        "participant_id\tspecies\n" + "".join(f"sub-{s}\thomo sapiens (phantom)\n" for s in subjects)
    )
    result = {"bids_dir": str(bids), "truth_dir": str(truth), "subjects": {}}
    acquisitions = []
    for i, sub in enumerate(subjects):
        if longitudinal and n_subjects >= 2 and i == n_subjects - 1:
            acquisitions += [(i, sub, ses, motion, scale) for ses, (motion, scale, _) in LONGITUDINAL.items()]
            (bids / f"sub-{sub}").mkdir(parents=True, exist_ok=True)
            (bids / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(
                "session_id\tacq_time\n" + "".join(f"ses-{ses}\t{when}\n" for ses, (_, _, when) in LONGITUDINAL.items()))
        else:
            acquisitions.append((i, sub, None, None, None))
    for i, sub, ses, motion, scale in acquisitions:
        sub_seed = seed + i
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "")
        ph = make_phantom(size, seed=sub_seed, oblique_deg=oblique_deg, motion=motion, chi_scale=scale)
        sig, _ = simulate_gre(ph, snr=snr, seed=sub_seed + (100 * int(ses) if ses else 0))
        anat = bids / rel / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        mag = np.abs(sig)
        mag_int = np.rint(mag / mag.max() * 4000).astype(np.uint16)
        phase_int = (np.rint((np.angle(sig) + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096).astype(np.uint16)
        for e, te in enumerate(ph.tes, start=1):
            for part, data in (("mag", mag_int[..., e - 1]), ("phase", phase_int[..., e - 1])):
                path_stem = anat / f"{stem}_echo-{e}_part-{part}_MEGRE"
                nib.Nifti1Image(data, ph.affine).to_filename(f"{path_stem}.nii.gz")
                _write_json(f"{path_stem}.json", {
                    "EchoTime": round(float(te), 6), "EchoNumber": e, "MagneticFieldStrength": ph.b0,
                    "Manufacturer": "Siemens", "RepetitionTime": TR, "FlipAngle": FLIP, "MRAcquisitionType": "3D",
                    "ImageType": ["ORIGINAL", "PRIMARY", "M" if part == "mag" else "P", "ND"],
                    # BIDS requires Units for part-phase: integers 0..4095, not radians
                    **({"Units": "arbitrary"} if part == "phase" else {}),
                })
        t1w = render_t1w(size, seed=sub_seed, t1w_motion=motion)
        t1w.to_filename(anat / f"{stem}_T1w.nii.gz")
        _write_json(anat / f"{stem}_T1w.json", {
            "MagneticFieldStrength": ph.b0, "Manufacturer": "Siemens", "MRAcquisitionType": "3D",
            "RepetitionTime": 2.3, "InversionTime": 0.9, "EchoTime": 0.00298, "FlipAngle": 9,
        })

        tdir = truth / rel
        tdir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, data in (("Chimap", ph.chi), ("dseg", ph.labels), ("desc-brain_mask", ph.brain_mask),
                           ("desc-totalfield_fieldmap", ph.total_field),
                           ("desc-localfield_fieldmap", ph.local_field),
                           ("desc-backgroundfield_fieldmap", ph.background_field), ("R2starmap", ph.r2star),
                           ("R2map", ph.r2), ("desc-paramagnetic_Chimap", ph.chi_para),
                           ("desc-diamagnetic_Chimap", ph.chi_dia)):
            arr = data.astype(np.uint8) if data.dtype == bool else data
            path = tdir / f"{stem}_{name}.nii.gz"
            nib.Nifti1Image(arr, ph.affine).to_filename(path)
            files[name] = str(path)
        tsv = tdir / f"{stem}_dseg.tsv"
        _write_lut(tsv, ph.lut)
        files["dseg_tsv"] = str(tsv)
        # the subject's segmentation in T1w space, as a BIDS derivatives dataset (what
        # sMRIPrep/FastSurfer would give): `--segmentation-dir truth/segmentation`
        seg_dir = truth / "segmentation" / rel / "anat"
        seg_dir.mkdir(parents=True, exist_ok=True)
        seg = t1w_labels(size, sub_seed, t1w.affine, t1w.shape, motion=motion)
        nib.Nifti1Image(seg.astype(np.int16), t1w.affine).to_filename(seg_dir / f"{stem}_desc-phantom_dseg.nii.gz")
        _write_lut(seg_dir / f"{stem}_desc-phantom_dseg.tsv", ph.lut)
        files["segmentation"] = str(seg_dir / f"{stem}_desc-phantom_dseg.nii.gz")
        r2_dir = truth / "r2" / rel / "anat"
        r2_dir.mkdir(parents=True, exist_ok=True)
        r2_path = r2_dir / f"{stem}_R2map.nii.gz"
        nib.Nifti1Image(render_r2(size, sub_seed, t1w.affine, t1w.shape, motion=motion).astype(np.float32),
                        t1w.affine).to_filename(r2_path)
        _write_json(r2_dir / f"{stem}_R2map.json", {
            "Units": "1/s", "Description": "R2 of the phantom's tissues (R2* - D_r (chi_para - chi_dia), D_r "
            "137 Hz/ppm) on the T1w grid, as a spin-echo scan of the session would measure it"})
        files["r2"] = str(r2_path)
        # the lesion masks in T1w space (a rater's or a lesion segmentation tool's): a dseg of
        # MS lesions, haemorrhage, cavernous malformation and calcification (`--lesion-dir`)
        les_dir = truth / "lesions" / rel / "anat"
        les_dir.mkdir(parents=True, exist_ok=True)
        les = np.zeros(seg.shape, np.int16)
        for value, (_name, labels) in LESION_DSEG.items():
            les[np.isin(seg, labels)] = value
        les_path = les_dir / f"{stem}_desc-lesion_dseg.nii.gz"
        nib.Nifti1Image(les, t1w.affine).to_filename(les_path)
        files["lesions"] = str(les_path)
        result["subjects"][stem[4:]] = files
        LOGGER.info("demo: wrote %s (%s, %d echoes)", stem, size, len(ph.tes))
    _write_lut(truth / "dseg.tsv", DEMO_LABELS)
    _write_json(truth / "segmentation" / "dataset_description.json", {
        "Name": "qsmprep demo: phantom segmentation (T1w space)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "qsmprep demo"}]})
    result["segmentation_dir"] = str(truth / "segmentation")
    _write_json(truth / "r2" / "dataset_description.json", {
        "Name": "qsmprep demo: phantom R2 maps (T1w grid)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "qsmprep demo"}]})
    result["r2_dir"] = str(truth / "r2")
    (truth / "lesions" / "desc-lesion_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{v}\t{name}\n" for v, (name, _) in LESION_DSEG.items()))
    _write_json(truth / "lesions" / "dataset_description.json", {
        "Name": "qsmprep demo: lesion masks (T1w space)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "qsmprep demo"}]})
    result["lesion_dir"] = str(truth / "lesions")
    return result


def _write_lut(path, lut):
    """BIDS ``dseg.tsv``: index, name, hemisphere (``n/a`` if none), χ (ppm), R2* (1/s)."""
    lines = ["index\tname\themisphere\tchi_ppm\tr2star_per_s"]
    lines += [f"{lab}\t{v[0]}\t{v[1] or 'n/a'}\t{float(v[2]):.6g}\t{float(v[3]):.6g}" for lab, v in lut.items()]
    Path(path).write_text("\n".join(lines) + "\n")
