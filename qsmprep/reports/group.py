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
``qc.tsv``                         one row per acquisition: QC status, warnings, phase units,
                                   one column per QC metric value
``figures/*.png``, ``group.html``  ROI plots by site, Bland–Altman + scatter, the report
=================================  ===========================================================

``group.html`` opens with the QC table (rows coloured by status), then one pivoted ROI table
(region × site — or vendor when there is one site — with mean ± SD (n) and units in the
header), then the figures; the long tables are linked as TSV files, not printed.  ROI plots
draw a box for a group of at least three scans and the points with their mean otherwise.

Statistics are defined in :mod:`qsmprep.analysis.group`, the voxel-wise agreement in
:mod:`qsmprep.analysis.agreement`, the QC table in :mod:`qsmprep.analysis.qc` and the ROI means
by site or vendor in :mod:`qsmprep.analysis.summary`.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from qsmprep.analysis import group as gstats
from qsmprep.analysis.agreement import voxelwise_agreement
from qsmprep.analysis.qc import QC_ID_COLUMNS, QC_METRICS, QC_NOT_AVAILABLE, load_qc, qc_table
from qsmprep.analysis.summary import comparison_level, roi_by_group
from qsmprep.errors import InputError
from qsmprep.reports import figures
from qsmprep.reports.group_lesions import calibration_section, lesion_section, write_tsv
from qsmprep.reports.html import badge, esc, img, page, status_class

LOGGER = logging.getLogger("nipype.workflow")
#: spaces tried (in order) for voxel-wise comparisons of paired scans
_SPACE_RE = re.compile(r"_space-([^_]+)_Chimap\.nii(\.gz)?$")


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


def voxelwise_pairs(out_dir, long, radius_mm=3.0, factors=None):
    """RMSE/SSIM of the coregistered χ maps of every scan pair; searchlight maps written.
    ``factors``: ``{scan: calibration factor}`` applied to each map first."""
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
        a = np.asarray(ia.dataobj, np.float32) * np.float32((factors or {}).get(scan_a, 1.0))
        b = np.asarray(ib.dataobj, np.float32) * np.float32((factors or {}).get(scan_b, 1.0))
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
        res = voxelwise_agreement(a, b, mask, ia.header.get_zooms()[:3], radius_mm=radius_mm)
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


def _qc_section(entries, qc_df):
    """The QC table of the group report: one row per acquisition, coloured by status."""
    from qsmprep.reports.qc import format_value

    counts = {k: int((qc_df["status"] == k).sum()) for k in ("pass", "warn", "fail", "n/a")}
    head = (f"<p>{len(qc_df)} acquisition(s): {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
            + (f", {counts['n/a']} without QC metrics" if counts["n/a"] else "") + ". Full table: "
            "<a href=\"qc.tsv\">qc.tsv</a>.</p>")
    if not entries:
        return "<h2 id=\"qc\">Quality control</h2><p class=\"warn\">No acquisition found.</p>"
    metric_names = [c for c in qc_df.columns if c not in QC_ID_COLUMNS]
    units = {}
    for _, qc, _ in entries:
        for name, m in (qc or {}).get("Metrics", {}).items():
            units.setdefault(name, m.get("Units"))
    header = "".join(f"<th class=\"t\">{esc(c)}</th>" for c in ("scan", "status", "warnings", "phase units"))
    header += "".join(f"<th title=\"{esc(QC_METRICS.get(n, n))}\">{esc(n)}"
                      + (f" ({esc(units[n])})" if units.get(n) else "") + "</th>" for n in metric_names)
    rows = []
    order = {"fail": 0, "warn": 1, "n/a": 2, "pass": 3}
    for info, qc, problem in sorted(entries, key=lambda e: (order.get(e[1]["Status"] if e[1] else "n/a", 2),
                                                           e[0]["scan"])):
        status = qc["Status"] if qc else "n/a"
        row_cls = status_class(status) if qc else "warn"
        warnings = qc["Warnings"] if qc else [problem or QC_NOT_AVAILABLE]
        cells = [f"<td class=\"t\">{esc(info['scan'])}</td>",
                 f"<td class=\"t\">{badge(status) if qc else badge('warn', 'QC N/A')}</td>",
                 "<td class=\"t\">" + "<br>".join(esc(w) for w in warnings) + "</td>",
                 f"<td class=\"t\">{esc(qc['PhaseUnits'] if qc and qc['PhaseUnits'] else 'n/a')}</td>"]
        for name in metric_names:
            m = (qc or {}).get("Metrics", {}).get(name)
            if m is None:
                cells.append("<td class=\"na\">n/a</td>")
            else:
                cells.append(f"<td class=\"{status_class(m['Status'])}\" title=\"{esc(m['Threshold'])}\">"
                             f"{esc(format_value(m['Value']))}</td>")
        rows.append(f"<tr class=\"{row_cls}\">" + "".join(cells) + "</tr>")
    return (f"<h2 id=\"qc\">Quality control</h2>{head}<table class=\"qc\"><tr>{header}</tr>"
            + "".join(rows) + "</table>")


def _decimals(sds):
    """Decimals that show two significant digits of the typical SD (0 to 5)."""
    sds = np.asarray([s for s in sds if np.isfinite(s) and s > 0], float)
    if sds.size == 0:
        return 4
    return int(min(5, max(0, 1 - math.floor(math.log10(float(np.median(sds)))))))


def roi_pivot(by_group):
    """One row per region (with hemisphere), one column per map and group: ``mean ± SD (n)``.

    Column headers carry the group, the map and its units: ``siteA χ (ppm) mean ± SD (n)``.
    """
    import pandas as pd

    if by_group.empty:
        return pd.DataFrame()
    atlases = by_group["atlas"].unique()
    data = by_group.copy()
    data["row"] = (data["atlas"] + ": " + data["region"]) if len(atlases) > 1 else data["region"]
    level = data["level"].iloc[0]
    columns, cells = [], {}
    for mapname, mgrp in data.groupby("map", sort=False):
        digits = _decimals(mgrp["sd"])
        units = next((u for u in mgrp["units"] if u), "")
        present = set(mgrp["group"])
        groups = sorted(g for g in present if g != "all") + (["all"] if "all" in present else [])
        for group in groups:
            if group == "all":
                name = f"all {level}s"
            else:
                name = group if str(group).lower().startswith(level) else f"{level} {group}"
            col = f"{name} {figures.map_label(mapname, units)} mean ± SD (n)"
            columns.append(col)
            for _, r in mgrp[mgrp["group"] == group].iterrows():
                sd = f"{r['sd']:.{digits}f}" if np.isfinite(r["sd"]) else "n/a"
                cells[(r["row"], col)] = f"{r['mean']:.{digits}f} ± {sd} ({r['n_scans']})"
    order = list(dict.fromkeys(data.sort_values(["atlas", "region"])["row"]))
    table = pd.DataFrame([{"region": row, **{c: cells.get((row, c), "–") for c in columns}} for row in order],
                         columns=["region", *columns])
    return table


def _pivot_html(pivot):
    if pivot.empty:
        return "<p>(no ROI values)</p>"
    head = "".join(f"<th class=\"t\">{esc(c)}</th>" if c == "region" else f"<th>{esc(c)}</th>" for c in pivot.columns)
    rows = ["<tr>" + "".join(f"<td class=\"t\">{esc(v)}</td>" if c == "region" else f"<td>{esc(v)}</td>"
                             for c, v in row.items()) + "</tr>" for _, row in pivot.iterrows()]
    return f"<table class=\"roisummary\"><tr>{head}</tr>{''.join(rows)}</table>"


#: the TSV files of ``group/`` linked from the report, with what each holds
_TABLES = (
    ("qc", "QC status, warnings, phase units and metric values, one row per acquisition"),
    ("roistats_long", "every ROI row of every scan with the scan's site, vendor, age and sex"),
    ("roistats_wide", "one row per scan, one column per atlas:ROI:map mean"),
    ("roi_summary", "per ROI and map: n, mean, SD, min, max of the ROI means over all scans"),
    ("between_subject_sd", "between-subject SD within site, within vendor and across vendors"),
    ("reproducibility", "paired scans: Bland–Altman bias and limits, Deming regression, Pearson r"),
    ("reproducibility_points", "the paired ROI values behind the reproducibility statistics"),
    ("voxelwise_agreement", "RMSE and SSIM of the coregistered χ maps of paired scans"),
)


def _qc_only_group(out_dir, participant_label, bids_dir=None, site_factors=None, calibration=None):
    """The group level of a run without ROI tables: ``qc.tsv`` and a report with the QC table."""
    from qsmprep.interfaces.derivatives import atomic_write_text

    qc_entries = load_qc(out_dir, participant_label)
    if not qc_entries:
        raise InputError("no *_desc-qc_metrics.json or *_desc-<atlas>_roistats.tsv under sub-*/: run the "
                         "participant level first", path=out_dir)
    gdir = out_dir / "group"
    gdir.mkdir(parents=True, exist_ok=True)
    qc_df = qc_table(qc_entries)
    write_tsv(qc_df, gdir / "qc.tsv")
    note = ("<p>No ROI tables (<code>*_desc-&lt;atlas&gt;_roistats.tsv</code>): the participant level writes them "
            "when a T1w and <code>--segmentation-dir</code> or <code>--template</code>/<code>--atlas</code> are "
            "given, so this report has only the QC table.</p>")
    lesion_html, lesion_sites = lesion_section(out_dir, gdir, participant_label, bids_dir, site_factors, calibration)
    note += calibration_section(site_factors, lesion_sites, calibration) + lesion_html
    atomic_write_text(gdir / "group.html", page("qsmprep group report", _qc_section(qc_entries, qc_df) + note))
    LOGGER.info("group level: QC of %d acquisition(s) only (no ROI tables); %s", len(qc_df), gdir)
    return gdir


def run_group(bids_dir, out_dir, participant_label=None, *, radius_mm=3.0, calibration=None):
    """Compute and write the group level (see the module docstring); return ``out/group``.

    ``calibration``: a TSV of per-site calibration factors
    (:func:`qsmprep.analysis.calibration.read_site_factors`), applied to every χ value of the
    group tables; every scan's site must have one.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError("output folder does not exist; run the participant level first", path=out_dir)
    site_factors = None
    if calibration is not None:
        from qsmprep.analysis.calibration import read_site_factors

        site_factors = read_site_factors(calibration)
    long = gstats.load_long_table(out_dir, bids_dir, participant_label)
    if long.empty:
        return _qc_only_group(out_dir, participant_label, bids_dir, site_factors, calibration)
    factors = None
    sites = {}
    if site_factors:
        from qsmprep.analysis.calibration import CALIBRATED_ROI_STATS, calibrate_table, scan_factors

        sites = {scan: str(site) for scan, site in long.groupby("scan")["site"].first().items()}
        factors = scan_factors(sites, site_factors, calibration)
        long = calibrate_table(long, factors, CALIBRATED_ROI_STATS, rows=long["map"] == "chi")
    gdir = out_dir / "group"
    fdir = gdir / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    wide = gstats.wide_table(long)
    summary = gstats.roi_summary(long)
    bsd = gstats.between_subject_sd(long)
    repro, points = gstats.paired_reproducibility(long)
    voxel = voxelwise_pairs(out_dir, long, radius_mm=radius_mm, factors=factors)
    qc_entries = load_qc(out_dir, participant_label, scans=sorted(long["scan"].unique()))
    qc_df = qc_table(qc_entries)
    tables = {"qc": qc_df, "roistats_long": long.drop(columns=["roi_key"]), "roistats_wide": wide,
              "roi_summary": summary, "between_subject_sd": bsd, "reproducibility": repro,
              "reproducibility_points": points, "voxelwise_agreement": voxel}
    for name, df in tables.items():
        write_tsv(df, gdir / f"{name}.tsv")

    by = comparison_level(long)
    by_group = roi_by_group(long, by=by)
    n_scans, n_part = long["scan"].nunique(), long["participant_id"].nunique()
    lesion_html, lesion_sites = lesion_section(out_dir, gdir, participant_label, bids_dir, site_factors, calibration)
    sections = [_qc_section(qc_entries, qc_df), calibration_section(site_factors, {**sites, **lesion_sites},
                                                                    calibration)]
    sections.append(f"<p>{n_part} participant(s), {n_scans} scan(s), atlases: "
                    f"{esc(', '.join(sorted(long['atlas'].unique())))}. Sites: "
                    f"{esc(', '.join(map(str, sorted(long['site'].astype(str).unique()))))}; vendors: "
                    f"{esc(', '.join(map(str, sorted(long['vendor'].astype(str).unique()))))}.</p>")
    sections.append(f"<h2 id=\"roi-summary\">ROI summary by {by}</h2><p class=\"caption\">Mean ± SD (ddof 1) of "
                    f"the scans' ROI means per {by}, with the number of scans; "
                    + ("the last column of each map pools all scans. " if by_group["group"].eq("all").any() else "")
                    + "Per-scan values: <a href=\"roistats_wide.tsv\">roistats_wide.tsv</a>.</p>"
                    + _pivot_html(roi_pivot(by_group)))
    labels = dict(zip(by_group["roi_key"], by_group["region"]))
    sections.append(f"<h2>Figures: ROI values by {by}</h2><p class=\"caption\">One point per scan; a box "
                    f"(quartiles, whiskers to 1.5 IQR) for a {by} with at least {figures.MIN_SCANS_FOR_BOX} scans, "
                    "otherwise the points and a black line at their mean.</p>")
    for (atlas, mapname), grp in long.groupby(["atlas", "map"], sort=True):
        units = next((str(u) for u in grp.get("units", []) if gstats._present(u)), "")
        png = figures.roi_plots(fdir / f"atlas-{atlas}_map-{mapname}_by-{by}_roiplot.png", long, atlas=atlas,
                                mapname=mapname, by=by, units=units, roi_labels=labels)
        if png:
            sections.append(img(png, f"{atlas} {mapname} by {by}",
                                f"{atlas}: ROI means of {figures.map_label(mapname, units)} by {by}"))
    sections.append("<h2>Paired scans: reproducibility</h2>")
    if repro.empty:
        sections.append("<p>No participant has two scans; nothing to compare.</p>")
    else:
        sections.append("<p class=\"caption\">Statistics per ROI in <a href=\"reproducibility.tsv\">"
                        "reproducibility.tsv</a>; the plots pool all ROIs of an atlas and map.</p>")
        for (first, second, atlas, mapname), pts in points.groupby(["first", "second", "atlas", "map"], sort=True):
            row = repro[(repro["first"] == first) & (repro["second"] == second) & (repro["atlas"] == atlas)
                        & (repro["map"] == mapname) & (repro["roi_key"] == "all")].iloc[0]
            slug = re.sub(r"[^A-Za-z0-9]+", "", f"{first}vs{second}")
            units = next((str(u) for u in long.loc[long["map"] == mapname, "units"] if gstats._present(u)), "") \
                if "units" in long else ""
            png = figures.bland_altman_plot(fdir / f"atlas-{atlas}_map-{mapname}_pair-{slug}_blandaltman.png",
                                            pts, row, title=f"{atlas} {mapname}: {second} vs {first}",
                                            units=f"({units})" if units else "")
            sections.append(img(png, "Bland-Altman", f"{atlas}, {mapname}: {first} vs {second}, all ROIs"))
    n_ok = int((voxel["status"] == "ok").sum()) if not voxel.empty else 0
    sections.append("<h2>Voxel-wise agreement of coregistered χ</h2><p class=\"caption\">RMSE (ppm) and SSIM "
                    f"inside both masks for {n_ok} of {len(voxel)} scan pair(s) in "
                    "<a href=\"voxelwise_agreement.tsv\">voxelwise_agreement.tsv</a>; searchlight maps "
                    f"({radius_mm:g} mm sphere) in group/voxelwise/.</p>")
    sections.append(lesion_html)
    sections.append("<h2 id=\"tables\">Tables (TSV)</h2><ul>" + "".join(
        f"<li><a href=\"{name}.tsv\">{name}.tsv</a> ({len(tables[name])} rows): {esc(text)}</li>"
        for name, text in _TABLES) + "</ul>")
    from qsmprep.interfaces.derivatives import atomic_write_text

    atomic_write_text(gdir / "group.html", page("qsmprep group report", "\n".join(sections)))
    LOGGER.info("group level: %d scans of %d participants; tables and report in %s", n_scans, n_part, gdir)
    return gdir
