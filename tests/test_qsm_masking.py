"""Brain masking: BET-style surface, threshold fallback and phase-quality refinement."""

import inspect
import json

import numpy as np
import pytest

from qsmprep.qsm import masking
from qsmprep.qsm.masking import (
    bet_mask,
    bet_surface,
    brain_mask,
    dilate_mm,
    erode_mm,
    icosphere,
    refine_mask,
    surface_self_intersects,
    surface_to_mask,
    threshold_mask,
)


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def bias_field(shape, lo=0.6, hi=1.4):
    """Smooth multiplicative receive field spanning exactly [lo, hi] over the volume."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    g = x + 0.7 * y - 0.5 * z + 0.6 * x * y
    g = (g - g.min()) / (g.max() - g.min())
    return (lo + (hi - lo) * g).astype(np.float32)


def rss(sig):
    return np.sqrt((np.abs(sig) ** 2).sum(-1))


def skull_or_air(phantom):
    from qsmprep.demo import SKULL_AND_AIR_LABELS

    return np.isin(phantom.labels, SKULL_AND_AIR_LABELS)


def romeo_quality(phantom, sig):
    from qsmprep.qsm.unwrap import unwrap_echoes

    _, quality = unwrap_echoes(np.angle(sig), method="romeo", voxel_size=phantom.voxel_size,
                               mag=np.abs(sig), tes=phantom.tes)
    return quality


def field_noise(phantom, sig):
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.unwrap import unwrap_echoes

    unwrapped, _ = unwrap_echoes(np.angle(sig), method="laplacian", voxel_size=phantom.voxel_size)
    return fit_field(unwrapped, np.abs(sig), phantom.tes, phantom.b0)["noise"]


# --- analytic head: bright brain + CSF, dark skull, bright scalp -------------------------
def analytic_head(shape=(64, 60, 44), vs=(2.5, 2.5, 3.0), seed=0, bias=False):
    """Ellipsoidal head in mm: brain (0.7) with a CSF rim (1.0), skull (0.03), scalp (0.9)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs)], indexing="ij")

    def rho(a, b, c):
        return np.sqrt((x / a) ** 2 + (y / b) ** 2 + ((z + 4) / c) ** 2)

    img = np.zeros(shape, np.float32)
    img[rho(66, 64, 56) <= 1] = 0.9   # scalp
    img[rho(61, 59, 51) <= 1] = 0.03  # skull
    brain = rho(55, 53, 45) <= 1
    img[brain] = 1.0                  # CSF
    img[rho(51, 49, 41) <= 1] = 0.7   # tissue
    nucleus = (x - 10) ** 2 + y**2 + z**2 < 8**2
    img[nucleus] = 0.35  # a dark (iron-rich) nucleus: must stay inside
    if bias:
        img *= bias_field(shape)
    noisy = np.abs(img + 0.02 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))
    return noisy.astype(np.float32), brain, vs, nucleus


# --- mesh helpers --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 3])
def test_icosphere_is_a_closed_outward_unit_sphere(n):
    verts, faces = icosphere(n)
    assert verts.shape == (10 * 4**n + 2, 3) and faces.shape == (20 * 4**n, 3)
    edges = np.unique(np.sort(np.concatenate([faces[:, :2], faces[:, 1:], faces[:, ::2]]), 1), axis=0)
    assert len(verts) - len(edges) + len(faces) == 2  # Euler characteristic of a sphere
    assert np.allclose(np.linalg.norm(verts, axis=1), 1.0)
    normal = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    assert np.all(np.einsum("ij,ij->i", normal, verts[faces].mean(1)) > 0)  # counter-clockwise outside
    with pytest.raises(ValueError, match="subdivisions"):
        icosphere(-1)


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (1.5, 2.0, 3.0)])
def test_surface_to_mask_matches_the_enclosed_volume(vs):
    verts, faces = icosphere(4)
    radius = 27.0
    shape = tuple(int(np.ceil(2 * radius / v)) + 4 for v in vs)
    centre = np.array([s * v / 2 for s, v in zip(shape, vs)]) + 0.31
    mask = surface_to_mask(centre + radius * verts, faces, shape, vs)
    x, y, z = np.meshgrid(*[np.arange(n) * v - c for n, v, c in zip(shape, vs, centre)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    # the inscribed polyhedron lies between the sphere and 0.997 of it (2562 vertices)
    assert mask[r < 0.996 * radius].all() and not mask[r > radius].any()
    # and its volume (divergence theorem) is the voxel count times the voxel volume
    a, b, c = (centre + radius * verts)[faces].transpose(1, 0, 2)
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    assert mask.sum() * np.prod(vs) == pytest.approx(volume, rel=0.01)


def test_surface_to_mask_clips_at_the_field_of_view():
    verts, faces = icosphere(3)
    mask = surface_to_mask(np.array([10.0, 10.0, 0.0]) + 8.0 * verts, faces, (21, 21, 12), (1, 1, 1))
    x, y, z = np.meshgrid(np.arange(21) - 10.0, np.arange(21) - 10.0, np.arange(12.0), indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    assert mask[r < 7.8].all() and not mask[r > 8.0].any()


def test_self_intersection_detection():
    verts, faces = icosphere(3)
    assert not surface_self_intersects(40 * verts, faces)
    folded = 40 * verts.copy()
    top = np.argmax(verts[:, 2])
    folded[top] = [1.3, 0.7, -45.0]  # the north pole pushed through the south pole
    assert surface_self_intersects(folded, faces)


# --- erosion -------------------------------------------------------------------------------
def test_erode_mm_is_a_ball_in_mm_for_anisotropic_voxels():
    vs = (1.0, 1.5, 2.0)
    shape = (60, 40, 30)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    eroded = erode_mm(r <= 25.0, vs, 6.0)
    # a voxel within R − r keeps the whole ball inside; beyond it, the sampled ball lacks
    # points exactly along the radius (at most half the largest voxel size short)
    assert eroded[r <= 19.0].all() and not eroded[r > 19.0 + max(vs) / 2].any()
    assert eroded.sum() * np.prod(vs) == pytest.approx(4 / 3 * np.pi * 19.0**3, rel=0.05)
    assert np.array_equal(erode_mm(r <= 25.0, vs, 0.0), r <= 25.0)
    with pytest.raises(ValueError, match="radius_mm"):
        erode_mm(r <= 25.0, vs, -1.0)


# --- threshold -----------------------------------------------------------------------------
def test_threshold_mask_on_analytic_head_with_bias_field():
    for bias in (False, True):
        img, truth, vs, nucleus = analytic_head(bias=bias)
        mask, thr = threshold_mask(img, vs)
        assert dice(mask, truth) >= 0.95, (bias, dice(mask, truth))
        assert mask[truth].mean() > 0.95 and thr > 0.03
    with pytest.raises(ValueError, match="threshold"):
        threshold_mask(img, vs, threshold=np.nan)


def test_threshold_on_demo_small(small_phantom, small_gre):
    mag = rss(small_gre[0])
    for bias in (False, True):
        mask, thr = threshold_mask(mag * bias_field(mag.shape) if bias else mag, small_phantom.voxel_size)
        d = dice(mask, small_phantom.brain_mask)
        assert d >= 0.93, (bias, d)


# --- BET -----------------------------------------------------------------------------------
def test_bet_on_analytic_head_anisotropic_with_bias_field():
    for bias in (False, True):
        img, truth, vs, nucleus = analytic_head(bias=bias)
        mask, info = bet_mask(img, vs, return_info=True)
        assert dice(mask, truth) >= 0.95, (bias, dice(mask, truth))
        assert info["passes"] >= 1 and not info["self_intersects"]
        assert info["t2"] < info["t"] < info["tm"] < info["t98"]
        assert mask[nucleus].all()

    # the fractional threshold moves the surface: a smaller f gives a larger brain
    sizes = [bet_mask(img, vs, f=f, subdivisions=3).sum() for f in (0.2, 0.5, 0.8)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_bet_vertical_gradient_grows_the_bottom():
    img, truth, vs, nucleus = analytic_head()
    base = bet_mask(img, vs, subdivisions=3)
    tilted = bet_mask(img, vs, g=0.4, subdivisions=3)
    half = img.shape[2] // 2
    assert tilted[..., :half].sum() > base[..., :half].sum()
    assert tilted[..., half:].sum() < base[..., half:].sum()


def test_bet_options_are_validated():
    img, _, vs, _ = analytic_head(shape=(20, 20, 16))
    for bad in ({"f": 1.5}, {"g": -2.0}, {"n_iter": 0}, {"radius_scale": 0.0}, {"rmin_mm": 20.0},
                {"vertical": (0, 0, 0)}, {"max_passes": 0}, {"d1_mm": -1.0}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            bet_surface(img, vs, **bad)
    with pytest.raises(ValueError, match="no contrast"):
        bet_mask(np.ones((20, 20, 16)), vs)
    with pytest.raises(ValueError, match="3D"):
        bet_mask(np.ones((20, 20)), vs)


def test_bet_on_demo_small(small_phantom, small_gre):
    mag = rss(small_gre[0])
    for bias in (False, True):
        mask = bet_mask(mag * bias_field(mag.shape) if bias else mag, small_phantom.voxel_size)
        d = dice(mask, small_phantom.brain_mask)
        assert d >= 0.95, (bias, d)


@pytest.fixture(scope="module")
def oblique_small():
    from qsmprep.demo import make_phantom, simulate_gre

    phantom = make_phantom("small", seed=1, oblique_deg=20.0)
    return phantom, simulate_gre(phantom, snr=100.0, seed=1)[0]


def test_oblique_demo_small(oblique_small):
    phantom, sig = oblique_small
    mag = rss(sig) * bias_field(sig.shape[:3])
    assert dice(bet_mask(mag, phantom.voxel_size), phantom.brain_mask) >= 0.95
    assert dice(threshold_mask(mag, phantom.voxel_size)[0], phantom.brain_mask) >= 0.93


# --- refinement ----------------------------------------------------------------------------
def test_refine_mask_removes_the_outside_band_and_keeps_interior_holes():
    shape, vs = (50, 50, 40), (1.0, 1.0, 1.5)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    mask = r <= 22
    quality = np.where(mask, 1.0, 0.1).astype(np.float32)   # noise outside: nothing to grow into
    quality[(r > 19) & (x > 0)] = 0.2          # a poor band at the edge: removed
    nucleus = (x + 5) ** 2 + y**2 + z**2 <= 4**2
    quality[nucleus] = 0.1                     # a steep-phase nucleus inside: kept (filled)
    out = refine_mask(mask, vs, quality=quality)
    assert not out[(r > 19.5) & (x > 0.5)].any() and out[nucleus].all()
    assert np.array_equal(out[x < -0.5], mask[x < -0.5])
    noise = np.where((r > 20) & (y > 0), 50.0, 1.0).astype(np.float32)
    out = refine_mask(mask, vs, noise=noise)   # default: 5 x the median noise in the mask
    assert not out[(r > 20.5) & (y > 0.5)].any() and out[y < -0.5].sum() == mask[y < -0.5].sum()
    assert refine_mask(mask, vs, noise=noise, noise_threshold=100.0).sum() == mask.sum()
    eroded = refine_mask(mask, vs, quality=np.ones(shape), grow_mm=0.0, erode_mm=3.0)
    assert eroded[r <= 19.0].all() and not eroded[r > 19.0 + max(vs) / 2].any()
    for bad in ({"quality_threshold": 1.5}, {"noise_factor": 0.0}, {"erode_mm": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            refine_mask(mask, vs, quality=quality, **bad)
    with pytest.raises(ValueError, match="shape"):
        refine_mask(mask, vs, quality=quality[:-1])


def test_refine_mask_grows_into_reliable_phase_within_grow_mm_only():
    shape, vs = (60, 60, 48), (1.0, 1.0, 1.25)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    mask = r <= 18
    quality = np.full(shape, 0.2, np.float32)           # skull and air: poor phase
    quality[mask] = 0.9
    sinus = (r > 18) & (r <= 20) & (x > 4)              # a surface vein, dark on the magnitude
    quality[sinus] = 0.55           # its own field makes its phase steep: between the two thresholds
    rim = (r > 16) & mask & (x < -4) & (y < -6)
    quality[rim] = 0.55             # inside the mask the removal's threshold (2/3) applies: removed
    scalp = (r > 24) & (r <= 28)                         # good phase beyond the skull gap
    quality[scalp] = 0.9
    chain = (np.abs(y) <= 1) & (np.abs(z) <= 1) & (x < 0) & (r > 18) & (r <= 28)
    quality[chain] = 0.9                                 # a thin good-phase bridge to the scalp
    out = refine_mask(mask, vs, quality=quality)         # grow_mm 3 (the default)
    assert out[mask & ~rim].all() and out[sinus].all() and not out[rim & (r > 17)].any()
    assert not refine_mask(mask, vs, quality=quality, grow_quality_threshold=0.6)[sinus].any()
    assert not out[scalp].any()
    assert out[chain & (r <= 20.4)].all() and not out[chain & (r > 21.6)].any()   # 3 mm from the mask's voxels
    assert np.array_equal(refine_mask(mask, vs, quality=quality, grow_mm=0.0), refine_mask(mask, vs, quality=quality)
                          & mask)
    # the noise test applies to the growth too: a noisy vein stays out
    noise = np.where(sinus & (y > 0), 50.0, 1.0).astype(np.float32)
    out = refine_mask(mask, vs, quality=quality, noise=noise)
    assert out[sinus & (y < -0.5)].all() and not out[sinus & (y > 0.5) & (r > 19)].any()
    # without a quality map nothing is grown (the noise test alone passes the scalp)
    assert np.array_equal(refine_mask(mask, vs, noise=np.ones(shape, np.float32)), mask)
    for bad in ({"grow_mm": -1.0}, {"grow_quality_threshold": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            refine_mask(mask, vs, quality=quality, **bad)

    # brain_mask: the growth is the tight mask's; the filled (reported) mask stays the
    # magnitude's, so giving it back as the user's mask reproduces the tight mask exactly
    mag = np.where(mask, 100.0, 0.0).astype(np.float32) + np.where(scalp, 80.0, 0.0).astype(np.float32)
    tight, filled, info = brain_mask(mag, vs, method="threshold", refine=True, quality=quality,
                                     partial_coverage="ignore")
    assert tight[sinus].all() and not tight[scalp].any() and not filled[sinus].any()
    assert info["grow_mm"] == 3.0 and info["grown_voxels"] == int((tight & ~filled).sum()) >= int(sinus.sum()) // 2
    again, refilled, info2 = brain_mask(mag, vs, method="threshold", refine=True, quality=quality, user_mask=filled)
    assert np.array_equal(again, tight) and np.array_equal(refilled, filled)
    assert info2["grown_voxels"] == info["grown_voxels"]


@pytest.mark.parametrize("method", ["threshold", "bet"])
def test_refined_mask_has_no_skull_on_demo_small(method, small_phantom, small_gre):
    sig = small_gre[0]
    mag = rss(sig) * bias_field(sig.shape[:3])
    quality = romeo_quality(small_phantom, sig)
    noise = field_noise(small_phantom, sig)
    tight, filled, info = brain_mask(mag, small_phantom.voxel_size, method=method, refine=True,
                                     quality=quality, noise=noise)
    truth, bad = small_phantom.brain_mask, skull_or_air(small_phantom)
    assert (filled & bad).sum() > 0  # partial-volume skull at 3 mm: the refinement has work to do
    assert not (tight & bad).any()
    assert not (tight & ~dilate_mm(filled, small_phantom.voxel_size, info["grow_mm"])).any()
    assert dice(filled, truth) >= 0.95 and dice(tight, truth) >= 0.94
    json.dumps(info)
    assert info["method"] == method and info["refine"] and info["noise_threshold"] > 0


def test_laplacian_unwrapping_quality_leaves_no_skull(small_phantom, small_gre):
    """The quality map Laplacian unwrapping (a preset; the default is ROMEO) hands to the mask
    refinement is ROMEO's voxel quality too, so its tight mask has no skull/air voxel."""
    from qsmprep.qsm.unwrap import unwrap_echoes

    sig = small_gre[0]
    _, quality = unwrap_echoes(np.angle(sig), method="laplacian", voxel_size=small_phantom.voxel_size,
                               mag=np.abs(sig), tes=small_phantom.tes)
    np.testing.assert_allclose(quality, romeo_quality(small_phantom, sig), atol=1e-6)
    noise = field_noise(small_phantom, sig)
    tight, filled, _ = brain_mask(rss(sig), small_phantom.voxel_size, refine=True, quality=quality, noise=noise)
    bad = skull_or_air(small_phantom)
    assert (filled & bad).sum() > 0 and not (tight & bad).any()
    assert dice(tight, small_phantom.brain_mask) >= 0.94


def test_brain_mask_info_and_validation(small_phantom, small_gre):
    mag = rss(small_gre[0])
    vs = small_phantom.voxel_size
    tight, filled, info = brain_mask(mag, vs)
    assert np.array_equal(tight, filled) and info["method"] == "threshold" and info["threshold"] > 0
    tight, filled, info = brain_mask(mag, vs, method="bet", f=0.45, erode_mm=3.0)
    assert not (tight & ~filled).any() and tight.sum() < filled.sum()
    text = json.dumps(info)
    for key in ("t2", "t98", "t", "tm", "f", "g", "erode_mm", "passes"):
        assert key in info, key
    assert info["f"] == 0.45 and "cog_mm" in text
    with pytest.raises(ValueError, match="method"):
        brain_mask(mag, vs, method="fsl")
    with pytest.raises(ValueError, match="refine"):
        brain_mask(mag, vs, refine=True)
    with pytest.raises(ValueError, match="voxel_size"):
        brain_mask(mag, (1.0, 0.0, 1.0))
    assert set(masking.METHODS) == {"threshold", "bet", "none"}


def _keyword_defaults(func):
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


@pytest.mark.parametrize("method", masking.METHODS)
def test_default_parameters_are_the_signature_defaults(method):
    """One source of each default: brain_mask's signature (refine, erode_mm, grow_mm) and the method function's."""
    own = _keyword_defaults(brain_mask)
    expected = {"refine": own["refine"], "erode_mm": own["erode_mm"], "grow_mm": own["grow_mm"]}
    if method == "threshold":
        expected.update(_keyword_defaults(threshold_mask))
    elif method == "bet":
        expected.update({k: v for k, v in _keyword_defaults(bet_mask).items() if k != "return_info"})
    assert masking.default_parameters(method) == expected
    assert set(masking.default_parameters("bet")) == {"refine", "erode_mm", "grow_mm", "f", "g"}
    with pytest.raises(ValueError, match="unknown masking method"):
        masking.default_parameters("fsl")


def test_pass_through_defaults_are_those_of_the_function_that_uses_them():
    surface, mask = _keyword_defaults(bet_surface), _keyword_defaults(bet_mask)
    assert {k: mask[k] for k in ("f", "g")} == {k: surface[k] for k in ("f", "g")}
    refine, brain = _keyword_defaults(refine_mask), _keyword_defaults(brain_mask)
    for name in ("quality_threshold", "noise_threshold", "noise_factor", "grow_mm", "grow_quality_threshold",
                 "erode_mm"):
        assert brain[name] == refine[name], name


def test_brain_mask_records_the_default_parameters():
    img, _, vs, _ = analytic_head()
    _, _, info = brain_mask(img, vs, method="threshold")
    defaults = masking.default_parameters("threshold")
    assert {k: info[k] for k in ("refine", "erode_mm")} == {k: defaults[k] for k in ("refine", "erode_mm")}


# --- the full-size phantom -----------------------------------------------------------------
@pytest.mark.full
def test_full_demo_bet_threshold_and_refinement(full_phantom, full_gre):
    sig = full_gre[0]
    vs, truth, bad = full_phantom.voxel_size, full_phantom.brain_mask, skull_or_air(full_phantom)
    mag = rss(sig)
    biased = mag * bias_field(mag.shape)
    for m in (mag, biased):
        assert dice(threshold_mask(m, vs)[0], truth) >= 0.93
        assert dice(bet_mask(m, vs), truth) >= 0.95
    quality = romeo_quality(full_phantom, sig)
    noise = field_noise(full_phantom, sig)
    vein = full_phantom.labels == 30       # the surface vein: dark on the magnitude, reliable phase
    for method in ("bet", "threshold"):
        tight, filled, info = brain_mask(biased, vs, method=method, refine=True, quality=quality, noise=noise)
        assert dice(filled, truth) >= 0.95 and dice(tight, truth) >= 0.95
        assert not (tight & bad).any()
        # the growth brings the vein back (without it the threshold mask kept none of its
        # 1,982 voxels in the pipeline's run), and nothing of the skull or air with it
        assert (tight & vein).sum() >= 0.8 * vein.sum(), (method, (tight & vein).sum(), vein.sum())
        assert info["grown_voxels"] > 0
