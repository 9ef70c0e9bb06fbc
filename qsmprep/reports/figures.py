"""Report figures (matplotlib, Agg backend, PNG): mosaics, registration check, group plots.

Slices are shown in neurological convention (subject left on the left) after reorienting to the closest
RAS axes (``nibabel.as_closest_canonical``): axial from below, coronal from the front, sagittal
from the left, with the voxel aspect ratio honoured.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: fixed display windows (so figures are comparable between subjects and sites)
CHI_WINDOW = (-0.15, 0.15)       # ppm
FIELD_WINDOW = (-0.05, 0.05)     # ppm
R2STAR_WINDOW = (0.0, 60.0)      # 1/s
VIEWS = ("axial", "coronal", "sagittal")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def canonical(img):
    """Data (float32) and voxel sizes of ``img`` reoriented to the closest RAS axes."""
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return data, np.asarray(can.header.get_zooms()[:3], dtype=float)


def _extent(mask, axis, n):
    """``n`` slice indices spread over the part of ``axis`` where ``mask`` has voxels."""
    other = tuple(i for i in range(3) if i != axis)
    present = np.flatnonzero(mask.any(axis=other))
    if present.size == 0:
        present = np.arange(mask.shape[axis])
    lo, hi = present[0], present[-1]
    return np.unique(np.round(np.linspace(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo), n)).astype(int))


def _slice(vol, axis, index):
    sl = [slice(None)] * 3
    sl[axis] = index
    return vol[tuple(sl)].T  # rows = second remaining axis (displayed bottom→top with origin lower)


def _aspect(zooms, axis):
    rest = [zooms[i] for i in range(3) if i != axis]
    return rest[1] / rest[0]


def mosaic(out_png, volume, zooms, *, vmin, vmax, cmap="gray", title="", cbar_label=None, contour=None,
           edges=None, n_slices=6, extent_mask=None):
    """Three rows (axial, coronal, sagittal) of ``n_slices`` slices of a RAS volume → PNG.

    ``contour``: boolean volume drawn as a red outline (e.g. the brain mask); ``edges``: a
    boolean volume drawn as cyan voxels (e.g. T1w edges for the registration check).
    """
    plt = _plt()
    select = extent_mask if extent_mask is not None else (contour if contour is not None else volume != 0)
    fig, axes = plt.subplots(3, n_slices, figsize=(1.9 * n_slices + 1.2, 6.0), facecolor="black",
                             gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    image = None
    for row, axis in enumerate((2, 1, 0)):
        picks = _extent(np.asarray(select, bool), axis, n_slices)
        for col in range(n_slices):
            ax = axes[row, col]
            ax.set_facecolor("black")
            ax.axis("off")
            if col >= len(picks):
                continue
            k = picks[col]
            image = ax.imshow(_slice(volume, axis, k), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                              aspect=_aspect(zooms, axis), interpolation="nearest")
            if contour is not None:
                c = _slice(np.asarray(contour, np.float32), axis, k)
                if c.any() and not c.all():
                    ax.contour(c, levels=[0.5], colors="red", linewidths=0.6)
            if edges is not None:
                e = _slice(np.asarray(edges, bool), axis, k)
                overlay = np.zeros(e.shape + (4,), np.float32)
                overlay[e] = (0.0, 1.0, 1.0, 0.9)
                ax.imshow(overlay, origin="lower", aspect=_aspect(zooms, axis), interpolation="nearest")
            if col == 0:
                ax.text(0.02, 0.98, VIEWS[row], color="white", fontsize=8, va="top", transform=ax.transAxes)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    if cbar_label and image is not None:
        cax = fig.add_axes([0.92, 0.2, 0.012, 0.6])
        cbar = fig.colorbar(image, cax=cax)
        cbar.set_label(cbar_label, color="white")
        cbar.ax.tick_params(colors="white", labelsize=8)
    fig.subplots_adjust(left=0.01, right=0.9 if cbar_label else 0.99, top=0.93, bottom=0.01)
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


def resample_to(moving_img, reference_img, world_map=None, order=1):
    """``moving_img`` resampled on ``reference_img``'s grid; ``world_map`` maps reference world
    points to moving world points (4×4, e.g. the ``from-T1w_to-GRE`` affine of qsmprep)."""
    from scipy import ndimage

    mat = np.linalg.inv(moving_img.affine) @ (np.eye(4) if world_map is None else world_map) @ reference_img.affine
    data = np.asarray(moving_img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    out = ndimage.affine_transform(data, mat[:3, :3], offset=mat[:3, 3], output_shape=reference_img.shape[:3],
                                   order=order, mode="constant", cval=0.0)
    return out


# ----------------------------------------------------------------------------- group plots

def roi_boxplots(out_png, long, *, atlas, mapname, by="site", stat="mean", units=""):
    """One panel per ROI: box plot of the ROI ``stat`` by ``by`` (site or vendor), points on top."""
    plt = _plt()
    data = long[(long["atlas"] == atlas) & (long["map"] == mapname)].dropna(subset=[stat])
    rois = sorted(data["roi_key"].unique())
    if not rois:
        return None
    ncol = min(4, len(rois))
    nrow = math.ceil(len(rois) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    groups = sorted(data[by].astype(str).unique())
    for ax, roi in zip(axes.ravel(), rois):
        sub = data[data["roi_key"] == roi]
        values = [sub[sub[by].astype(str) == g][stat].to_numpy(float) for g in groups]
        ax.boxplot(values, showfliers=False)  # (tick labels set below: the keyword changed in matplotlib 3.9)
        ax.set_xticks(range(1, len(groups) + 1))
        ax.set_xticklabels(groups)
        for i, v in enumerate(values, start=1):
            ax.plot(np.full(v.size, i) + np.linspace(-0.08, 0.08, v.size), v, "o", ms=3, alpha=0.7)
        ax.set_title(roi, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylabel(units, fontsize=8)
    for ax in axes.ravel()[len(rois):]:
        ax.axis("off")
    fig.suptitle(f"{atlas}: ROI {stat} of {mapname} by {by}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return str(out_png)


def bland_altman_plot(out_png, points, stats_row, *, title="", units=""):
    """Bland–Altman plot of paired ROI values (difference vs mean) with bias and 95% limits."""
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
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return str(out_png)
