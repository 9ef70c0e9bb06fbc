"""Group-level statistics on participant ROI tables and coregistered χ maps (pure numpy/scipy/pandas).

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
* **Voxel-wise agreement** of two coregistered χ maps: RMSE and SSIM (Wang et al. 2004) inside
  the joint mask, globally and as searchlight maps in a sphere (default 3 mm radius).
* **QC table** — one row per acquisition from its ``*_desc-qc_metrics.json`` (status, warnings,
  phase units, one column per metric value; :func:`qc_table`), and ROI means ± SD per site (or
  per vendor when there is one site) for the pivoted summary of the report (:func:`roi_by_group`).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

#: entity order of qsmprep file names
ENTITY_KEYS = ("sub", "ses", "acq", "run")
SCAN_COLUMNS = ("participant_id", "session", "acq", "run", "scan", "site", "vendor", "age", "sex")
_QC_RE = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?(?:_acq-[^_]+)?(?:_run-[^_]+)?)_desc-qc_metrics\.json$")
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


# ----------------------------------------------------------------------------- SSIM, RMSE

def ssim_map(a, b, *, data_range, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Structural similarity map (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004;13:600–612).

    Gaussian-weighted local statistics (σ = 1.5 voxels, as in the paper), population
    (co)variances, ``C1 = (k1·L)²``, ``C2 = (k2·L)²`` with ``L = data_range``.  Equal to
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, full=True)`` (tested).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")

    def blur(img):
        return ndimage.gaussian_filter(img, sigma=sigma, truncate=truncate, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ball(radius_mm, voxel_size):
    """Boolean sphere footprint of ``radius_mm`` for anisotropic voxels (centre included)."""
    vs = np.asarray(voxel_size, dtype=float)[:3]
    half = np.floor(radius_mm / vs + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * v for h, v in zip(half, vs)], indexing="ij")
    return sum(g * g for g in grids) <= radius_mm ** 2 + 1e-9


def searchlight_agreement(a, b, mask, voxel_size, *, radius_mm=3.0, data_range, k1=0.01, k2=0.03):
    """Local RMSE and SSIM of two maps in a sphere of ``radius_mm`` around every mask voxel.

    Only voxels inside ``mask`` enter a sphere's statistics (uniform weights, population
    moments), so the brain edge does not mix in the zeros outside the brain.  Returns
    ``(rmse_map, ssim_map)``, NaN outside the mask.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = np.asarray(mask, dtype=bool) & np.isfinite(a) & np.isfinite(b)
    a = np.where(m, a, 0.0)
    b = np.where(m, b, 0.0)
    fp = ball(radius_mm, voxel_size).astype(np.float64)

    def local_sum(img):
        return ndimage.convolve(img, fp, mode="constant", cval=0.0)

    count = local_sum(m.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(count > 0, 1.0 / count, np.nan)
        mse = local_sum((a - b) ** 2) * inv
        mu_a, mu_b = local_sum(a) * inv, local_sum(b) * inv
        var_a = local_sum(a * a) * inv - mu_a ** 2
        var_b = local_sum(b * b) * inv - mu_b ** 2
        cov = local_sum(a * b) * inv - mu_a * mu_b
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    rmse = np.sqrt(np.maximum(mse, 0.0))
    rmse[~m] = np.nan
    ssim[~m] = np.nan
    return rmse.astype(np.float32), ssim.astype(np.float32)


def voxelwise_agreement(a, b, mask, voxel_size, *, window=(-0.1, 0.2), radius_mm=3.0):
    """Global RMSE and SSIM of two coregistered χ maps inside ``mask``, plus searchlight maps.

    χ is clipped to ``window`` (ppm) before SSIM so that veins, calcifications and the odd
    edge voxel do not set the dynamic range; ``data_range = window[1] − window[0]``.  The
    global SSIM is the mean of the Gaussian SSIM map over the mask; RMSE is on unclipped χ.
    """
    m = np.asarray(mask, dtype=bool) & np.isfinite(a) & np.isfinite(b)
    if not m.any():
        raise ValueError("the two maps share no voxel inside the mask")
    lo, hi = window
    ac = np.clip(np.where(m, a, 0.0), lo, hi)
    bc = np.clip(np.where(m, b, 0.0), lo, hi)
    data_range = hi - lo
    smap = ssim_map(ac, bc, data_range=data_range)
    rmse_g = float(np.sqrt(np.mean((np.asarray(a, float)[m] - np.asarray(b, float)[m]) ** 2)))
    rmse_sl, ssim_sl = searchlight_agreement(ac, bc, m, voxel_size, radius_mm=radius_mm, data_range=data_range)
    return {"n_voxels": int(m.sum()), "rmse": rmse_g, "ssim": float(smap[m].mean()),
            "rmse_searchlight": rmse_sl, "ssim_searchlight": ssim_sl, "data_range": data_range}


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


# ----------------------------------------------------------------------------- ROI means by site/vendor

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


# ----------------------------------------------------------------------------- QC metrics

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
