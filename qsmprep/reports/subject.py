"""Per-participant HTML report ``out/sub-<L>.html`` with figures in ``out/sub-<L>/figures/``.

The page opens with the QC block (:mod:`qsmprep.reports.qc`): one line summing up the run
(failed steps, QC failures and warnings — green only when nothing failed and every QC metric
passed), then per acquisition a pass/warn/fail badge, the warnings, the phase units used and the
metrics of ``<prefix>_desc-qc_metrics.json``.  Then, for each acquisition: mosaics of χ (fixed
window, colour bar), the echo-averaged magnitude with the brain-mask contour, the local field
and R2*; a registration check (edges of the T1w, brought into the GRE grid through the saved
``from-T1w_to-GRE`` transform, over the GRE magnitude); the ROI tables; with ``--lesion-dir``
the lesion table and a panel per lesion (χ, the lesion's outline and its reference region).  Mosaics are drawn in
neurological convention with orientation letters on every panel (:mod:`qsmprep.reports.figures`).
Then the resolved configuration, software versions and every crash file the run left for this
participant.  The page is self-contained (figures inlined).
Written after the participant workflow, also when it failed (then it shows what exists).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from qsmprep.reports import figures, lesion_figures
from qsmprep.reports import qc as qcblock
from qsmprep.reports.html import esc, img, page, table

LOGGER = logging.getLogger("nipype.workflow")


def _load(path):
    import nibabel as nib

    return nib.load(str(path)) if Path(path).is_file() else None


def acquisition_figures(out_dir, rec, fig_dir):
    """Make the figures of one acquisition; return ``[(title, png, caption)]`` for what exists."""
    import nibabel as nib

    from qsmprep.bids import derivative_path

    def deriv(suffix, **kw):
        return derivative_path(out_dir, rec.entities, suffix, **kw)

    made = []
    mag_img = _load(deriv("magnitude", desc="echoaverage"))
    mask_img = _load(deriv("mask", desc="brain"))
    mask = figures.canonical(mask_img)[0] > 0 if mask_img is not None else None
    prefix = rec.prefix

    def add(title, png, caption):
        made.append((title, str(png), caption))

    if mag_img is not None:
        mag, zooms, affine = figures.canonical_with_affine(mag_img)
        hi = float(np.percentile(mag[mag > 0], 99.5)) if (mag > 0).any() else 1.0
        png = fig_dir / f"{prefix}_desc-magnitude_mosaic.png"
        figures.mosaic(png, mag, zooms, vmin=0, vmax=hi, title="Echo-averaged magnitude and brain mask",
                       contour=mask, extent_mask=mag > 0.1 * hi, affine=affine)
        add("Magnitude and brain mask", png, "Echo-averaged magnitude; red: brain mask used for QSM. "
            + figures.CONVENTION)
    for suffix, kw, title, window, cmap, unit, caption in (
        ("Chimap", {}, "Susceptibility χ", figures.CHI_WINDOW, "gray", "χ (ppm)",
         "χ in ppm, fixed window {lo} to {hi} ppm (same in every report)."),
        ("fieldmap", {"desc": "localfield"}, "Local field", figures.FIELD_WINDOW, "RdBu_r", "field (ppm)",
         "Local field after background removal, window {lo} to {hi} ppm."),
        ("R2starmap", {}, "R2*", figures.R2STAR_WINDOW, "magma", "R2* (1/s)",
         "R2* in 1/s, window {lo} to {hi} s⁻¹."),
        ("Chimap", {"desc": "paramagnetic"}, "χ-separation: paramagnetic χ⁺", figures.CHISEP_WINDOW, "hot",
         "χ⁺ (ppm)", "Paramagnetic sources (iron) in ppm, window {lo} to {hi} ppm; absolute, not referenced."),
        ("Chimap", {"desc": "diamagnetic"}, "χ-separation: diamagnetic |χ⁻|", figures.CHISEP_WINDOW, "GnBu",
         "|χ⁻| (ppm)", "Diamagnetic sources (myelin, calcium) shown as |χ⁻| in ppm, window {lo} to {hi} ppm; "
         "absolute, not referenced."),
    ):
        image = _load(deriv(suffix, **kw))
        if image is None:
            continue
        data, zooms, affine = figures.canonical_with_affine(image)
        if kw.get("desc") == "diamagnetic":
            data = np.abs(data)
        png = fig_dir / f"{prefix}_desc-{suffix.lower()}{kw.get('desc', '')}_mosaic.png"
        figures.mosaic(png, data, zooms, vmin=window[0], vmax=window[1], cmap=cmap, title=title,
                       cbar_label=unit, extent_mask=mask if mask is not None else data != 0, affine=affine)
        add(title, png, caption.format(lo=window[0], hi=window[1]) + " " + figures.CONVENTION)
    xfm = deriv("xfm", extension=".mat").with_name(f"{prefix}_from-T1w_to-GRE_mode-image_xfm.mat")
    if mag_img is not None and rec.t1w and xfm.is_file():
        try:
            from qsmprep.anat.transforms import read_affine, resample_to

            t1w_img = nib.load(rec.t1w)
            t1w_in_gre = resample_to(t1w_img, mag_img, read_affine(xfm))
            t1_can = nib.as_closest_canonical(nib.Nifti1Image(t1w_in_gre, mag_img.affine))
            edges = figures.edge_map(np.asarray(t1_can.dataobj, np.float32), mask)
            mag, zooms, affine = figures.canonical_with_affine(mag_img)
            hi = float(np.percentile(mag[mag > 0], 99.5)) if (mag > 0).any() else 1.0
            png = fig_dir / f"{prefix}_desc-coreg_mosaic.png"
            figures.mosaic(png, mag, zooms, vmin=0, vmax=hi, title="Registration check: T1w edges on GRE magnitude",
                           edges=edges, extent_mask=mask if mask is not None else mag > 0.1 * hi, affine=affine)
            add("Registration check", png, "Cyan: edges of the T1w brought into the GRE grid through the "
                "estimated GRE→T1w affine; they should follow the GRE anatomy (ventricles, cortex, nuclei). "
                + figures.CONVENTION)
        except Exception as exc:  # noqa: BLE001 - a figure must never hide the rest of the report
            LOGGER.warning("%s: registration figure failed: %s", prefix, exc)
    return made


def _roi_tables(out_dir, rec):
    import pandas as pd

    from qsmprep.bids import derivative_path

    folder = derivative_path(out_dir, rec.entities, "Chimap").parent
    parts = []
    for path in sorted(folder.glob(f"{rec.prefix}_desc-*_roistats.tsv")):
        df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        df = df[df["n_voxels"] > 0]
        parts.append(f"<h3>{esc(path.name)}</h3>" + table(
            df, ["label", "name", "hemisphere", "map", "units", "n_voxels", "n_excluded", "volume_mm3", "mean",
                 "median", "std", "iqr", "p5", "p95", "mass"]))
    return "".join(parts)


#: columns of the report's lesion table (the TSV has them all)
LESION_REPORT_COLUMNS = ("lesion_id", "input_name", "portion", "class", "volume_mm3", "chi_mean", "chi_ref_mean",
                         "chi_relative", "r2star_relative", "rim_minus_core", "rim_candidate", "n_reference", "reason",
                         "edge_coverage", "chi_caution")


def lesion_section(out_dir, rec, fig_dir):
    """The lesion table of one acquisition and a panel per lesion (χ with the lesion's outline and
    its reference region, :func:`qsmprep.reports.lesion_figures.lesion_panels`); ``""`` without one."""
    import pandas as pd

    from qsmprep.bids import derivative_path

    tsv = derivative_path(out_dir, rec.entities, "lesionstats", desc="lesions", extension=".tsv")
    if not tsv.is_file():
        return ""
    df = pd.read_csv(tsv, sep="\t", na_values=["n/a"], keep_default_na=False)
    parts = [f"<h3>Lesions ({df['lesion_id'].nunique()})</h3>"]
    chi_img = _load(derivative_path(out_dir, rec.entities, "Chimap"))
    les_img = _load(derivative_path(out_dir, rec.entities, "dseg", desc="lesions"))
    ref_img = _load(derivative_path(out_dir, rec.entities, "dseg", desc="lesionreference"))
    if chi_img is not None and les_img is not None and ref_img is not None and len(df):
        try:
            chi, zooms, affine = figures.canonical_with_affine(chi_img)
            les = np.rint(figures.canonical(les_img)[0]).astype(int)
            ref = np.rint(figures.canonical(ref_img)[0]).astype(int)
            first = df.drop_duplicates("lesion_id").set_index("lesion_id")
            labels = {int(i): f"{r['input_name']}, {r['class']}" for i, r in first.iterrows()}
            ids = sorted(labels, key=lambda i: -float(first.loc[i, "volume_mm3"]))
            png = lesion_figures.lesion_panels(fig_dir / f"{rec.prefix}_desc-lesions_panels.png", chi, les, ref,
                                               zooms, lesion_ids=ids, labels=labels, affine=affine)
            if png:
                shown = min(len(ids), lesion_figures.MAX_LESION_PANELS)
                parts.append(img(png, "lesions", f"The {shown} largest of {len(ids)} lesion(s), each on the axial "
                                 "slice holding most of it: χ (window "
                                 f"{figures.CHI_WINDOW[0]} to {figures.CHI_WINDOW[1]} ppm), red the lesion, cyan the "
                                 "normal-appearing tissue it is measured against (desc-lesionreference_dseg), yellow "
                                 f"other lesions. {figures.CONVENTION}"))
        except Exception as exc:  # noqa: BLE001 - a figure must never hide the rest of the report
            LOGGER.warning("%s: lesion figure failed: %s", rec.prefix, exc)
    parts.append(f"<p class=\"caption\">{esc(tsv.name)}: relative χ = lesion − reference mean (ppm); "
                 "all columns in the TSV.</p>" + table(df, [c for c in LESION_REPORT_COLUMNS if c in df]))
    return "".join(parts)


def _crash_files(out_dir, subject, run_uuid):
    found = []
    folders = [Path(out_dir) / f"sub-{subject}" / "log" / run_uuid, Path(out_dir) / "log" / run_uuid]
    for folder in folders:
        for crash in sorted(folder.glob("crash-*.txt")) if folder.is_dir() else []:
            text = crash.read_text(errors="replace")
            if folder.parent.parent.name == f"sub-{subject}" or f"single_subject_{subject}_wf" in text:
                found.append((crash, text))
    return found


def write_subject_report(out_dir, subject, records, config, run_uuid):
    """Write ``out_dir/sub-<subject>.html`` and its figures; return the HTML path."""
    from qsmprep.interfaces.derivatives import atomic_write_text
    from qsmprep.reports.citation import versions

    out_dir = Path(out_dir)
    fig_dir = out_dir / f"sub-{subject}" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    crashes = _crash_files(out_dir, subject, run_uuid)
    entries = [(rec.prefix, *qcblock.load_acquisition_qc(out_dir, rec)) for rec in records]
    cls, summary = qcblock.run_summary(len(crashes), entries)
    body = ["<section class=\"qc\" id=\"qc\"><h2>Quality control</h2>"
            f"<p class=\"{cls}\">{esc(summary)}</p>"
            + "".join(qcblock.acquisition_block(prefix, qc, problem) for prefix, qc, problem in entries)
            + "</section>"]
    body.append("<nav><a href=\"#qc\">QC</a><a href=\"#acquisitions\">Acquisitions</a><a href=\"#errors\">Errors"
                "</a><a href=\"#config\">Configuration</a><a href=\"#versions\">Software</a></nav>")
    body.append(f"<p>Run {esc(run_uuid)}. {len(records)} acquisition(s).</p>")
    body.append("<h2 id=\"acquisitions\">Acquisitions</h2>")
    for rec in records:
        tes = ", ".join(f"{te * 1e3:g}" for te in rec.echo_times)
        body.append(f"<h2>{esc(rec.prefix)}</h2><p>{rec.n_echoes} echo(es), TE = {tes} ms, B0 = {rec.b0:g} T, "
                    f"matrix {' × '.join(map(str, rec.shape))}, voxel "
                    f"{' × '.join(f'{v:.3g}' for v in rec.voxel_size)} mm; T1w: {esc(rec.t1w or 'none')}</p>")
        try:
            from qsmprep.bids import derivative_path

            side = json.loads(derivative_path(out_dir, rec.entities, "Chimap", extension=".json").read_text())
            body.append(f"<p>χ reference: {esc(side.get('ReferenceRegion', 'n/a'))}; background removal "
                        f"{esc(side.get('BackgroundRemoval', 'n/a'))}; inversion {esc(side.get('DipoleInversion', 'n/a'))}.</p>")
        except (OSError, ValueError):
            body.append("<p class=\"err\">No χ map was written for this acquisition.</p>")
        for title, png, caption in acquisition_figures(out_dir, rec, fig_dir):
            body.append(f"<h3>{esc(title)}</h3>" + img(png, title, caption))
        rois = _roi_tables(out_dir, rec)
        if rois:
            body.append("<h3>ROI statistics</h3>" + rois)
        body.append(lesion_section(out_dir, rec, fig_dir))
    body.append("<h2 id=\"errors\">Errors</h2>")
    if crashes:
        for crash, text in crashes:
            body.append(f"<h3 class=\"err\">{esc(crash.name)}</h3><pre>{esc(text[-20000:], quote=False)}</pre>")
    else:
        body.append("<p>None.</p>")
    body.append("<h2 id=\"config\">Configuration</h2><pre>"
                + esc(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str), quote=False) + "</pre>")
    ver = versions()
    body.append("<h2 id=\"versions\">Software</h2>" + "<ul>" + "".join(
        f"<li>{esc(k)}: {esc(v)}</li>" for k, v in ver.items()) + "</ul>")
    path = out_dir / f"sub-{subject}.html"
    atomic_write_text(path, page(f"qsmprep report: sub-{subject}", "\n".join(body)))
    return path
