"""The group-level QC table (``group/qc.tsv``) from the acquisitions' ``*_desc-qc_metrics.json``.

* **QC table** — one row per acquisition from its ``*_desc-qc_metrics.json`` (status, warnings,
  phase units, one column per metric value; :func:`qc_table`).

Reading and checking one document (:func:`read_qc`, :func:`normalise_qc`) is shared with the
participant report (:mod:`qsmprep.reports.qc`) and the methods boilerplate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_QC_RE = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?(?:_acq-[^_]+)?(?:_run-[^_]+)?)_desc-qc_metrics\.json$")

#: QC statuses, best first
QC_STATUSES = ("pass", "warn", "fail")
#: the metrics of ``*_desc-qc_metrics.json`` in the order tables show them, with a readable name
QC_METRICS = {
    "phase_units": "Phase units",
    "phase_raw_range": "Raw phase range",
    "mask_volume_ml": "Brain mask volume",
    "mask_fraction_fov": "Mask fraction of the field of view",
    "partial_coverage": "Partial brain coverage",
    "mask_source": "Mask source",
    "mask_refinement_removed_fraction": "Removed by mask refinement",
    "mask_growth_added_fraction": "Added by mask growth",
    "field_residual_over_noise": "Field residual / noise",
    "phase_jump_fraction": "Residual phase jumps",
    "chi_p01": "χ 1st percentile",
    "chi_p99": "χ 99th percentile",
    "chi_range_ppm": "χ 1st–99th percentile range",
    "reference_offset_ppm": "χ reference offset",
    "registration_similarity": "Registration similarity",
}
QC_ID_COLUMNS = ("subject", "session", "acquisition", "run", "scan", "status", "n_warnings", "warnings",
                 "phase_units", "phase_units_source")
QC_NOT_AVAILABLE = "QC metrics not available"


def worst_status(statuses):
    """The worst of ``pass`` < ``warn`` < ``fail`` among ``statuses`` (others ignored); ``n/a`` if none."""
    ranked = [QC_STATUSES.index(s) for s in statuses if s in QC_STATUSES]
    return QC_STATUSES[max(ranked)] if ranked else "n/a"


def normalise_qc(raw):
    """A ``*_desc-qc_metrics.json`` document checked and completed.

    Every metric gets ``Value``, ``Units``, ``Status`` (``pass``/``warn``/``fail``/``n/a``),
    ``Threshold``, ``Description`` and ``Message``; the overall ``Status`` is never better than
    the worst metric; a metric that warns or fails without a sentence in ``Warnings`` (one that
    contains its ``Message``, e.g. ``"<name>: <message>"``) adds its ``Message`` there, so
    nothing that is not ``pass`` goes unsaid.
    """
    if not isinstance(raw, dict):
        raise ValueError("the QC document is not a JSON object")
    metrics = {}
    for name, m in (raw.get("Metrics") or {}).items():
        m = m if isinstance(m, dict) else {"Value": m}
        status = str(m.get("Status", "n/a")).lower()
        metrics[str(name)] = {"Value": m.get("Value"), "Units": m.get("Units"),
                              "Status": status if status in QC_STATUSES else "n/a",
                              "Threshold": m.get("Threshold") or "", "Description": m.get("Description") or "",
                              "Message": m.get("Message") or ""}
    warnings = [str(w) for w in (raw.get("Warnings") or []) if str(w).strip()]
    for name, m in metrics.items():
        if m["Status"] in ("warn", "fail") and m["Message"] and not any(m["Message"] in w for w in warnings):
            warnings.append(m["Message"])
    stated = str(raw.get("Status", "")).lower()
    status = worst_status([stated, *(m["Status"] for m in metrics.values())])
    if status in ("pass", "n/a") and warnings:
        status = "warn"
    rng = raw.get("PhaseRawRange")
    return {"Status": status, "Warnings": warnings, "PhaseUnits": raw.get("PhaseUnits"),
            "PhaseUnitsSource": raw.get("PhaseUnitsSource"),
            "PhaseRawRange": list(rng) if isinstance(rng, (list, tuple)) else None, "Metrics": metrics}


def read_qc(path):
    """``(qc, problem)`` of one ``*_desc-qc_metrics.json``: the normalised document and None, or
    None and a sentence saying why there is none (missing file — a run made before qsmprep wrote
    QC metrics — or an unreadable one)."""
    path = Path(path)
    if not path.is_file():
        return None, f"{QC_NOT_AVAILABLE} (no {path.name}; written by a qsmprep version without QC metrics, " \
                     "or the acquisition did not finish)"
    try:
        return normalise_qc(json.loads(path.read_text())), None
    except (OSError, ValueError) as exc:
        return None, f"{QC_NOT_AVAILABLE}: {path.name} could not be read ({exc})"


def qc_counts(qc):
    """``(n_warn, n_fail)``: metrics that warn / fail (warnings not tied to a metric count as warn)."""
    if qc is None:
        return 0, 0
    statuses = [m["Status"] for m in qc["Metrics"].values()]
    n_warn, n_fail = statuses.count("warn"), statuses.count("fail")
    n_warn += max(0, len(qc["Warnings"]) - n_warn - n_fail)
    return n_warn, n_fail


def parse_qc_name(path):
    """Entities of a ``*_desc-qc_metrics.json`` file name (None if not one)."""
    match = _QC_RE.match(Path(path).name)
    if not match:
        return None
    ents = dict(part.split("-", 1) for part in match.group("prefix").split("_"))
    return {"subject": ents["sub"], "session": ents.get("ses", "n/a"), "acquisition": ents.get("acq", "n/a"),
            "run": ents.get("run", "n/a"), "scan": match.group("prefix")}


def load_qc(out_dir, participant_label=None, scans=()):
    """``[(entities, qc, problem)]`` for every ``sub-*/**/*_desc-qc_metrics.json`` under ``out_dir``
    and every scan of ``scans`` (prefixes, e.g. those with ROI tables) that has none."""
    out_dir = Path(out_dir)
    found = {}
    for path in sorted(out_dir.glob("sub-*/**/*_desc-qc_metrics.json")):
        info = parse_qc_name(path)
        if info is None or (participant_label and info["subject"] not in participant_label):
            continue
        qc, problem = read_qc(path)
        found[info["scan"]] = (info, qc, problem)
    for scan in scans:
        if scan in found:
            continue
        ents = dict(part.split("-", 1) for part in str(scan).split("_") if "-" in part)
        info = {"subject": ents.get("sub", "n/a"), "session": ents.get("ses", "n/a"),
                "acquisition": ents.get("acq", "n/a"), "run": ents.get("run", "n/a"), "scan": str(scan)}
        folder = out_dir / f"sub-{info['subject']}"
        if info["session"] != "n/a":
            folder = folder / f"ses-{info['session']}"
        found[scan] = (info, *read_qc(folder / "anat" / f"{scan}_desc-qc_metrics.json"))
    return [found[k] for k in sorted(found)]


def _qc_cell(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def qc_table(entries):
    """One row per acquisition (``group/qc.tsv``): entities, ``status``, ``n_warnings``, the
    ``warnings`` joined by `` | ``, the phase units and their source, one column per metric value
    (known metrics in :data:`QC_METRICS` order, then any others alphabetically; the
    ``phase_units`` metric is the ``phase_units`` column).  Lists are written as JSON."""
    import pandas as pd

    names = []
    for _, qc, _ in entries:
        for name in (qc or {}).get("Metrics", {}):
            if name not in names:
                names.append(name)
    known = [n for n in QC_METRICS if n in names and n not in QC_ID_COLUMNS]
    names = known + sorted(n for n in names if n not in QC_METRICS and n not in QC_ID_COLUMNS)
    rows = []
    for info, qc, problem in entries:
        row = {k: info.get(k, "n/a") for k in ("subject", "session", "acquisition", "run", "scan")}
        if qc is None:
            row.update(status="n/a", n_warnings=0, warnings=problem or QC_NOT_AVAILABLE, phase_units="n/a",
                       phase_units_source="n/a")
        else:
            units = qc["PhaseUnits"]
            if units is None and "phase_units" in qc["Metrics"]:  # the metric of the same name, else n/a
                units = qc["Metrics"]["phase_units"]["Value"]
            row.update(status=qc["Status"], n_warnings=len(qc["Warnings"]), warnings=" | ".join(qc["Warnings"]),
                       phase_units=units if units is not None else "n/a",
                       phase_units_source=qc["PhaseUnitsSource"] if qc["PhaseUnitsSource"] is not None else "n/a")
        for name in names:
            metric = (qc or {}).get("Metrics", {}).get(name)
            row[name] = _qc_cell(metric["Value"]) if metric else None
        rows.append(row)
    return pd.DataFrame(rows, columns=[*QC_ID_COLUMNS, *names])
