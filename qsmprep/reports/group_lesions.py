"""The group level's lesion and calibration sections (:mod:`qsmprep.reports.group`):
``lesions.tsv``, ``lesion_stats.tsv``, the strip plots and ``lesion_change.tsv`` with their
report section, and the account of ``--calibration``'s per-site factors."""

from __future__ import annotations

import re

from qsmprep.analysis import group as gstats
from qsmprep.reports.html import esc, img
from qsmprep.reports.lesion_figures import lesion_strip_plot


def write_tsv(df, path):
    """A group table as a BIDS-style TSV (``n/a`` for missing), written atomically."""
    from qsmprep.interfaces.derivatives import atomic_write_text

    atomic_write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
    return path


def scan_sites(out_dir, bids_dir, table):
    """``{scan: site}`` of the scans of a table with participant_id, session and scan columns."""
    firsts = table.drop_duplicates("scan")
    return {r["scan"]: str(gstats.scan_metadata(bids_dir, out_dir, {"participant_id": r["participant_id"],
                                                                     "session": r["session"], "scan": r["scan"]})["site"])
            for _, r in firsts.iterrows()}


def calibration_section(site_factors, sites, path):
    """The report's account of the per-site calibration (``--calibration``); ``sites``:
    ``{scan: site}`` of every calibrated scan."""
    if not site_factors:
        return ""
    used = sorted(set(sites.values()))
    rows = "".join(f"<tr><td class=\"t\">{esc(site)}</td><td>{site_factors[site]:.4f}</td><td>"
                   f"{sum(1 for s in sites.values() if s == site)}</td></tr>" for site in used)
    return ("<h2 id=\"calibration\">Calibration</h2><p class=\"caption\">χ values of this report and its tables "
            f"(ROI rows of map chi, lesion χ columns, voxel-wise agreement) are multiplied by their site's factor "
            f"from {esc(str(path))} (reference / measured tube-phantom slope, <code>qsmprep calibrate</code>); "
            "the <code>calibration_factor</code> column says which rows. The participants' own derivatives are "
            "not changed; <code>rim_candidate</code> keeps the participant level's call.</p>"
            "<table><tr><th class=\"t\">site</th><th>factor</th><th>scans</th></tr>" + rows + "</table>")


def lesion_section(out_dir, gdir, participant_label, bids_dir=None, site_factors=None, calibration=None):
    """``lesions.tsv`` (every lesion row of every scan), ``lesion_stats.tsv`` (t-tests per
    lesion kind and class, :func:`qsmprep.analysis.lesion_group.lesion_group_stats`), a strip
    plot per kind, and the report's section.

    Returns ``(html, sites)``: ``""`` when no scan has a lesion table; ``sites`` is ``{scan:
    site}`` of the lesion scans that ``site_factors`` calibrated (empty without them), for
    :func:`calibration_section`.
    """
    from qsmprep.analysis.lesion_group import lesion_group_stats, lesion_observations, load_lesion_table
    from qsmprep.reports.html import table

    lesions = load_lesion_table(out_dir, participant_label)
    factors, sites = None, {}
    if site_factors and not lesions.empty:
        from qsmprep.analysis.calibration import CALIBRATED_LESION_COLUMNS, calibrate_table, scan_factors

        sites = scan_sites(out_dir, bids_dir, lesions)
        factors = scan_factors(sites, site_factors, calibration)
        lesions = calibrate_table(lesions, factors, CALIBRATED_LESION_COLUMNS)
    if lesions.empty:
        return "", sites
    stats = lesion_group_stats(lesions)
    write_tsv(lesions, gdir / "lesions.tsv")
    write_tsv(stats, gdir / "lesion_stats.tsv")
    obs = lesion_observations(lesions)
    fdir = gdir / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h2 id=\"lesions\">Lesions: relative χ</h2><p class=\"caption\">{len(obs)} lesion(s) with a "
             f"reference in {lesions['scan'].nunique()} scan(s) (<a href=\"lesions.tsv\">lesions.tsv</a>); relative χ "
             "= lesion mean − adjacent normal-appearing tissue of its class; one-sample t-tests against 0 per lesion "
             "and per participant (lesions averaged per participant), Bonferroni over the tests of one lesion kind "
             "(<a href=\"lesion_stats.tsv\">lesion_stats.tsv</a>). <code>n_caution</code>: lesions whose row has a "
             "<code>chi_caution</code> (MEDI's magnitude-edge prior: relative χ may be shrunk towards 0; README, "
             "Lesions).</p>", table(stats)]
    for kind, grp in obs.groupby("input_name", sort=True):
        slug = re.sub(r"[^A-Za-z0-9]+", "", str(kind))
        png = lesion_strip_plot(fdir / f"lesion-{slug}_stripplot.png", grp, kind=kind)
        if png:
            parts.append(img(png, f"{kind} relative chi", f"{kind}: relative χ per lesion, by class"))
    if bids_dir is not None and (lesions["session"] != "n/a").any():
        import tempfile

        from qsmprep.analysis.lesion_change import longitudinal_lesion_change

        with tempfile.TemporaryDirectory(prefix="qsmprep-lesion-change-") as work:
            change = longitudinal_lesion_change(out_dir, bids_dir, work, participant_label=participant_label,
                                                factors=factors)
        if not change.empty:
            write_tsv(change, gdir / "lesion_change.tsv")
            flagged = change[change["flagged"].astype(bool)]
            parts.append("<h3>Lesion change between sessions</h3><p class=\"caption\">Lesions matched by overlap "
                         "in the first session's T1w space (later T1w registered rigidly); % change of the mean "
                         "lesional χ, per year from <code>sessions.tsv</code> <code>acq_time</code>; flagged: an "
                         f"increase of at least 6 % ({len(flagged)} of {len(change)}; "
                         "<a href=\"lesion_change.tsv\">lesion_change.tsv</a>).</p>"
                         + table(change[change["status"] == "matched"]))
    return "\n".join(parts), sites
