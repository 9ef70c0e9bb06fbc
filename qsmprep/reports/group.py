"""The ``group`` level: cohort tables, reproducibility statistics, plots and ``group/group.html``.

Reads only derivatives (``out/sub-*/**/*_roistats.tsv``, the χ sidecars and coregistered χ
maps) plus ``participants.tsv`` / ``sessions.tsv`` / raw sidecars for site, vendor, age and
sex; writes everything under ``out/group/``:

=================================  ===========================================================
``roistats_long.tsv``              every ROI row of every scan with scan metadata
``roistats_wide.tsv``              one row per scan, one column per atlas:ROI:map mean
``roi_summary.tsv``                per ROI and map: n, mean, SD, min, max of the ROI means
``between_subject_sd.tsv``         within site, within vendor, across vendors (+ pooled)
``reproducibility.tsv``            paired scans: Bland–Altman, Deming, Pearson per ROI and all
``reproducibility_points.tsv``     the paired values behind it
``voxelwise_agreement.tsv``        RMSE and SSIM of coregistered χ of paired scans
``voxelwise/*.nii.gz``             searchlight (3 mm sphere) RMSE and SSIM maps
``figures/*.png``, ``group.html``  box plots by site, Bland–Altman + scatter, the report
=================================  ===========================================================

Statistics are defined in :mod:`qsmprep.analysis.group`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from qsmprep.analysis import group as gstats
from qsmprep.errors import InputError
from qsmprep.reports import figures
from qsmprep.reports.html import esc, img, page, table

LOGGER = logging.getLogger("nipype.workflow")
#: spaces tried (in order) for voxel-wise comparisons of paired scans
_SPACE_RE = re.compile(r"_space-([^_]+)_Chimap\.nii(\.gz)?$")


def _write_tsv(df, path):
    from qsmprep.interfaces.derivatives import atomic_write_text

    atomic_write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
    return path


def _chimaps_by_space(out_dir, scan):
    """``{space: path}`` of the coregistered χ maps of ``scan`` (``space-<X>_Chimap``)."""
    sub = scan.split("_")[0]
    found = {}
    for path in Path(out_dir, sub).glob(f"**/{scan}_space-*_Chimap.nii*"):
        match = _SPACE_RE.search(path.name)
        if match:
            found[match.group(1)] = path
    return found


def _space_order(space):
    return (space == "T1w", space)  # template spaces first: they align every session by design


def voxelwise_pairs(out_dir, long, radius_mm=3.0):
    """RMSE/SSIM of the coregistered χ maps of every scan pair; searchlight maps written."""
    import nibabel as nib
    import pandas as pd

    out_dir = Path(out_dir)
    vdir = out_dir / "group" / "voxelwise"
    rows = []
    for kind_a, kind_b, pid, scan_a, scan_b in gstats.scan_pairs(long):
        maps_a, maps_b = _chimaps_by_space(out_dir, scan_a), _chimaps_by_space(out_dir, scan_b)
        row = {"participant_id": pid, "first": scan_a, "second": scan_b, "space": "n/a", "n_voxels": 0,
               "rmse": np.nan, "ssim": np.nan, "status": ""}
        common = sorted(set(maps_a) & set(maps_b), key=_space_order)
        chosen = None
        for space in common:
            ia, ib = nib.load(maps_a[space]), nib.load(maps_b[space])
            if ia.shape[:3] == ib.shape[:3] and np.allclose(ia.affine, ib.affine, atol=1e-3):
                chosen = (space, ia, ib)
                break
        if chosen is None:
            row["status"] = ("no coregistered χ maps on a common grid (sessions with their own T1w need "
                             "--template to share a space)" if common or (maps_a and maps_b)
                             else "no space-<T1w|template> χ maps (participant run without a T1w?)")
            rows.append(row)
            continue
        space, ia, ib = chosen
        a = np.asarray(ia.dataobj, np.float32)
        b = np.asarray(ib.dataobj, np.float32)
        mask = (a != 0) & (b != 0) & np.isfinite(a) & np.isfinite(b)
        for scan, maps in ((scan_a, maps_a), (scan_b, maps_b)):
            mpath = maps[space].with_name(f"{scan}_space-{space}_desc-brain_mask.nii.gz")
            if mpath.is_file():
                mimg = nib.load(mpath)
                if mimg.shape[:3] == mask.shape:
                    mask &= np.asarray(mimg.dataobj) > 0
        if not mask.any():
            row.update(space=space, status="the two χ maps do not overlap")
            rows.append(row)
            continue
        res = gstats.voxelwise_agreement(a, b, mask, ia.header.get_zooms()[:3], radius_mm=radius_mm)
        vdir.mkdir(parents=True, exist_ok=True)
        stem = f"{scan_a}_vs_{scan_b.split('_', 1)[1] if '_' in scan_b else scan_b}_space-{space}"
        for stat in ("rmse", "ssim"):
            data = np.nan_to_num(res[f"{stat}_searchlight"], nan=0.0).astype(np.float32)
            hdr = ia.header.copy()
            hdr.set_data_dtype(np.float32)
            nib.Nifti1Image(data, ia.affine, hdr).to_filename(vdir / f"{stem}_desc-searchlight{stat}_map.nii.gz")
        row.update(space=space, n_voxels=res["n_voxels"], rmse=res["rmse"], ssim=res["ssim"], status="ok")
        rows.append(row)
    return pd.DataFrame(rows, columns=["participant_id", "first", "second", "space", "n_voxels", "rmse", "ssim",
                                       "status"])


def run_group(bids_dir, out_dir, participant_label=None, *, radius_mm=3.0):
    """Compute and write the group level (see the module docstring); return ``out/group``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError("output folder does not exist; run the participant level first", path=out_dir)
    long = gstats.load_long_table(out_dir, bids_dir, participant_label)
    if long.empty:
        raise InputError("no *_desc-<atlas>_roistats.tsv under sub-*/ — the participant level writes ROI tables "
                         "when a T1w and --segmentation-dir or --template/--atlas are given", path=out_dir)
    gdir = out_dir / "group"
    fdir = gdir / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    wide = gstats.wide_table(long)
    summary = gstats.roi_summary(long)
    bsd = gstats.between_subject_sd(long)
    repro, points = gstats.paired_reproducibility(long)
    voxel = voxelwise_pairs(out_dir, long, radius_mm=radius_mm)
    for df, name in ((long.drop(columns=["roi_key"]), "roistats_long"), (wide, "roistats_wide"),
                     (summary, "roi_summary"), (bsd, "between_subject_sd"), (repro, "reproducibility"),
                     (points, "reproducibility_points"), (voxel, "voxelwise_agreement")):
        _write_tsv(df, gdir / f"{name}.tsv")

    sections = []
    units = {"chi": "(ppm)", "r2star": "(1/s)"}
    n_scans, n_part = long["scan"].nunique(), long["participant_id"].nunique()
    sections.append(f"<p>{n_part} participant(s), {n_scans} scan(s), atlases: "
                    f"{esc(', '.join(sorted(long['atlas'].unique())))}. Sites: "
                    f"{esc(', '.join(map(str, sorted(long['site'].astype(str).unique()))))}; vendors: "
                    f"{esc(', '.join(map(str, sorted(long['vendor'].astype(str).unique()))))}.</p>")
    scans = long.drop_duplicates("scan")[[c for c in gstats.SCAN_COLUMNS if c in long]]
    sections.append("<h2>Scans</h2>" + table(scans))
    sections.append("<h2>ROI summary (ROI means across scans)</h2>" + table(
        summary.drop(columns=["roi_key"]) if not summary.empty else summary))
    sections.append("<h2>Between-subject SD</h2><p class=\"caption\">One value per participant and site "
                    "(mean of that participant's scans there). Within site/vendor: SD across participants "
                    "per group and pooled; across vendors: SD of all values.</p>"
                    + table(bsd.drop(columns=["roi_key"]) if not bsd.empty else bsd))
    sections.append("<h2>Figures: ROI values by site</h2>")
    for (atlas, mapname), _ in long.groupby(["atlas", "map"], sort=True):
        png = figures.roi_boxplots(fdir / f"atlas-{atlas}_map-{mapname}_boxplot.png", long, atlas=atlas,
                                   mapname=mapname, by="site", units=units.get(mapname, ""))
        if png:
            sections.append(img(png, f"{atlas} {mapname} box plots", f"{atlas}: ROI means of {mapname} by site"))
    sections.append("<h2>Paired scans: reproducibility</h2>")
    if repro.empty:
        sections.append("<p>No participant has two scans; nothing to compare.</p>")
    else:
        sections.append(table(repro))
        for (first, second, atlas, mapname), pts in points.groupby(["first", "second", "atlas", "map"], sort=True):
            row = repro[(repro["first"] == first) & (repro["second"] == second) & (repro["atlas"] == atlas)
                        & (repro["map"] == mapname) & (repro["roi_key"] == "all")].iloc[0]
            slug = re.sub(r"[^A-Za-z0-9]+", "", f"{first}vs{second}")
            png = figures.bland_altman_plot(fdir / f"atlas-{atlas}_map-{mapname}_pair-{slug}_blandaltman.png",
                                            pts, row, title=f"{atlas} {mapname}: {second} vs {first}",
                                            units=units.get(mapname, ""))
            sections.append(img(png, "Bland-Altman", f"{atlas}, {mapname}: {first} vs {second}, all ROIs"))
    sections.append("<h2>Voxel-wise agreement of coregistered χ</h2><p class=\"caption\">RMSE (ppm) and SSIM "
                    f"inside both masks; searchlight maps ({radius_mm:g} mm sphere) in group/voxelwise/.</p>"
                    + table(voxel))
    from qsmprep.interfaces.derivatives import atomic_write_text

    atomic_write_text(gdir / "group.html", page("qsmprep group report", "\n".join(sections)))
    LOGGER.info("group level: %d scans of %d participants; tables and report in %s", n_scans, n_part, gdir)
    return gdir
