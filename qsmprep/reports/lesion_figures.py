"""Lesion figures: the group level's strip plot of relative χ per lesion kind, and the
participant report's lesion panels (χ with each lesion's outline and its reference region).

Drawn with :mod:`qsmprep.reports.figures`' conventions (neurological display, orientation
letters on every panel, fixed χ window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsmprep.reports.figures import (
    CHI_WINDOW,
    RAS,
    _aspect,
    _outlined,
    _plt,
    _slice_label,
    display_convention,
    display_slice,
    edge_letters,
)


def lesion_strip_plot(out_png, obs, *, kind):
    """Strip plot of one lesion kind's relative χ: a column per class, a point per lesion
    (jittered deterministically), the class mean as a black line, zero dashed."""
    plt = _plt()
    classes = [c for c in ("wm", "cortical", "mixed", "other") if c in set(obs["class"])]
    if not classes:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(classes), 3.6), dpi=100)
    rng = np.random.default_rng(0)
    for i, cls in enumerate(classes):
        vals = obs.loc[obs["class"] == cls, "chi_relative"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, vals.size), vals, s=18, alpha=0.8)
        ax.hlines(vals.mean(), i - 0.3, i + 0.3, color="black", lw=2)
    ax.axhline(0.0, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(classes)), [f"{c}\n(n={int((obs['class'] == c).sum())})" for c in classes])
    ax.set_ylabel("relative χ (ppm)")
    ax.set_title(f"{kind}: lesion − normal-appearing tissue")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


#: lesion panels: half-width of the field of view around a lesion (mm) and panels per figure
LESION_FOV_MM = 20.0
MAX_LESION_PANELS = 24


def lesion_panels(out_png, chi, lesions, reference, zooms, *, lesion_ids, labels=None, window=CHI_WINDOW,
                  affine=None):
    """One axial panel per lesion of ``lesion_ids`` (RAS volumes): χ in a fixed window around the
    lesion's centroid slice, the lesion's outline in red and its reference region as a
    translucent cyan fill (other lesions: yellow outlines).  ``labels``: ``{lesion_id: text}`` printed on each panel.
    Returns the PNG path, or None without a lesion to show."""
    plt = _plt()
    ids = [int(i) for i in lesion_ids if (lesions == int(i)).any()][:MAX_LESION_PANELS]
    if not ids:
        return None
    ncol = min(6, len(ids))
    nrow = -(-len(ids) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol + 1.0, 2.25 * nrow + 0.5), facecolor="black",
                             squeeze=False, gridspec_kw={"wspace": 0.03, "hspace": 0.12})
    half = np.maximum(1, np.round(LESION_FOV_MM / np.asarray(zooms[:2], float)).astype(int))
    letters = edge_letters(RAS, "axial")
    style = _outlined()
    image = None
    for ax in axes.ravel():
        ax.set_facecolor("black")
        ax.axis("off")
    for ax, lid in zip(axes.ravel(), ids):
        les = lesions == lid
        idx = np.argwhere(les)
        cx, cy = np.round(idx[:, :2].mean(axis=0)).astype(int)
        k = int(np.bincount(idx[:, 2]).argmax())  # the axial slice with most of the lesion
        sx = slice(max(0, cx - half[0]), min(chi.shape[0], cx + half[0] + 1))
        sy = slice(max(0, cy - half[1]), min(chi.shape[1], cy + half[1] + 1))

        def cut(vol):
            return display_slice(np.asarray(vol)[sx, sy, :], 2, k)

        image = ax.imshow(cut(chi), cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
                          aspect=_aspect(zooms, 2), interpolation="nearest")
        ref = cut(reference == lid)
        overlay = np.zeros(ref.shape + (4,), np.float32)
        overlay[ref] = (0.0, 1.0, 1.0, 0.45)   # the reference as a translucent fill: it is a sparse shell
        ax.imshow(overlay, origin="lower", aspect=_aspect(zooms, 2), interpolation="nearest")
        for mask, color in ((les, "red"), ((lesions > 0) & ~les, "yellow")):
            c = cut(mask.astype(np.float32))
            if c.any() and not c.all():
                ax.contour(c, levels=[0.5], colors=color, linewidths=0.9)
        text = f"lesion {lid}" + (f": {labels[lid]}" if labels and lid in labels else "")
        ax.text(0.03, 0.97, text, fontsize=6.5, va="top", ha="left", transform=ax.transAxes, **style)
        ax.text(0.03, 0.03, _slice_label(2, k, affine, chi.shape), fontsize=6, ha="left", va="bottom",
                transform=ax.transAxes, **style)
        for edge, (x, y, ha, va) in {"left": (0.03, 0.5, "left", "center"),
                                     "right": (0.97, 0.5, "right", "center")}.items():
            ax.text(x, y, letters[edge], fontsize=6.5, fontweight="bold", ha=ha, va=va, transform=ax.transAxes,
                    gid=f"orientation-{edge}", **style)
    fig.suptitle("Lesions on χ: red outline the lesion, cyan fill its reference region, yellow other lesions — "
                 f"{display_convention(RAS)} display", color="white", fontsize=9)
    cax = fig.add_axes([0.93, 0.2, 0.012, 0.6])
    cbar = fig.colorbar(image, cax=cax)
    cbar.set_label("χ (ppm)", color="white")
    cbar.ax.tick_params(colors="white", labelsize=7)
    fig.subplots_adjust(left=0.01, right=0.91, top=0.9, bottom=0.01)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, facecolor="black")
    plt.close(fig)
    return str(out_png)
