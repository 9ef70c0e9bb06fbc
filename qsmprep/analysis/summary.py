"""ROI means ± SD per site (or per vendor when there is one site) for the pivoted summary of the
group report (:func:`roi_by_group`), from the long table of :func:`qsmprep.analysis.group.load_long_table`.
"""

from __future__ import annotations

import math

from qsmprep.analysis.group import _present


def comparison_level(long):
    """``site`` when the scans come from more than one site, else ``vendor`` when from more than one
    vendor, else ``site`` (a single column)."""
    for level in ("site", "vendor"):
        if level in long and long[level].astype(str).nunique() > 1:
            return level
    return "site"


def roi_label(row):
    """``putamen (L)`` / ``Brainstem``: the region with its hemisphere, for tables and plots."""
    name = row["roi"] if _present(row.get("roi")) else row["name"]
    hemi = row["hemisphere"] if _present(row.get("hemisphere")) else ""
    return f"{name} ({hemi})" if hemi else str(name)


def roi_by_group(long, by=None, stat="mean"):
    """ROI ``stat`` per atlas, map, ROI and group (site or vendor, :func:`comparison_level`):
    n scans, mean and SD (ddof 1) of the scans' ROI values, plus an ``all`` group.

    Returns a long table (``atlas, map, units, roi_key, region, level, group, n_scans, mean, sd``)
    that the report pivots into one row per region and one column per group and map.
    """
    import pandas as pd

    columns = ["atlas", "map", "units", "roi_key", "region", "level", "group", "n_scans", "mean", "sd"]
    if long.empty:
        return pd.DataFrame(columns=columns)
    by = by or comparison_level(long)
    data = long.dropna(subset=[stat]).copy()
    data["_group"] = data[by].astype(str)
    rows = []
    for (atlas, mapname, roi), grp in data.groupby(["atlas", "map", "roi_key"], sort=True):
        first = grp.iloc[0]
        units = str(first["units"]) if "units" in grp and _present(first.get("units")) else ""
        base = {"atlas": atlas, "map": mapname, "units": units, "roi_key": roi, "region": roi_label(first),
                "level": by}
        parts = list(grp.groupby("_group", sort=True))
        if len(parts) > 1:
            parts.append(("all", grp))
        for group, sub in parts:
            v = sub[stat].to_numpy(float)
            rows.append({**base, "group": group, "n_scans": int(v.size), "mean": float(v.mean()),
                         "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan})
    return pd.DataFrame(rows, columns=columns)

