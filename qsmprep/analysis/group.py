"""Group-level statistics on participant ROI tables (pure numpy/pandas).

What the ``group`` level computes (``qsmprep bids out group``, written by
:mod:`qsmprep.reports.group`):

* **Long table** — every row of every ``*_desc-<atlas>_roistats.tsv`` with the scan's
  entities, ``site``/``vendor`` and ``age``/``sex`` (see :func:`scan_metadata`).
* **Wide table** — one row per scan, one column per ``<atlas>:<name>[_<hemi>]:<map>`` mean.
* **Per-ROI summary** — number of scans, mean, SD, min, max of the ROI means.
* **Between-subject SD** (as in multi-site reproducibility tables, e.g. the RIN study):
  one value per participant and site (the mean of that participant's scans there), then

  - *within site*: SD (ddof 1) across participants at each site, and the pooled within-site SD
    ``sqrt(Σ (n_s − 1) SD_s² / Σ (n_s − 1))``;
  - *within vendor*: the same with the vendor instead of the site (a participant scanned at two
    sites of one vendor contributes both scans);
  - *across vendors*: SD across all (participant, site) values of all vendors together, i.e.
    between-subject plus between-site/vendor variability.

* **Paired reproducibility** for participants with two scans (sessions, sites, runs): for each
  pair of scan kinds (e.g. ``ses-siteA`` vs ``ses-siteB``) and ROI, over participants —
  Bland–Altman mean difference (second − first) and 95% limits of agreement
  (mean ± 1.96 SD; Bland & Altman 1986), orthogonal / Deming regression (Deming 1943;
  Linnet 1993) and Pearson r; also pooled over all ROIs (``roi = all``).

Elsewhere: the voxel-wise agreement of coregistered χ maps (:mod:`qsmprep.analysis.agreement`),
the QC table (:mod:`qsmprep.analysis.qc`) and the ROI means by site or vendor of the report
(:mod:`qsmprep.analysis.summary`).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np

#: entity order of qsmprep file names
ENTITY_KEYS = ("sub", "ses", "acq", "run")
SCAN_COLUMNS = ("participant_id", "session", "acq", "run", "scan", "site", "vendor", "age", "sex")
_ROISTATS_RE = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?(?:_acq-[^_]+)?(?:_run-[^_]+)?)"
                          r"(?:_space-[^_]+)?_desc-(?P<atlas>[^_]+)_roistats\.tsv$")


# ----------------------------------------------------------------------------- statistics

def bland_altman(first, second, *, k=1.96):
    """Bland–Altman agreement of paired measurements (Bland & Altman, Lancet 1986;1:307–310).

    Differences are ``second − first``.  Returns ``n``, ``mean_diff`` (bias), ``sd_diff``
    (ddof 1), the limits of agreement ``mean_diff ± k·sd_diff`` and ``mean_of_means``.
    Pairs with a non-finite member are dropped.
    """
    a, b = _paired(first, second)
    n = a.size
    diff = b - a
    mean_diff = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    return {"n": int(n), "mean_diff": mean_diff, "sd_diff": sd,
            "loa_lower": mean_diff - k * sd, "loa_upper": mean_diff + k * sd,
            "mean_of_means": float(((a + b) / 2).mean()) if n else math.nan}


def deming_regression(x, y, *, delta=1.0):
    """Deming regression ``y = intercept + slope·x`` with errors in both variables.

    ``delta`` is the ratio of the error variances, var(error in y) / var(error in x); ``delta=1``
    is orthogonal (total least squares) regression, the default for two scanners measuring
    the same quantity.  Closed form (Deming 1943; Linnet, Clin Chem 1993;39:424–432)::

        slope = (s_yy − δ s_xx + sqrt((s_yy − δ s_xx)² + 4 δ s_xy²)) / (2 s_xy)

    with the sample (co)variances s.  Returns ``n``, ``slope``, ``intercept``.
    """
    a, b = _paired(x, y)
    n = a.size
    if n < 2:
        return {"n": int(n), "slope": math.nan, "intercept": math.nan}
    ax, by = a.mean(), b.mean()
    sxx = float(((a - ax) ** 2).sum() / (n - 1))
    syy = float(((b - by) ** 2).sum() / (n - 1))
    sxy = float(((a - ax) * (b - by)).sum() / (n - 1))
    if sxy == 0:
        slope = math.nan
    else:
        d = syy - delta * sxx
        slope = (d + math.sqrt(d * d + 4 * delta * sxy * sxy)) / (2 * sxy)
    return {"n": int(n), "slope": slope, "intercept": float(by - slope * ax)}


def pearson_r(x, y):
    """Pearson correlation of the finite pairs (``nan`` with fewer than 3 or a constant series)."""
    a, b = _paired(x, y)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _paired(x, y):
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def pooled_sd(groups):
    """Pooled SD of several samples: ``sqrt(Σ (n_g − 1) s_g² / Σ (n_g − 1))`` (groups with n ≥ 2)."""
    num = den = 0.0
    for values in groups:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size >= 2:
            num += (v.size - 1) * v.var(ddof=1)
            den += v.size - 1
    return math.sqrt(num / den) if den else math.nan


# ----------------------------------------------------------------------------- tables

def parse_roistats_name(path):
    """Entities and atlas of a ``*_desc-<atlas>_roistats.tsv`` file name (None if not one)."""
    match = _ROISTATS_RE.match(Path(path).name)
    if not match:
        return None
    ents = dict(part.split("-", 1) for part in match.group("prefix").split("_"))
    return {"participant_id": f"sub-{ents['sub']}", "session": ents.get("ses", "n/a"),
            "acq": ents.get("acq", "n/a"), "run": ents.get("run", "n/a"),
            "scan": match.group("prefix"), "atlas": match.group("atlas")}


def find_roistats(out_dir, participant_label=None):
    """ROI tables under ``out_dir/sub-*/`` (sorted), optionally for some participants only."""
    out_dir = Path(out_dir)
    found = []
    for path in sorted(out_dir.glob("sub-*/**/*_roistats.tsv")):
        info = parse_roistats_name(path)
        if info is None:
            continue
        if participant_label and info["participant_id"][4:] not in participant_label:
            continue
        found.append(path)
    return found


def _read_tsv(path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"hemisphere": str})


def _lower_columns(df):
    return df.rename(columns={c: c.lower() for c in df.columns})


def scan_metadata(bids_dir, out_dir, info):
    """Site, vendor, age and sex of one scan.

    Priority: ``sessions.tsv`` (columns ``site``/``vendor``) of the participant, then
    ``participants.tsv`` (``site``, ``vendor``, ``age``, ``sex``), then the raw GRE sidecars
    named in the χ map's ``Sources`` (``InstitutionName`` → site, ``Manufacturer`` → vendor);
    ``n/a`` when none has it.
    """
    meta = {"site": "n/a", "vendor": "n/a", "age": "n/a", "sex": "n/a"}
    bids_dir = Path(bids_dir) if bids_dir else None
    sub = info["participant_id"]
    # raw sidecars first (lowest priority): overwritten by the tables below
    if bids_dir is not None:
        sidecar = _chimap_sidecar(out_dir, info)
        for src in sidecar.get("Sources", []) if sidecar else []:
            if not str(src).startswith("bids:raw:"):
                continue
            raw = bids_dir / str(src)[len("bids:raw:"):]
            raw_json = raw.with_name(raw.name.split(".nii")[0] + ".json")
            if raw_json.is_file():
                try:
                    raw_meta = json.loads(raw_json.read_text())
                except (OSError, ValueError):
                    continue
                if raw_meta.get("InstitutionName"):
                    meta["site"] = str(raw_meta["InstitutionName"])
                if raw_meta.get("Manufacturer"):
                    meta["vendor"] = str(raw_meta["Manufacturer"])
                break
        participants = bids_dir / "participants.tsv"
        if participants.is_file():
            table = _lower_columns(_read_tsv(participants))
            rows = table[table["participant_id"].astype(str) == sub] if "participant_id" in table else []
            if len(rows):
                row = rows.iloc[0]
                for key in ("site", "vendor", "age", "sex"):
                    if key in row.index and _present(row[key]):
                        meta[key] = row[key]
        sessions = bids_dir / sub / f"{sub}_sessions.tsv"
        if sessions.is_file() and info["session"] != "n/a":
            table = _lower_columns(_read_tsv(sessions))
            if "session_id" in table:
                rows = table[table["session_id"].astype(str) == f"ses-{info['session']}"]
                if len(rows):
                    row = rows.iloc[0]
                    for key in ("site", "vendor", "age"):
                        if key in row.index and _present(row[key]):
                            meta[key] = row[key]
    return meta


def _present(value):
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() not in ("", "n/a")


def _chimap_sidecar(out_dir, info):
    folder = Path(out_dir) / info["participant_id"]
    if info["session"] != "n/a":
        folder = folder / f"ses-{info['session']}"
    path = folder / "anat" / f"{info['scan']}_Chimap.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_long_table(out_dir, bids_dir=None, participant_label=None):
    """All ROI tables under ``out_dir`` in one long table (see the module docstring)."""
    import pandas as pd

    frames = []
    for path in find_roistats(out_dir, participant_label):
        info = parse_roistats_name(path)
        table = _read_tsv(path)
        meta = scan_metadata(bids_dir, out_dir, info)
        for key, value in {**info, **meta}.items():
            if key not in table:
                table.insert(0, key, value)
        frames.append(table)
    if not frames:
        return pd.DataFrame()
    long = pd.concat(frames, ignore_index=True)
    front = [c for c in (*SCAN_COLUMNS, "atlas") if c in long]
    long = long[front + [c for c in long.columns if c not in front]]
    long["hemisphere"] = long["hemisphere"].fillna("").replace("n/a", "")
    long["roi_key"] = long.apply(_roi_key, axis=1)
    return long


def _roi_key(row):
    name = row["roi"] if _present(row.get("roi")) else row["name"]
    hemi = row["hemisphere"] if _present(row.get("hemisphere")) else ""
    return f"{name}_{hemi}" if hemi else str(name)


def wide_table(long, stat="mean"):
    """One row per scan, one column per ``<atlas>:<roi>[_<hemi>]:<map>`` (the ROI ``stat``)."""
    if long.empty:
        return long
    data = long.dropna(subset=[stat]).copy()
    data["column"] = data["atlas"] + ":" + data["roi_key"] + ":" + data["map"]
    index = [c for c in SCAN_COLUMNS if c in data]
    wide = data.pivot_table(index=index, columns="column", values=stat, aggfunc="first")
    wide.columns.name = None
    return wide.reset_index()


ROI_KEYS = ("atlas", "map", "roi_key", "label", "name", "hemisphere")


SUMMARY_COLUMNS = (*ROI_KEYS, "n_scans", "n_participants", "mean", "sd", "min", "max")
BSD_COLUMNS = (*ROI_KEYS, "level", "group", "n_participants", "n_values", "mean", "sd")
REPRO_COLUMNS = ("first", "second", "atlas", "map", "roi_key", "n_pairs", "n_participants", "mean_first",
                 "mean_second", "ba_mean_diff", "ba_sd_diff", "ba_loa_lower", "ba_loa_upper", "deming_slope",
                 "deming_intercept", "pearson_r")
POINTS_COLUMNS = ("first", "second", "atlas", "map", "roi_key", "participant_id", "value_first", "value_second")


def roi_summary(long, stat="mean"):
    """Per ROI and map: scans, participants, mean, SD (ddof 1), min and max of the ROI ``stat``."""
    import pandas as pd

    rows = []
    for key, grp in long.dropna(subset=[stat]).groupby(list(ROI_KEYS), sort=True):
        v = grp[stat].to_numpy(float)
        rows.append({**dict(zip(ROI_KEYS, key)), "n_scans": v.size, "n_participants": grp["participant_id"].nunique(),
                     "mean": v.mean(), "sd": v.std(ddof=1) if v.size > 1 else math.nan,
                     "min": v.min(), "max": v.max()})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def between_subject_sd(long, stat="mean"):
    """Between-subject SD within site, within vendor and across vendors (module docstring)."""
    import pandas as pd

    rows = []
    data = long.dropna(subset=[stat])
    for key, grp in data.groupby(list(ROI_KEYS), sort=True):
        base = dict(zip(ROI_KEYS, key))
        # one value per participant and site (mean over that participant's scans there)
        per_site = grp.groupby(["participant_id", "site", "vendor"], sort=True)[stat].mean().reset_index()
        for level in ("site", "vendor"):
            samples = []
            for group_value, sub in per_site.groupby(level, sort=True):
                v = sub[stat].to_numpy(float)
                samples.append(v)
                rows.append({**base, "level": f"within {level}", "group": group_value,
                             "n_participants": sub["participant_id"].nunique(), "n_values": v.size,
                             "mean": v.mean(), "sd": v.std(ddof=1) if v.size > 1 else math.nan})
            rows.append({**base, "level": f"within {level}", "group": "pooled",
                         "n_participants": per_site["participant_id"].nunique(),
                         "n_values": int(sum(s.size for s in samples)), "mean": math.nan,
                         "sd": pooled_sd(samples)})
        v = per_site[stat].to_numpy(float)
        rows.append({**base, "level": "across vendors", "group": "all",
                     "n_participants": per_site["participant_id"].nunique(), "n_values": v.size,
                     "mean": v.mean(), "sd": v.std(ddof=1) if v.size > 1 else math.nan})
    return pd.DataFrame(rows, columns=list(BSD_COLUMNS))


def _scan_kind(row):
    """The part of a scan's identity shared across participants (session/acq/run, site)."""
    parts = [f"{k}-{row[c]}" for k, c in (("ses", "session"), ("acq", "acq"), ("run", "run"))
             if _present(row.get(c))]
    kind = "_".join(parts) or "scan"
    if _present(row.get("site")):
        kind += f"@{row['site']}"
    return kind


def scan_pairs(long):
    """Pairs of scans of the same participant: ``[(kind_a, kind_b, participant, scan_a, scan_b)]``.

    Every two scans of a participant form a pair, ordered by scan name; the pair's kind
    (e.g. ``ses-1@siteA`` vs ``ses-2@siteB``) groups the participants for the statistics.
    """
    scans = long.drop_duplicates("scan")[[c for c in SCAN_COLUMNS if c in long]].copy()
    scans["kind"] = scans.apply(_scan_kind, axis=1)
    pairs = []
    for pid, grp in scans.sort_values("scan").groupby("participant_id", sort=True):
        for (_, ra), (_, rb) in itertools.combinations(list(grp.iterrows()), 2):
            pairs.append((ra["kind"], rb["kind"], pid, ra["scan"], rb["scan"]))
    return pairs


def paired_reproducibility(long, stat="mean", delta=1.0):
    """Bland–Altman, Deming and Pearson per pair kind, ROI and map, and pooled over ROIs.

    Pairs of scans come from :func:`scan_pairs`; for each kind of pair and each ROI the
    participants' ROI values at the first and second scan are compared.  The ``roi_key=all``
    rows pool every ROI of an atlas and map (the usual multi-site scatter of ROI means).
    """
    import pandas as pd

    data = long.dropna(subset=[stat])
    value = data.set_index(["scan", "atlas", "map", "roi_key"])[stat]
    value = value[~value.index.duplicated()]
    by_kind = {}
    for kind_a, kind_b, pid, scan_a, scan_b in scan_pairs(long):
        by_kind.setdefault((kind_a, kind_b), []).append((pid, scan_a, scan_b))
    rows, points = [], []
    for (kind_a, kind_b), members in sorted(by_kind.items()):
        for (atlas, mapname), grp in data.groupby(["atlas", "map"], sort=True):
            for roi in sorted(grp["roi_key"].unique()):
                for pid, scan_a, scan_b in members:
                    va = value.get((scan_a, atlas, mapname, roi), math.nan)
                    vb = value.get((scan_b, atlas, mapname, roi), math.nan)
                    if np.isfinite(va) and np.isfinite(vb):
                        points.append({"first": kind_a, "second": kind_b, "atlas": atlas, "map": mapname,
                                       "roi_key": roi, "participant_id": pid, "value_first": va,
                                       "value_second": vb})
    pts = pd.DataFrame(points, columns=list(POINTS_COLUMNS))
    if pts.empty:  # no participant with two scans: empty tables that keep their header
        return pd.DataFrame(columns=list(REPRO_COLUMNS)), pts
    for (first, second, atlas, mapname), grp in pts.groupby(["first", "second", "atlas", "map"], sort=True):
        for roi, sub in [*grp.groupby("roi_key", sort=True), ("all", grp)]:
            a, b = sub["value_first"].to_numpy(float), sub["value_second"].to_numpy(float)
            ba = bland_altman(a, b)
            dem = deming_regression(a, b, delta=delta)
            rows.append({"first": first, "second": second, "atlas": atlas, "map": mapname, "roi_key": roi,
                         "n_pairs": ba["n"], "n_participants": sub["participant_id"].nunique(),
                         "mean_first": float(a.mean()), "mean_second": float(b.mean()),
                         "ba_mean_diff": ba["mean_diff"], "ba_sd_diff": ba["sd_diff"],
                         "ba_loa_lower": ba["loa_lower"], "ba_loa_upper": ba["loa_upper"],
                         "deming_slope": dem["slope"], "deming_intercept": dem["intercept"],
                         "pearson_r": pearson_r(a, b)})
    return pd.DataFrame(rows, columns=list(REPRO_COLUMNS)), pts
