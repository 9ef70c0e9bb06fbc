"""The QC block that opens every report: per acquisition a status badge, the warnings, the phase
units used and the table of QC metrics (from ``<prefix>_desc-qc_metrics.json``).

Reading and checking the JSON documents is in :mod:`qsmprep.analysis.qc` (``read_qc``,
``normalise_qc``), shared with the group level's ``qc.tsv``.
"""

from __future__ import annotations

import math

from qsmprep.analysis.qc import QC_METRICS, QC_NOT_AVAILABLE, qc_counts, read_qc
from qsmprep.reports.html import badge, esc, status_class

__all__ = ["qc_path", "load_acquisition_qc", "format_value", "phase_units_text", "acquisition_block",
           "run_summary", "QC_NOT_AVAILABLE"]

_SEVERITY = {"fail": 0, "warn": 1, "pass": 2}


def qc_path(out_dir, entities):
    """``<out>/sub-<L>[/ses-<S>]/anat/<prefix>_desc-qc_metrics.json``."""
    from qsmprep.bids import derivative_path

    return derivative_path(out_dir, entities, "metrics", desc="qc", extension=".json")


def load_acquisition_qc(out_dir, rec):
    """``(qc, problem)`` of one acquisition record (see :func:`qsmprep.analysis.qc.read_qc`)."""
    return read_qc(qc_path(out_dir, rec.entities))


def _number(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def format_value(value, units=None):
    """A metric value with its units: ``1234 ml``, ``12.5 %``, ``[0, 4095]``, ``yes``, ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_number(v) for v in value) + "]"
    else:
        text = _number(value)
    return f"{text} {units}" if units and text != "n/a" else text


def phase_units_text(qc):
    """``int12 (auto-detected; raw range 0 to 4095)`` from a normalised QC document."""
    if qc is None or qc.get("PhaseUnits") in (None, ""):
        return "not recorded"
    extra = []
    if qc.get("PhaseUnitsSource"):
        extra.append(str(qc["PhaseUnitsSource"]))
    rng = qc.get("PhaseRawRange")
    if rng and len(rng) == 2:
        extra.append(f"raw range {_number(rng[0])} to {_number(rng[1])}")
    return str(qc["PhaseUnits"]) + (f" ({'; '.join(extra)})" if extra else "")


def _ordered_metrics(qc):
    order = list(QC_METRICS)
    items = list(qc["Metrics"].items())
    return sorted(items, key=lambda kv: (_SEVERITY.get(kv[1]["Status"], 2),
                                         order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


def metrics_table(qc):
    """The metrics as an HTML table, those that fail or warn first, status cells coloured."""
    rows = []
    for name, m in _ordered_metrics(qc):
        cls = status_class(m["Status"])
        note = m["Message"] if m["Status"] != "pass" and m["Message"] else m["Description"]
        rows.append(f"<tr><td class=\"t\" title=\"{esc(m['Description'])}\">{esc(QC_METRICS.get(name, name))} "
                    f"<code>{esc(name)}</code></td><td>{esc(format_value(m['Value'], m['Units']))}</td>"
                    f"<td class=\"t {cls}\">{esc(m['Status'])}</td><td class=\"t\">{esc(m['Threshold'])}</td>"
                    f"<td class=\"t\">{esc(note)}</td></tr>")
    if not rows:
        return "<p class=\"warn\">The QC file lists no metrics.</p>"
    return ("<table class=\"qc\"><tr><th class=\"t\">metric</th><th>value</th><th class=\"t\">status</th>"
            "<th class=\"t\">threshold</th><th class=\"t\">what it measures / what to do</th></tr>"
            + "".join(rows) + "</table>")


def acquisition_block(prefix, qc, problem=None):
    """HTML of one acquisition's QC: badge and name, warnings first, phase units, metrics table."""
    if qc is None:
        return (f"<h3 id=\"qc-{esc(prefix)}\">{badge('warn', 'QC N/A')} {esc(prefix)}</h3>"
                f"<p class=\"warn\">{esc(problem or QC_NOT_AVAILABLE)}</p>")
    status = qc["Status"]
    parts = [f"<h3 id=\"qc-{esc(prefix)}\">{badge(status)} {esc(prefix)}</h3>"]
    if qc["Warnings"]:
        cls = "err" if status == "fail" else "warn"
        parts.append(f"<p class=\"{cls}\">{len(qc['Warnings'])} warning(s):</p><ul class=\"warnings\">"
                     + "".join(f"<li class=\"{cls}\">{esc(w)}</li>" for w in qc["Warnings"]) + "</ul>")
    elif status == "pass":
        parts.append("<p class=\"ok\">All QC metrics passed.</p>")
    parts.append(f"<p>Phase units used: <b>{esc(phase_units_text(qc))}</b>.</p>")
    parts.append(metrics_table(qc))
    return "".join(parts)


def run_summary(n_crashes, entries):
    """``(css class, sentence)`` summing up a participant's run: failed steps, then QC.

    ``entries``: ``[(prefix, qc, problem)]`` per acquisition.  Green (``ok``) only when no step
    failed, every acquisition has QC metrics and all of them passed; never "no errors" otherwise.
    """
    n_warn = n_fail = n_missing = 0
    for _, qc, _ in entries:
        if qc is None:
            n_missing += 1
            continue
        w, f = qc_counts(qc)
        n_warn, n_fail = n_warn + w, n_fail + f
    parts = [f"{n_crashes} step(s) failed in this run; see Errors" if n_crashes else "No processing errors"]
    if not entries:
        parts.append("no acquisition to check")
    if n_fail:
        parts.append(f"{n_fail} QC failure(s)")
    if n_warn:
        parts.append(f"{n_warn} QC warning(s)")
    if n_missing:
        parts.append(f"{QC_NOT_AVAILABLE} for {n_missing} of {len(entries)} acquisition(s)")
    if n_crashes or n_fail:
        cls = "err"
    elif n_warn or n_missing or not entries:
        cls = "warn"
    else:
        cls = "ok"
        parts.append(f"all QC metrics passed ({len(entries)} acquisition(s))")
    return cls, "; ".join(parts) + "."
