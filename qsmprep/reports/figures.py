"""Report figures (matplotlib, Agg backend, PNG): mosaics, registration check, group plots.

Display convention of every mosaic: **neurological** (the subject's left on the image's left).
Images are first reoriented to the closest RAS axes (``nibabel.as_closest_canonical``), and a
slice of the RAS array is drawn with its first remaining axis to the right and its second
upwards (:func:`display_slice`, ``origin="lower"``), so that:

* axial slices are seen from above: subject's right on the right, anterior at the top;
* coronal slices are seen from behind: subject's right on the right, superior at the top;
* sagittal slices are seen from the subject's right: anterior on the right, superior at the top.

Every panel carries the anatomical letters of its four edges (:func:`edge_letters`), so a
reader never has to trust this paragraph.  Voxel aspect ratios are honoured.  No axis of any
figure uses matplotlib's offset notation (``+1e-1``): χ values are printed in full.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: fixed display windows (so figures are comparable between subjects and sites)
CHI_WINDOW = (-0.15, 0.15)       # ppm
FIELD_WINDOW = (-0.05, 0.05)     # ppm
R2STAR_WINDOW = (0.0, 60.0)      # 1/s
CHISEP_WINDOW = (0.0, 0.15)      # ppm: χ⁺ and |χ⁻|
VIEWS = ("axial", "coronal", "sagittal")
#: the axis (of a RAS array) held fixed by each view
VIEW_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
RAS = ("R", "A", "S")
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
#: a sentence for captions: the convention the mosaics are drawn in
CONVENTION = ("Neurological display: the subject's left is on the image's left (axial seen from above, "
              "coronal from behind); letters mark each panel's edges.")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _outlined(color="white", width=2.0):
    """Text style readable on any background: white letters with a black outline."""
    from matplotlib import patheffects

    return {"color": color, "path_effects": [patheffects.withStroke(linewidth=width, foreground="black")]}


def no_offset(fig):
    """Switch off the offset notation (``+1e-1`` beside the ticks) on every numeric axis of ``fig``,
    so that χ ticks read ``0.10015`` rather than ``1.5e-4 +1e-1``.

    Call after plotting (formatters are per axis); categorical axes are left alone.
    """
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            fmt = axis.get_major_formatter()
            if isinstance(fmt, ScalarFormatter):
                fmt.set_useOffset(False)
    return fig


def canonical(img):
    """Data (float32) and voxel sizes of ``img`` reoriented to the closest RAS axes."""
    data, zooms, _ = canonical_with_affine(img)
    return data, zooms


def canonical_with_affine(img):
    """Like :func:`canonical`, also returning the affine of the reoriented image (for mm labels)."""
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return data, np.asarray(can.header.get_zooms()[:3], dtype=float), can.affine


def edge_letters(axcodes, view):
    """Anatomical letters at the ``left``, ``right``, ``bottom`` and ``top`` edges of a displayed slice.

    ``axcodes``: the orientation of the array's axes (``nibabel.aff2axcodes``; ``("R", "A", "S")``
    after :func:`canonical`), each letter naming where that axis' indices *increase* towards.
    ``view``: ``axial``, ``coronal`` or ``sagittal`` — which array axis is held fixed is found from
    ``axcodes`` (the axis along S/I, A/P or L/R), and the slice is laid out as :func:`display_slice`
    does (first remaining axis to the right, second upwards).
    """
    codes = tuple(str(c).upper() for c in axcodes)
    family = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}[view]
    fixed = next(i for i, c in enumerate(codes) if c in family)
    horiz, vert = (codes[i] for i in range(3) if i != fixed)
    return {"left": _OPPOSITE[horiz], "right": horiz, "bottom": _OPPOSITE[vert], "top": vert}


def display_convention(axcodes=RAS):
    """``neurological`` when axial slices drawn from an array of ``axcodes`` have the subject's left
    on the image's left, else ``radiological``."""
    return "neurological" if edge_letters(axcodes, "axial")["left"] == "L" else "radiological"


def _extent(mask, axis, n):
    """``n`` slice indices spread over the part of ``axis`` where ``mask`` has voxels."""
    other = tuple(i for i in range(3) if i != axis)
    present = np.flatnonzero(mask.any(axis=other))
    if present.size == 0:
        present = np.arange(mask.shape[axis])
    lo, hi = present[0], present[-1]
    return np.unique(np.round(np.linspace(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo), n)).astype(int))


def display_slice(vol, axis, index):
    """The 2-D array drawn for slice ``index`` along ``axis`` (with ``imshow(origin="lower")``).

    Columns (left → right on screen) follow the first remaining axis, rows (bottom → top) the
    second: for a RAS array, axial ``[row = P→A, column = L→R]``.
    """
    sl = [slice(None)] * 3
    sl[axis] = index
    return vol[tuple(sl)].T


def _aspect(zooms, axis):
    rest = [zooms[i] for i in range(3) if i != axis]
    return rest[1] / rest[0]


def mosaic_figure(volume, zooms, *, vmin, vmax, cmap="gray", title="", cbar_label=None, contour=None,
                  edges=None, n_slices=6, extent_mask=None, affine=None):
    """The matplotlib figure of :func:`mosaic` (not saved; the caller closes it)."""
    plt = _plt()
    select = extent_mask if extent_mask is not None else (contour if contour is not None else volume != 0)
    fig, axes = plt.subplots(3, n_slices, figsize=(1.9 * n_slices + 1.2, 6.0), facecolor="black",
                             gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    axes = np.asarray(axes).reshape(3, n_slices)
    label_style = _outlined()
    image = None
    for row, view in enumerate(VIEWS):
        axis = VIEW_AXES[view]
        letters = edge_letters(RAS, view)
        picks = _extent(np.asarray(select, bool), axis, n_slices)
        for col in range(n_slices):
            ax = axes[row, col]
            ax.set_facecolor("black")
            ax.axis("off")
            if col >= len(picks):
                continue
            k = picks[col]
            image = ax.imshow(display_slice(volume, axis, k), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                              aspect=_aspect(zooms, axis), interpolation="nearest")
            if contour is not None:
                c = display_slice(np.asarray(contour, np.float32), axis, k)
                if c.any() and not c.all():
                    ax.contour(c, levels=[0.5], colors="red", linewidths=0.6)
            if edges is not None:
                e = display_slice(np.asarray(edges, bool), axis, k)
                overlay = np.zeros(e.shape + (4,), np.float32)
                overlay[e] = (0.0, 1.0, 1.0, 0.9)
                ax.imshow(overlay, origin="lower", aspect=_aspect(zooms, axis), interpolation="nearest")
            for edge, (x, y, ha, va) in {"left": (0.02, 0.5, "left", "center"),
                                         "right": (0.98, 0.5, "right", "center"),
                                         "bottom": (0.5, 0.02, "center", "bottom"),
                                         "top": (0.5, 0.98, "center", "top")}.items():
                ax.text(x, y, letters[edge], fontsize=7, fontweight="bold", ha=ha, va=va, transform=ax.transAxes,
                        gid=f"orientation-{edge}", **label_style)
            ax.text(0.02, 0.02, _slice_label(axis, k, affine, volume.shape), fontsize=6.5, ha="left", va="bottom",
                    transform=ax.transAxes, gid="slice-label", **label_style)
            if col == 0:
                ax.text(0.02, 0.98, view, fontsize=8, va="top", transform=ax.transAxes, gid="view-label",
                        **label_style)
    convention = display_convention(RAS)
    side = "left on the left" if convention == "neurological" else "left on the right"
    full_title = f"{title} — {convention} display ({side})" if title else f"{convention} display ({side})"
    fig.suptitle(full_title, color="white", fontsize=11)
    if cbar_label and image is not None:
        cax = fig.add_axes([0.92, 0.2, 0.012, 0.6])
        cbar = fig.colorbar(image, cax=cax)
        cbar.set_label(cbar_label, color="white")
        cbar.ax.tick_params(colors="white", labelsize=8)
    fig.subplots_adjust(left=0.01, right=0.9 if cbar_label else 0.99, top=0.93, bottom=0.01)
    no_offset(fig)
    return fig


def _slice_label(axis, index, affine, shape):
    """``z = 12 mm`` (world coordinate of the slice's centre, RAS affine) or ``z 23`` (voxel index)."""
    name = "xyz"[axis]
    if affine is None:
        return f"{name} {index}"
    centre = [(n - 1) / 2 for n in shape[:3]] + [1.0]
    centre[axis] = index
    mm = (np.asarray(affine, float) @ np.asarray(centre))[axis]
    return f"{name} = {mm:.0f} mm"


def mosaic(out_png, volume, zooms, *, vmin, vmax, cmap="gray", title="", cbar_label=None, contour=None,
           edges=None, n_slices=6, extent_mask=None, affine=None):
    """Three rows (axial, coronal, sagittal) of ``n_slices`` slices of a RAS volume → PNG.

    ``contour``: boolean volume drawn as a red outline (e.g. the brain mask); ``edges``: a
    boolean volume drawn as cyan voxels (e.g. T1w edges for the registration check);
    ``affine``: the RAS affine (slice positions printed in mm rather than as indices).
    Every panel has its orientation letters; the title states the display convention.
    """
    plt = _plt()
    fig = mosaic_figure(volume, zooms, vmin=vmin, vmax=vmax, cmap=cmap, title=title, cbar_label=cbar_label,
                        contour=contour, edges=edges, n_slices=n_slices, extent_mask=extent_mask, affine=affine)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80, facecolor="black")
    plt.close(fig)
    return str(out_png)


def edge_map(volume, mask=None):
    """Boolean edges of an anatomical image: Canny per axial slice on the intensity-normalised image."""
    from skimage.feature import canny

    vol = np.asarray(volume, dtype=np.float32)
    finite = vol[np.isfinite(vol)]
    hi = np.percentile(finite, 99.5) if finite.size else 1.0
    vol = np.clip(vol / (hi or 1.0), 0, 1)
    edges = np.zeros(vol.shape, bool)
    for k in range(vol.shape[2]):
        if vol[..., k].any():
            edges[..., k] = canny(vol[..., k], sigma=1.5, low_threshold=0.05, high_threshold=0.15)
    if mask is not None:
        from scipy import ndimage

        edges &= ndimage.binary_dilation(np.asarray(mask, bool), iterations=3)
    return edges


# ----------------------------------------------------------------------------- group plots

#: a box (quartiles, whiskers) is drawn for a group only from this many scans on; below it, the
#: points with their mean (a strip plot) — a box of two points pretends to show a distribution
MIN_SCANS_FOR_BOX = 3


def group_plot_kind(n_values):
    """``"box"`` for a group of at least :data:`MIN_SCANS_FOR_BOX` values, else ``"strip"``."""
    return "box" if n_values >= MIN_SCANS_FOR_BOX else "strip"


MAP_LABELS = {"chi": "χ", "r2star": "R2*", "t2star": "T2*", "r2prime": "R2′"}


def map_label(mapname, units=""):
    """``χ (ppm)`` for ``chi`` with units ``ppm``."""
    label = MAP_LABELS.get(str(mapname), str(mapname))
    return f"{label} ({units})" if units else label


def roi_plot_figure(long, *, atlas, mapname, by="site", stat="mean", units="", roi_labels=None):
    """Figure of :func:`roi_plots` (or None without data); the caller closes it."""
    plt = _plt()
    data = long[(long["atlas"] == atlas) & (long["map"] == mapname)].dropna(subset=[stat])
    rois = sorted(data["roi_key"].unique())
    if not rois:
        return None
    ncol = min(4, len(rois))
    nrow = math.ceil(len(rois) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    groups = sorted(data[by].astype(str).unique())
    rng = np.random.default_rng(0)  # jitter, the same in every run
    for ax, roi in zip(axes.ravel(), rois):
        sub = data[data["roi_key"] == roi]
        for i, group in enumerate(groups, start=1):
            v = sub[sub[by].astype(str) == group][stat].to_numpy(float)
            if v.size == 0:
                continue
            if group_plot_kind(v.size) == "box":
                ax.boxplot([v], positions=[i], widths=0.5, showfliers=False, manage_ticks=False,
                           boxprops={"gid": "box"}, medianprops={"color": "C1"})
            else:
                ax.plot([i - 0.25, i + 0.25], [v.mean()] * 2, color="k", lw=1.5, gid="mean")
            ax.plot(i + rng.uniform(-0.12, 0.12, v.size), v, "o", ms=3.5, alpha=0.75, color=f"C{(i - 1) % 10}",
                    gid="points")
        ax.set_xticks(range(1, len(groups) + 1))
        ax.set_xticklabels(groups, rotation=30 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center")
        ax.set_xlim(0.4, len(groups) + 0.6)
        ax.set_title((roi_labels or {}).get(roi, roi), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylabel(map_label(mapname, units), fontsize=8)
    for ax in axes.ravel()[len(rois):]:
        ax.axis("off")
    fig.suptitle(f"{atlas}: ROI {stat} of {map_label(mapname)} by {by} (box: ≥ {MIN_SCANS_FOR_BOX} scans; "
                 "line: mean)", fontsize=10)
    fig.tight_layout()
    no_offset(fig)
    return fig


def roi_plots(out_png, long, *, atlas, mapname, by="site", stat="mean", units="", roi_labels=None):
    """One panel per ROI: the ROI ``stat`` of every scan by ``by`` (site or vendor).

    Each group is a box plot when it has at least :data:`MIN_SCANS_FOR_BOX` scans, else a strip
    plot (the points with a line at their mean); the points are always drawn, with jitter.
    """
    plt = _plt()
    fig = roi_plot_figure(long, atlas=atlas, mapname=mapname, by=by, stat=stat, units=units, roi_labels=roi_labels)
    if fig is None:
        return None
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return str(out_png)


def bland_altman_figure(points, stats_row, *, title="", units=""):
    """Figure of :func:`bland_altman_plot`; the caller closes it."""
    plt = _plt()
    a, b = points["value_first"].to_numpy(float), points["value_second"].to_numpy(float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for roi, sub in points.groupby("roi_key", sort=True):
        sa, sb = sub["value_first"].to_numpy(float), sub["value_second"].to_numpy(float)
        ax1.plot((sa + sb) / 2, sb - sa, "o", ms=4, label=roi)
        ax2.plot(sa, sb, "o", ms=4, label=roi)
    for y, style in ((stats_row["ba_mean_diff"], "-"), (stats_row["ba_loa_lower"], "--"),
                     (stats_row["ba_loa_upper"], "--")):
        ax1.axhline(y, color="k", ls=style, lw=1)
    ax1.set_xlabel(f"mean of the two scans {units}")
    ax1.set_ylabel(f"second − first {units}")
    ax1.set_title(f"Bland–Altman: bias {stats_row['ba_mean_diff']:.4g}, 95% LoA "
                  f"[{stats_row['ba_loa_lower']:.4g}, {stats_row['ba_loa_upper']:.4g}]", fontsize=9)
    lo, hi = np.nanmin(np.r_[a, b]), np.nanmax(np.r_[a, b])
    pad = 0.05 * (hi - lo or 1.0)
    xs = np.array([lo - pad, hi + pad])
    ax2.plot(xs, xs, color="0.6", lw=1, label="identity")
    ax2.plot(xs, stats_row["deming_intercept"] + stats_row["deming_slope"] * xs, "k-", lw=1, label="Deming")
    ax2.set_xlabel(f"first {units}")
    ax2.set_ylabel(f"second {units}")
    ax2.set_title(f"Deming slope {stats_row['deming_slope']:.3f}, intercept {stats_row['deming_intercept']:.3g}, "
                  f"r {stats_row['pearson_r']:.3f}", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    no_offset(fig)
    return fig


def bland_altman_plot(out_png, points, stats_row, *, title="", units=""):
    """Bland–Altman plot of paired ROI values (difference vs mean) with bias and 95% limits,
    next to the scatter of second vs first scan with the identity and Deming lines."""
    plt = _plt()
    fig = bland_altman_figure(points, stats_row, title=title, units=units)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return str(out_png)
