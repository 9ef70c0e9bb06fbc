"""Group level of the lesion tables: relative χ per lesion type, tested against zero.

As in the MS QSM studies: per lesion type, the mean ± SD of the lesions' relative χ and a
one-sample t-test against zero twice — over lesions (every lesion one observation) and over
participants (each participant's lesions of the type averaged first, so that a participant
with many lesions does not dominate) — Bonferroni-corrected over the tests of one lesion
kind (the lesion dseg's name, e.g. "MS lesion"): its types × the two levels (6 for WM,
cortical and mixed lesions).

Types are the lesion classes (``wm``, ``cortical``, ``mixed``, ``other``).  A mixed lesion
enters as one observation: the voxel-weighted mean of its two portions' relative χ (each
against its own tissue).  Rows without a relative χ (``no-reference``) are left out and
counted.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

_LESIONSTATS_RE = re.compile(r"^(?P<prefix>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*?)_desc-lesions_lesionstats\.tsv$")


def find_lesion_tables(out_dir, participant_label=None):
    """``[(path, entities)]`` of the participants' ``*_desc-lesions_lesionstats.tsv`` (sorted)."""
    found = []
    for path in sorted(Path(out_dir).glob("sub-*/**/*_desc-lesions_lesionstats.tsv")):
        m = _LESIONSTATS_RE.match(path.name)
        if not m:
            continue
        ents = dict(part.split("-", 1) for part in m.group("prefix").split("_"))
        if participant_label and ents["sub"] not in participant_label:
            continue
        found.append((path, {"participant_id": f"sub-{ents['sub']}", "session": ents.get("ses", "n/a"),
                             "scan": m.group("prefix")}))
    return found


def load_lesion_table(out_dir, participant_label=None):
    """All lesion tables in one frame, with ``participant_id``, ``session`` and ``scan`` columns."""
    frames = []
    for path, ents in find_lesion_tables(out_dir, participant_label):
        df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        for key, value in ents.items():
            df.insert(0, key, value)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def lesion_observations(table):
    """One row per lesion with its relative χ (mixed lesions: the portions' voxel-weighted mean)."""
    if table.empty:
        return pd.DataFrame(columns=["participant_id", "scan", "lesion_id", "input_name", "class", "caution",
                                     "chi_relative"])
    ok = table[np.isfinite(table["chi_relative"].astype(float))].copy()
    ok["w"] = ok["portion_volume_mm3"].astype(float)
    ok["wx"] = ok["w"] * ok["chi_relative"].astype(float)
    caution = ok["chi_caution"] if "chi_caution" in ok else pd.Series("", index=ok.index)
    ok["caution"] = caution.fillna("").astype(str).str.strip().replace("n/a", "") != ""
    keys = ["participant_id", "scan", "lesion_id", "input_name", "class"]
    obs = ok.groupby(keys, sort=True).agg(wx=("wx", "sum"), w=("w", "sum"), caution=("caution", "any")).reset_index()
    obs["chi_relative"] = obs["wx"] / obs["w"]
    return obs.drop(columns=["wx", "w"])


def one_sample_t(values):
    """``(n, mean, sd, t, p)`` of a two-sided one-sample t-test against 0 (NaN for n < 2)."""
    from scipy import stats

    v = np.asarray(values, float)
    n = v.size
    if n < 2:
        return n, float(v.mean()) if n else math.nan, math.nan, math.nan, math.nan
    res = stats.ttest_1samp(v, 0.0)
    return n, float(v.mean()), float(v.std(ddof=1)), float(res.statistic), float(res.pvalue)


def lesion_group_stats(table):
    """Relative χ per lesion kind and type, tested against zero per lesion and per participant.

    Returns a frame: ``input_name, class, level (lesion | participant), n, mean, sd, t, p,
    m_tests, p_bonferroni`` (``p × m_tests``, at most 1; ``m_tests`` counts the tests of one
    lesion kind that could be computed) and ``n_caution``, the lesions of the row's type with a
    ``chi_caution`` (e.g. MEDI's magnitude-edge prior: their relative χ may be shrunk).
    """
    obs = lesion_observations(table)
    rows = []
    for (kind, cls), grp in obs.groupby(["input_name", "class"], sort=True):
        per_subject = grp.groupby("participant_id")["chi_relative"].mean()
        n_caution = int(grp["caution"].sum())
        for level, values in (("lesion", grp["chi_relative"]), ("participant", per_subject)):
            n, mean, sd, t, p = one_sample_t(values)
            rows.append({"input_name": kind, "class": cls, "level": level, "n": n, "mean": mean, "sd": sd,
                         "t": t, "p": p, "n_caution": n_caution})
    out = pd.DataFrame(rows, columns=["input_name", "class", "level", "n", "mean", "sd", "t", "p", "n_caution"])
    if out.empty:
        return out.assign(m_tests=[], p_bonferroni=[])
    m = out.groupby("input_name")["p"].transform(lambda p: int(np.isfinite(p).sum()))
    out["m_tests"] = m.astype(int)
    out["p_bonferroni"] = np.minimum(1.0, out["p"] * out["m_tests"])
    return out[["input_name", "class", "level", "n", "mean", "sd", "t", "p", "m_tests", "p_bonferroni", "n_caution"]]
