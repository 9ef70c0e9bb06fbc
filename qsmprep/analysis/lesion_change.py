"""Longitudinal lesion change: lesions matched across sessions, % change of mean lesional χ.

For cavernous malformations, a rise of the mean lesional χ between yearly scans marks a new
haemorrhage (6 % in the follow-up studies of this project's issue 20); the study tracks the
% change per patient-year.  For each participant with two or more sessions:

1. **Common space.** Each later session's T1w (raw dataset) is registered rigidly to the
   first session's (antspyx, Mattes mutual information, from the scanner coordinates); every
   session's numbered lesion map (``desc-lesions_dseg``, GRE grid) is brought into the first
   session's T1w through its GRE→T1w coregistration and that rigid transform (nearest
   neighbour).
2. **Matching** (:func:`match_lesions`): by voxel overlap in that space, greedily from the
   largest overlap, one to one; lesions without overlap are ``new`` / ``not-found``.
3. **Change** (:func:`lesion_change_rows`): the mean lesional χ of a lesion is its voxel-
   weighted ``chi_mean`` (portions pooled); % change = 100 (χ_later − χ_first) / |χ_first|,
   per year with the sessions' ``acq_time`` (``sub-<L>_sessions.tsv``).  χ is relative to the
   scan's reference (the sidecar's ``ReferenceRegion``), so a % change is only meaningful for
   a lesion whose χ is well away from that reference: below ``min_chi_ppm`` (0.05 ppm) the %
   change is reported but not flagged (``reason`` says so).  ``flagged`` marks an increase of
   at least ``threshold_pct``.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def match_lesions(first, later):
    """One-to-one matches of two numbered lesion maps on one grid, by overlap (greedy, largest first).

    Returns ``(pairs, new, missing)``: ``[(id_first, id_later, overlap voxels)]``, the later
    ids without a match and the first ids without one.
    """
    first, later = np.asarray(first, np.int64), np.asarray(later, np.int64)
    both = (first > 0) & (later > 0)
    pairs_flat = first[both] * (int(later.max(initial=0)) + 1) + later[both]
    keys, counts = np.unique(pairs_flat, return_counts=True)
    width = int(later.max(initial=0)) + 1
    order = np.argsort(-counts, kind="stable")
    used_a, used_b, pairs = set(), set(), []
    for k in order:
        a, b = int(keys[k] // width), int(keys[k] % width)
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        pairs.append((a, b, int(counts[k])))
    ids_a = set(np.unique(first[first > 0]).tolist())
    ids_b = set(np.unique(later[later > 0]).tolist())
    return sorted(pairs), sorted(ids_b - used_b), sorted(ids_a - used_a)


def lesion_means(table):
    """``{lesion_id: (mean lesional χ, voxels, input_name)}`` of one scan's lesion table."""
    out = {}
    for lid, grp in table.groupby("lesion_id"):
        n = grp["n_voxels"].astype(float)
        chi = grp["chi_mean"].astype(float)
        ok = np.isfinite(chi) & (n > 0)
        mean = float((n[ok] * chi[ok]).sum() / n[ok].sum()) if ok.any() else math.nan
        out[int(lid)] = (mean, int(n[ok].sum()), str(grp["input_name"].iloc[0]))
    return out


def _years(t0, t1):
    try:
        a, b = datetime.fromisoformat(str(t0)), datetime.fromisoformat(str(t1))
    except (TypeError, ValueError):
        return math.nan
    return (b - a).total_seconds() / (365.25 * 86400.0)


def lesion_change_rows(participant, first, later, pairs, new, missing, *, means_first, means_later,
                       acq_first=None, acq_later=None, threshold_pct=6.0, min_chi_ppm=0.05):
    """Rows of ``lesion_change.tsv`` for one pair of sessions (see module notes)."""
    years = _years(acq_first, acq_later)
    rows = []
    for a, b, overlap in pairs:
        c0, n0, name = means_first.get(a, (math.nan, 0, ""))
        c1, n1, _ = means_later.get(b, (math.nan, 0, ""))
        pct = 100.0 * (c1 - c0) / abs(c0) if np.isfinite(c0) and c0 != 0 else math.nan
        reason = ""
        if not np.isfinite(pct):
            reason = "no chi"
        elif abs(c0) < min_chi_ppm:
            reason = f"|chi| < {min_chi_ppm:g} ppm at {first}: % change not flagged"
        rows.append({"participant_id": participant, "first": first, "later": later, "lesion_first": a,
                     "lesion_later": b, "input_name": name, "overlap_voxels": overlap, "chi_first": c0,
                     "chi_later": c1, "voxels_first": n0, "voxels_later": n1, "pct_change": pct, "years": years,
                     "pct_change_per_year": pct / years if years and np.isfinite(years) and years > 0 else math.nan,
                     "flagged": bool(not reason and pct >= threshold_pct), "status": "matched", "reason": reason})
    for b in new:
        c1, n1, name = means_later.get(b, (math.nan, 0, ""))
        rows.append({"participant_id": participant, "first": first, "later": later, "lesion_first": math.nan,
                     "lesion_later": b, "input_name": name, "chi_later": c1, "voxels_later": n1, "years": years,
                     "flagged": False, "status": "new", "reason": "no overlapping lesion in the first session"})
    for a in missing:
        c0, n0, name = means_first.get(a, (math.nan, 0, ""))
        rows.append({"participant_id": participant, "first": first, "later": later, "lesion_first": a,
                     "lesion_later": math.nan, "input_name": name, "chi_first": c0, "voxels_first": n0,
                     "years": years, "flagged": False, "status": "not-found",
                     "reason": "no overlapping lesion in the later session"})
    return rows


CHANGE_COLUMNS = ("participant_id", "first", "later", "lesion_first", "lesion_later", "input_name", "status",
                  "overlap_voxels", "chi_first", "chi_later", "voxels_first", "voxels_later", "pct_change", "years",
                  "pct_change_per_year", "flagged", "reason")


def _session_dates(bids_dir, participant):
    path = Path(bids_dir) / participant / f"{participant}_sessions.tsv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path, sep="\t", dtype=str)
    if "acq_time" not in df or "session_id" not in df:
        return {}
    return {str(s).removeprefix("ses-"): t for s, t in zip(df["session_id"], df["acq_time"])}


def _t1w_of(bids_dir, participant, session):
    found = sorted((Path(bids_dir) / participant / f"ses-{session}" / "anat").glob(f"{participant}_ses-{session}*_T1w.nii*"))
    return found[0] if found else None


def longitudinal_lesion_change(out_dir, bids_dir, work_dir, *, participant_label=None, threshold_pct=6.0,
                               min_chi_ppm=0.05, num_threads=1, factors=None):
    """``lesion_change.tsv`` rows of every participant with lesion tables in two or more
    sessions (see module notes); ``work_dir`` holds the registrations.  ``factors``:
    ``{scan: calibration factor}`` applied to each session's lesional χ (sessions at two sites)."""
    from qsmprep.analysis.lesion_group import find_lesion_tables
    from qsmprep.anat.registration import apply_transforms, register

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    by_part = {}
    for path, ents in find_lesion_tables(out_dir, participant_label):
        if ents["session"] != "n/a":
            by_part.setdefault(ents["participant_id"], []).append((ents["session"], path))
    rows = []
    for part, scans in sorted(by_part.items()):
        scans.sort()
        if len(scans) < 2:
            continue
        dates = _session_dates(bids_dir, part)
        ref_ses, ref_path = scans[0]
        ref_t1w = _t1w_of(bids_dir, part, ref_ses)
        if ref_t1w is None:
            continue
        maps = {}
        for ses, path in scans:
            prefix = path.name.replace("_desc-lesions_lesionstats.tsv", "")
            lesion_map = path.with_name(f"{prefix}_desc-lesions_dseg.nii.gz")
            gre2t1w = path.with_name(f"{prefix}_from-GRE_to-T1w_mode-image_xfm.mat")
            transforms = [str(gre2t1w)]
            if ses != ref_ses:
                t1w = _t1w_of(bids_dir, part, ses)
                wdir = work_dir / f"{part}_ses-{ses}_to_ses-{ref_ses}"
                wdir.mkdir(parents=True, exist_ok=True)
                reg = register(str(ref_t1w), str(t1w), str(wdir / "t1w_"), stages=("rigid",), initialize="origin",
                               num_threads=num_threads)
                transforms = [str(gre2t1w), *reg["forward"]]
            out = work_dir / f"{part}_ses-{ses}_lesions_in_ses-{ref_ses}_T1w.nii.gz"
            apply_transforms(str(lesion_map), str(ref_t1w), transforms, out, interpolation="nearestNeighbor",
                             dtype="int16", num_threads=num_threads)
            table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
            if factors:
                table["chi_mean"] = table["chi_mean"].astype(float) * factors[prefix]
            maps[ses] = (np.asarray(nib.load(out).dataobj), table)
        first_map, first_table = maps[ref_ses]
        for ses, _ in scans[1:]:
            later_map, later_table = maps[ses]
            pairs, new, missing = match_lesions(first_map, later_map)
            rows += lesion_change_rows(part, f"ses-{ref_ses}", f"ses-{ses}", pairs, new, missing,
                                       means_first=lesion_means(first_table), means_later=lesion_means(later_table),
                                       acq_first=dates.get(ref_ses), acq_later=dates.get(ses),
                                       threshold_pct=threshold_pct, min_chi_ppm=min_chi_ppm)
    return pd.DataFrame(rows, columns=list(CHANGE_COLUMNS))


