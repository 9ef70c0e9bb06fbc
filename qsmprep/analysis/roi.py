"""Region-of-interest statistics of χ and R2* maps from a label image (atlas or segmentation).

Everything here is pure numpy/scipy on arrays in voxel order; the registration that brings
labels into the GRE grid lives in :mod:`qsmprep.anat`.

Conventions of the ROI table (``desc-<atlas>_roistats.tsv``, one row per label and map):

* **Partial voxels.** Labels arrive in the GRE grid by nearest-neighbour resampling, so a
  voxel belongs to the label found at its centre; boundary voxels mix tissues (partial
  volume and, after registration, sub-voxel misalignment).  With ``erode_voxels=n`` each
  label is eroded by ``n`` voxels (6-connected) before the statistics, so only voxels whose
  face neighbours all carry the same label are used.  Labels that erosion would remove
  entirely are kept un-eroded (``eroded`` column 0) rather than dropped.
* **Mask edge.** Voxels of a label outside the QSM mask (or with a non-finite value) are
  excluded and counted in ``n_excluded``; ``n_voxels`` counts the voxels actually used.
* ``volume_mm3 = n_voxels × voxel volume``; ``mass = mean × volume_mm3`` (ppm·mm³ for χ),
  i.e. the sum of the map over the measured voxels times the voxel volume: the
  atlas-independent "content" measure (e.g. total iron-related susceptibility of a nucleus),
  insensitive to how generously an atlas draws a region's boundary into tissue with χ ≈ 0.
* ``std`` is the sample standard deviation (ddof = 1), ``iqr = p75 − p25``; percentiles use
  linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

import csv
import json
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Columns of the ROI table, in order.
ROISTATS_COLUMNS = (
    "label", "name", "hemisphere", "roi", "map", "units", "n_voxels", "n_excluded", "eroded",
    "volume_mm3", "mean", "median", "std", "iqr", "p5", "p95", "mass",
)
#: Canonical seed ROIs every table can express (see ``qsmprep/data/roi_seeds.json``).
SEED_ROIS = (
    "globus pallidus", "putamen", "caudate", "hippocampus", "thalamus", "red nucleus",
    "substantia nigra", "dentate", "cuneus", "precuneus", "precentral gyrus", "superior frontal gyrus",
)

_HEMI_PATTERNS = (
    # (regex on the raw name, hemisphere); the matched token is removed from the name
    (re.compile(r"^(left|lh|l)(?=[\s_\-.]|$)", re.I), "L"),
    (re.compile(r"^(right|rh|r)(?=[\s_\-.]|$)", re.I), "R"),
    (re.compile(r"(?<=[\s_\-.])(left|lh|l)$", re.I), "L"),
    (re.compile(r"(?<=[\s_\-.])(right|rh|r)$", re.I), "R"),
    (re.compile(r"(?<=[\s_\-.])(left|lh)(?=[\s_\-.])", re.I), "L"),
    (re.compile(r"(?<=[\s_\-.])(right|rh)(?=[\s_\-.])", re.I), "R"),
)
_HEMI_WORDS = {"l": "L", "left": "L", "lh": "L", "r": "R", "right": "R", "rh": "R",
               "b": "", "bilateral": "", "": "", "n/a": "", "none": "", "m": "", "midline": ""}


def parse_hemisphere(name):
    """Split a label name into (base name, hemisphere ``"L"``, ``"R"`` or ``""``).

    Understands ``Left-Putamen`` (FreeSurfer aseg), ``ctx-lh-precuneus`` (aparc),
    ``Left Caudate`` (Harvard-Oxford), ``left-red-nucleus`` (MASSP), ``caudate L`` and
    ``caudate_R``.

    >>> parse_hemisphere("ctx-rh-superiorfrontal")
    ('ctx superiorfrontal', 'R')
    >>> parse_hemisphere("Left-Thalamus-Proper")
    ('Thalamus Proper', 'L')
    >>> parse_hemisphere("red nucleus L")
    ('red nucleus', 'L')
    >>> parse_hemisphere("Brainstem")
    ('Brainstem', '')
    """
    text = str(name).strip()
    for pattern, hemi in _HEMI_PATTERNS:
        if pattern.search(text):
            text = pattern.sub(" ", text, count=1)
            return _clean(text), hemi
    return _clean(text), ""


def _clean(text):
    return re.sub(r"\s+", " ", re.sub(r"[_\-.,()/]+", " ", text)).strip()


@lru_cache(maxsize=1)
def _seed_patterns():
    data = json.loads((Path(__file__).resolve().parent.parent / "data" / "roi_seeds.json").read_text())
    return tuple(
        (seed, tuple(re.compile(rf"^(ctx )?({p})$", re.I) for p in patterns))
        for seed, patterns in data["Seeds"].items()
    )


def canonical_roi(name):
    """Seed ROI name (one of :data:`SEED_ROIS`) of a look-up-table name, or ``""``.

    >>> canonical_roi("Left-Pallidum"), canonical_roi("ctx-lh-precuneus"), canonical_roi("Right Cuneal Cortex")
    ('globus pallidus', 'precuneus', 'cuneus')
    >>> canonical_roi("left-dentate-gyrus")   # hippocampal, not the cerebellar dentate nucleus
    ''
    """
    base = parse_hemisphere(name)[0].lower()
    for seed, patterns in _seed_patterns():
        if any(p.match(base) for p in patterns):
            return seed
    return ""


def read_lut(path):
    """Read a label look-up table: ``{label: (name, hemisphere)}``.

    Accepts a BIDS ``dseg.tsv`` (columns ``index`` and ``name``, optionally ``hemisphere``),
    a FreeSurfer colour table (``index name R G B A`` lines, ``#`` comments) or a JSON object
    ``{"<index>": "<name>"}`` / ``{"<index>": {"name": ..., "hemisphere": ...}}``.  Where no
    hemisphere column is given it is parsed from the name (:func:`parse_hemisphere`).
    """
    path = Path(path)
    text = path.read_text()
    lut = {}
    if path.suffix == ".json":
        for key, value in json.loads(text).items():
            if isinstance(value, dict):
                name, hemi = value.get("name", str(key)), value.get("hemisphere")
            else:
                name, hemi = str(value), None
            lut[int(key)] = _entry(name, hemi)
        return lut
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and "\t" in lines[0] and "index" in [c.strip().lower() for c in lines[0].split("\t")]:
        rows = csv.DictReader(lines, delimiter="\t")
        for row in rows:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("index"):
                continue
            hemi = row.get("hemisphere")
            lut[int(float(row["index"]))] = _entry(row.get("name") or row["index"], hemi)
        return lut
    for ln in lines:  # FreeSurfer colour table
        parts = ln.split()
        if len(parts) >= 2 and re.fullmatch(r"-?\d+", parts[0]):
            lut[int(parts[0])] = _entry(parts[1], None)
    if not lut:
        raise ValueError(f"{path}: not a label look-up table (dseg.tsv, FreeSurfer LUT or JSON)")
    return lut


def _entry(name, hemi):
    name = str(name).strip()
    hemi = "" if hemi is None else str(hemi).strip()
    if hemi.lower() in ("", "n/a"):
        return name, parse_hemisphere(name)[1]
    return name, _HEMI_WORDS.get(hemi.lower(), hemi)


def erode_labels(labels, iterations=1):
    """Erode every label of an integer image by ``iterations`` voxels (6-connectivity).

    A voxel keeps its label only if its six face neighbours carry the same label (voxels
    outside the array count as different).  Removed voxels become 0.

    Parameters
    ----------
    labels : ndarray of int, 3D
    iterations : int
        Number of one-voxel erosions (0 returns a copy).

    Returns
    -------
    ndarray
        The eroded label image (same dtype).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    out = np.array(labels, copy=True)
    for _ in range(int(iterations)):
        keep = out != 0
        for axis in range(out.ndim):
            n = out.shape[axis]
            lo = [slice(None)] * out.ndim
            hi = [slice(None)] * out.ndim
            lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
            same = out[tuple(lo)] == out[tuple(hi)]
            keep[tuple(lo)] &= same
            keep[tuple(hi)] &= same
            edge = [slice(None)] * out.ndim
            edge[axis] = 0
            keep[tuple(edge)] = False
            edge[axis] = n - 1
            keep[tuple(edge)] = False
        out[~keep] = 0
    return out


def _stats(values, voxel_volume):
    n = values.size
    if n == 0:
        nan = float("nan")
        return {"volume_mm3": 0.0, "mean": nan, "median": nan, "std": nan, "iqr": nan, "p5": nan,
                "p95": nan, "mass": nan}
    v = values.astype(np.float64, copy=False)
    p5, p25, p50, p75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    mean = float(v.mean())
    volume = n * voxel_volume
    return {
        "volume_mm3": float(volume), "mean": mean, "median": float(p50),
        "std": float(v.std(ddof=1)) if n > 1 else 0.0, "iqr": float(p75 - p25),
        "p5": float(p5), "p95": float(p95), "mass": mean * volume,
    }


def roi_statistics(maps, labels, *, voxel_size, lut=None, mask=None, erode_voxels=0, units=None,
                   include=None, keep_unlisted=True):
    """Per-label statistics of one or more maps.

    Parameters
    ----------
    maps : dict of str to ndarray
        Maps with the shape of ``labels``, e.g. ``{"chi": chi_ppm, "r2star": r2s}``.
    labels : ndarray of int
        Label image in the same grid (0 = background, never reported).
    voxel_size : sequence of 3 float
        Voxel size (mm), for volumes and mass.
    lut : dict, optional
        ``{label: (name, hemisphere)}`` (:func:`read_lut`); names default to ``"label <n>"``.
    mask : ndarray of bool, optional
        Voxels where the maps are valid (the QSM mask); label voxels outside it are excluded
        and counted in ``n_excluded``.
    erode_voxels : int
        Erode each label by this many voxels first (partial-volume guard, see module notes).
    units : dict of str to str, optional
        Units per map for the ``units`` column.
    include : iterable of int, optional
        Report only these labels (in this order); labels absent from the image get a row
        with ``n_voxels = 0`` and NaN statistics.
    keep_unlisted : bool
        Also report labels present in the image but missing from ``lut``.

    Returns
    -------
    list of dict
        One row per (label, map) with the keys of :data:`ROISTATS_COLUMNS`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.allclose(labels, np.rint(labels)):
            raise ValueError("labels must hold integer values")
        labels = np.rint(labels).astype(np.int32)
    if len(voxel_size) != 3 or any(not (float(v) > 0) for v in voxel_size):
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    if int(erode_voxels) != erode_voxels or erode_voxels < 0:
        raise ValueError(f"erode_voxels must be a non-negative integer, got {erode_voxels}")
    for key, arr in maps.items():
        if np.shape(arr) != labels.shape:
            raise ValueError(f"map {key!r} has shape {np.shape(arr)}, labels have {labels.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != labels.shape:
            raise ValueError(f"mask has shape {mask.shape}, labels have {labels.shape}")
    lut = dict(lut or {})
    units = dict(units or {})
    voxel_volume = float(np.prod([float(v) for v in voxel_size]))

    present = np.unique(labels)
    present = [int(v) for v in present if v != 0]
    if include is not None:
        wanted = [int(v) for v in include if int(v) != 0]
    else:
        wanted = [v for v in present if keep_unlisted or v in lut]

    eroded_img = erode_labels(labels, erode_voxels) if erode_voxels else labels
    eroded_present = set(np.unique(eroded_img).tolist()) if erode_voxels else set(present)
    # labels that erosion removes entirely are measured un-eroded
    work = eroded_img
    fallback = [v for v in wanted if v in present and v not in eroded_present]
    if erode_voxels and fallback:
        work = eroded_img.copy()
        sel = np.isin(labels, fallback)
        work[sel] = labels[sel]

    flat_labels = work.ravel()
    in_roi = np.flatnonzero(np.isin(flat_labels, wanted))
    lab = flat_labels[in_roi]
    valid = np.ones(in_roi.size, dtype=bool) if mask is None else mask.ravel()[in_roi]
    map_vals = {}
    for key, arr in maps.items():
        vals = np.asarray(arr).ravel()[in_roi]
        map_vals[key] = vals
    # a voxel is used when it is in the mask and every map is finite there
    for vals in map_vals.values():
        valid &= np.isfinite(vals)
    order = np.argsort(lab, kind="stable")
    lab_sorted = lab[order]
    starts = np.searchsorted(lab_sorted, wanted, side="left")
    ends = np.searchsorted(lab_sorted, wanted, side="right")

    rows = []
    for value, start, end in zip(wanted, starts, ends):
        idx = order[start:end]
        use = idx[valid[idx]]
        name, hemi = lut.get(value, (f"label {value}", ""))
        for key, vals in map_vals.items():
            row = {
                "label": value, "name": name, "hemisphere": hemi, "roi": canonical_roi(name),
                "map": key, "units": units.get(key, ""), "n_voxels": int(use.size),
                "n_excluded": int(idx.size - use.size),
                "eroded": int(erode_voxels) if value not in fallback else 0,
            }
            row.update(_stats(vals[use], voxel_volume))
            rows.append(row)
    return rows


def _fmt(value):
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.6g}"
    return "n/a" if value in ("", None) else str(value)


def write_roistats(rows, path, columns=ROISTATS_COLUMNS):
    """Write rows of :func:`roi_statistics` (or of another table, with its ``columns``) as a
    BIDS-style TSV (``n/a`` for missing)."""
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(_fmt(row.get(col, "")) for col in columns))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def read_roistats(path):
    """Read a ROI table written by :func:`write_roistats` (numbers as float/int, ``n/a`` → NaN/"")."""
    ints = {"label", "n_voxels", "n_excluded", "eroded"}
    floats = {"volume_mm3", "mean", "median", "std", "iqr", "p5", "p95", "mass"}
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out = {}
            for key, value in row.items():
                if key in ints:
                    out[key] = int(value)
                elif key in floats:
                    out[key] = float("nan") if value == "n/a" else float(value)
                else:
                    out[key] = "" if value == "n/a" else value
            rows.append(out)
    return rows


def lateralize(labels, affine, lut, *, offset=1000, midline_x=0.0):
    """Split labels without a hemisphere into left/right by the sign of world x (RAS).

    For atlases in a template space whose midline is x = 0 (MNI): a label ``n`` with
    hemisphere ``""`` keeps ``n`` (and becomes ``L``) where x < ``midline_x`` and becomes
    ``n + offset`` (``R``) where x ≥ ``midline_x``.

    Returns
    -------
    (ndarray, dict)
        The new label image and look-up table.
    """
    labels = np.asarray(labels)
    affine = np.asarray(affine, dtype=float)
    if int(offset) <= (int(labels.max()) if labels.size else 0):
        raise ValueError(f"offset must exceed the largest label ({labels.max()}), got {offset}")
    ii = np.arange(labels.shape[0], dtype=np.float64)[:, None, None]
    jj = np.arange(labels.shape[1], dtype=np.float64)[None, :, None]
    kk = np.arange(labels.shape[2], dtype=np.float64)[None, None, :]
    x = affine[0, 0] * ii + affine[0, 1] * jj + affine[0, 2] * kk + affine[0, 3]
    right = x >= midline_x
    out = labels.astype(np.int32, copy=True)
    new_lut = {}
    for value, (name, hemi) in lut.items():
        if hemi or value == 0:
            new_lut[value] = (name, hemi)
            continue
        new_lut[value] = (name, "L")
        new_lut[value + int(offset)] = (name, "R")
        out[(labels == value) & right] = value + int(offset)
    return out, new_lut
