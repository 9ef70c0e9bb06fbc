"""Background field removal (V-SHARP, PDF, LBV, iSMV) against fields with known sources.

Ground truth comes from the same dipole forward model as the demo
(:func:`qsmprep.demo.dipole_field`): the local field is the field of the sources inside
the mask, the background the field of everything outside it.  A local field is defined
only up to a function that is harmonic inside the mask, so the accuracy tests use local
sources away from the mask edge (where that ambiguity is small); on the demo phantom the
background-suppression bar of the issue is checked directly, by feeding the methods the
background field alone.
"""

import inspect

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.demo import dipole_field
from qsmprep.qsm import background as bg

B0 = np.array((0.0, 0.259, 0.966)) / np.linalg.norm((0.0, 0.259, 0.966))  # oblique


@pytest.fixture(scope="module")
def synthetic():
    """Ellipsoidal 'brain' (anisotropic voxels), an air cavity outside it, four χ spheres inside."""
    n, vs = (96, 96, 80), (1.0, 1.0, 1.2)
    x, y, z = np.meshgrid(*[(np.arange(k) - k / 2) * v for k, v in zip(n, vs)], indexing="ij")
    mask = (x / 36) ** 2 + (y / 30) ** 2 + (z / 30) ** 2 < 1
    chi_out = np.zeros(n, np.float32)
    chi_out[(x - 5) ** 2 + (y - 38) ** 2 + (z + 30) ** 2 < 10**2] = 9.4  # air
    chi_out[mask] = 0
    chi_in = np.zeros(n, np.float32)
    for c, r, v in (((8, 5, 0), 5, 0.12), ((-10, -4, 4), 4, -0.06), ((0, 12, -8), 4.5, 0.09),
                    ((-4, -12, 10), 3, 0.2)):
        chi_in[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r] = v
    local = dipole_field(chi_in, vs, B0)
    back = dipole_field(chi_out, vs, B0) + 0.05
    return {"mask": mask, "vs": vs, "local": local, "back": back, "x": x, "y": y}


def _rel_rmse(est, truth, valid):
    t = truth[valid] - truth[valid].mean()
    e = est[valid] - est[valid].mean()
    return float(np.sqrt(np.mean((e - t) ** 2)) / t.std()), float(np.corrcoef(e, t)[0, 1])


def test_vsharp_radii_in_mm_and_valid_masks_match_brute_force_erosion():
    vs = (1.0, 1.0, 2.0)
    radii = bg.vsharp_radii(vs, radius_max_mm=6.0)
    assert radii[0] == 6.0 and radii[-1] == 2.0  # from the maximum down to one (largest) voxel
    assert all(a > b for a, b in zip(radii, radii[1:]))
    assert bg.vsharp_radii((1, 1, 1), radius_max_mm=12.0)[0] == 12.0
    with pytest.raises(ValueError, match="radius_max_mm"):
        bg.vsharp_radii(vs, radius_max_mm=1.0)
    rng = np.random.default_rng(1)
    mask = ndimage.binary_closing(rng.random((20, 20, 12)) > 0.3, iterations=2)
    for r, valid in zip(radii, bg.smv_valid_masks(mask, vs, radii)):
        ball = np.zeros((2 * 7 + 1,) * 3, bool)
        g = np.meshgrid(*[np.arange(-7, 8) * v for v in vs], indexing="ij")
        ball = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= r * r + 1e-6
        brute = ndimage.binary_erosion(np.pad(mask, 8), structure=ball)[8:-8, 8:-8, 8:-8]
        np.testing.assert_array_equal(valid, brute)


@pytest.mark.parametrize("method,kept", [("vsharp", 0.7), ("lbv", 0.7), ("ismv", 0.7), ("resharp", 0.6)])
def test_harmonic_polynomial_background_removed_exactly(synthetic, method, kept):
    """Exact up to the solver's tolerance; RESHARP's default 4 mm ball erodes more of this
    60-72 mm 'brain' (68 % kept)."""
    s = synthetic
    back = (0.05 + 0.002 * s["x"] / 36 + 0.001 * (s["x"] ** 2 - s["y"] ** 2) / 900).astype(np.float32)
    local, valid, _ = bg.remove_background(np.where(s["mask"], back, 0), s["mask"], s["vs"], method=method,
                                           b0_dir=B0, workers=1)
    assert valid.sum() > kept * s["mask"].sum()
    assert np.abs(local[valid]).max() < 1e-3 * np.abs(back[valid]).max() + 1e-6


def test_pdf_shim_like_background_and_detrending(synthetic):
    """An offset plus first- and second-order shim terms: PDF (offset removed before the fit)
    leaves < 2 % of it, and the optional polynomial detrending < 1 %."""
    s = synthetic
    back = (0.05 + 0.02 * s["x"] / 36 + 0.01 * (s["x"] ** 2 - s["y"] ** 2) / 900).astype(np.float32)
    plain, valid, _ = bg.remove_background(back, s["mask"], s["vs"], method="pdf", b0_dir=B0)
    fixed, valid, info = bg.remove_background(back, s["mask"], s["vs"], method="pdf", b0_dir=B0,
                                              detrend_order=2)
    assert info["detrend_order"] == 2
    assert plain[valid].std() < 0.02 * back[valid].std()
    assert fixed[valid].std() < 0.01 * back[valid].std()


def test_pdf_recovers_local_field_of_inner_sources(synthetic):
    """Issue bar on sources away from the edge: rel. RMSE ≤ 25 %, r ≥ 0.9, < 5 % background left."""
    s = synthetic
    # field noise at SNR 100, 3 T, 4 echoes around TE = 20 ms: 1 / (SNR 2π γ̄ B0 TE √4) ≈ 3e-4 ppm
    sigma = 1e6 / (100 * 2 * np.pi * 42.577478e6 * 3.0 * 0.02 * 2)
    rng = np.random.default_rng(0)
    total = s["local"] + s["back"] + rng.normal(0, sigma, s["mask"].shape).astype(np.float32)
    weights = np.where(s["mask"], 1.0, 0).astype(np.float32)
    local, valid, info = bg.remove_background(total, s["mask"], s["vs"], method="pdf", b0_dir=B0,
                                              weights=weights, workers=2)
    assert info["method"] == "pdf" and info["weighted"] and info["iterations"] <= info["max_iter"]
    rel, r = _rel_rmse(local, s["local"], valid)
    assert rel <= 0.25 and r >= 0.9, (rel, r)
    left, v2, _ = bg.remove_background(np.where(s["mask"], s["back"], 0), s["mask"], s["vs"], method="pdf",
                                       b0_dir=B0)
    assert left[v2].std() < 0.05 * s["back"][v2].std()
    assert local.dtype == np.float32 and not local[~valid].any()


def test_ismv_is_the_fixed_point_of_wens_iteration():
    """iSMV's conjugate gradients reach the fixed point of Wen et al.'s own iteration,
    ``f_B ← M_E S(f_B) + (M − M_E) f``, run here to convergence (independent of the code)."""
    import scipy.fft as sfft

    from qsmprep.qsm import kernels

    n, vs = (24, 22, 18), (1.0, 1.0, 1.5)
    x, y, z = np.meshgrid(*[(np.arange(k) - k / 2) * v for k, v in zip(n, vs)], indexing="ij")
    mask = (x / 10) ** 2 + (y / 9) ** 2 + (z / 12) ** 2 < 1
    rng = np.random.default_rng(0)
    f = np.where(mask, 0.05 * np.sin(x / 7) * np.cos(y / 5) + 0.01 * z / 10 + 0.01 * rng.standard_normal(n), 0)
    local, valid, info = bg.remove_background(f.astype(np.float32), mask, vs, method="ismv", radius_mm=2.0)
    assert info["radius_used_mm"] == 2.0 and info["relative_residual"] < 1e-5  # float32 CG, tol 1e-6
    np.testing.assert_array_equal(valid, bg.smv_valid_masks(mask, vs, [2.0])[0])
    assert 0.3 * mask.sum() < valid.sum() < mask.sum()
    shape = tuple(k + 6 for k in n)
    s = kernels.smv_kernel(shape, vs, 2.0, dtype=np.float64, rfft=True)
    fp, crop = kernels.pad_to(f, shape)
    e = kernels.pad_to(valid, shape)[0]
    boundary = (kernels.pad_to(mask, shape)[0] & ~e) * fp
    fb, step = fp.copy(), np.inf
    for _ in range(3000):
        new = e * sfft.irfftn(sfft.rfftn(fb) * s, s=shape) + boundary
        step, fb = np.abs(new - fb).max(), new
        if step < 1e-12:
            break
    assert step < 1e-12
    ref = np.where(valid, f - fb[crop], 0)
    err = (local - local[valid].mean()) - (ref - ref[valid].mean())
    assert np.abs(err[valid]).max() < 1e-4 * np.abs(ref[valid]).max()


def test_resharp_solves_its_tikhonov_problem():
    """RESHARP's k-space CG gives the minimiser of ``‖M C (x − f)‖² + λ‖x‖²`` that scipy's CG
    finds in image space (float64, the operators built here from the SMV kernel)."""
    from scipy.sparse.linalg import LinearOperator, cg

    from qsmprep.qsm import kernels

    n, vs = (22, 20, 16), (1.0, 1.0, 1.25)
    x, y, z = np.meshgrid(*[(np.arange(k) - k / 2) * v for k, v in zip(n, vs)], indexing="ij")
    mask = (x / 9) ** 2 + (y / 8) ** 2 + (z / 8) ** 2 < 1
    rng = np.random.default_rng(1)
    f = np.where(mask, 0.03 * np.cos(x / 4) + 0.02 * y * z / 50 + 0.005 * rng.standard_normal(n), 0)
    lam, r = 1e-3, 2.0
    local, valid, info = bg.remove_background(f.astype(np.float32), mask, vs, method="resharp", radius_mm=r,
                                              lambda_=lam)
    assert info["relative_residual"] < 1e-5 and info["iterations"] < info["max_iter"]
    np.testing.assert_array_equal(valid, bg.smv_valid_masks(mask, vs, [r])[0])
    shape = tuple(k + 6 for k in n)
    c = 1.0 - kernels.smv_kernel(shape, vs, r, rfft=True, dtype=np.float64)
    fp, crop = kernels.pad_to(f, shape)
    m = kernels.pad_to(valid, shape)[0]

    def conv(v):
        return np.fft.irfftn(np.fft.rfftn(v.reshape(shape)) * c, s=shape, axes=(0, 1, 2))

    def normal(v):
        return (conv(m * conv(v)) + lam * v.reshape(shape)).ravel()

    op = LinearOperator((fp.size, fp.size), matvec=normal, dtype=np.float64)
    sol, code = cg(op, conv(m * conv(fp)).ravel(), rtol=1e-10, maxiter=2000)
    assert code == 0
    ref = sol.reshape(shape)[crop]
    # C removes constants, so x's constant is λ's alone: zero over the grid, which differs here
    err = (local - local[valid].mean()) - (ref - ref[valid].mean())
    assert np.abs(err[valid]).max() < 1e-4 * np.abs(ref[valid]).max()


@pytest.mark.parametrize("method,limit", [("vsharp", 0.05), ("pdf", 0.05), ("lbv", 0.05), ("ismv", 0.05),
                                          ("resharp", 0.05)])
@pytest.mark.full
def test_demo_background_suppressed(full_phantom, method, limit):
    """On the demo phantom, the background field alone (skull, sinuses, air; 60× the local
    field's RMS inside the brain) is suppressed to < 5 % of its RMS in the valid mask (1 mm
    phantom; at 3 mm LBV leaves 5.9 %: the rim voxels mix skull and brain)."""
    ph = full_phantom
    mask = ph.brain_mask
    back = np.where(mask, ph.background_field, 0)
    left, valid, info = bg.remove_background(back, mask, ph.voxel_size, method=method, b0_dir=ph.b0_dir)
    ratio = left[valid].std() / ph.background_field[valid].std()
    assert ratio < limit, ratio
    assert valid.sum() > 0.75 * mask.sum()


@pytest.mark.full
def test_pdf_on_demo_total_field(full_phantom):
    """Regression guard on the 1 mm demo (measured r = 0.80, rel. RMSE 0.60).  The issue's 25 %
    bar is not reachable on this phantom by any method: PDF fed the *true local field alone*
    removes 51 % of its RMS, the part of the brain's own field that sources outside the
    mask reproduce exactly (the harmonic ambiguity of background removal)."""
    ph = full_phantom
    local, valid, info = bg.remove_background(ph.total_field, ph.brain_mask, ph.voxel_size, method="pdf",
                                              b0_dir=ph.b0_dir)
    rel, r = _rel_rmse(local, ph.local_field, valid)
    assert r > 0.75 and rel < 0.7, (rel, r)


def test_lbv_reports_convergence_and_peels(small_phantom):
    ph = small_phantom
    local, valid, info = bg.remove_background(ph.total_field, ph.brain_mask, ph.voxel_size, method="lbv",
                                              peel=2)
    assert info["relative_residual"] <= info["tol"] * 10 and info["peel"] == 2
    one = bg.remove_background(ph.total_field, ph.brain_mask, ph.voxel_size, method="lbv", peel=1)[1]
    assert valid.sum() < one.sum() < ph.brain_mask.sum()


def test_remove_background_validates_options():
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    field = np.zeros(mask.shape, np.float32)
    with pytest.raises(ValueError, match="unknown background removal method"):
        bg.remove_background(field, mask, (1, 1, 1), method="sharp")
    with pytest.raises(ValueError, match="unknown option"):
        bg.remove_background(field, mask, (1, 1, 1), method="pdf", radius_max_mm=5)
    with pytest.raises(ValueError, match="mask shape"):
        bg.remove_background(field, mask[:-1], (1, 1, 1))
    bad = field.copy()
    bad[8, 8, 8] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        bg.remove_background(bad, mask, (1, 1, 1), method="lbv")
    assert bg.method_parameters("pdf") >= {"tol", "max_iter", "pad", "detrend_order"}


def _keyword_defaults(func):
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


@pytest.mark.parametrize("method", bg.METHODS)
def test_default_parameters_are_the_signature_defaults(method):
    """One source of each default: the method function's signature (detrend_order: remove_background's)."""
    func = {"vsharp": bg.vsharp, "pdf": bg.pdf, "lbv": bg.lbv, "ismv": bg.ismv,
            "resharp": bg.resharp}[method]
    expected = {k: v for k, v in _keyword_defaults(func).items() if k not in ("weights", "workers")}
    expected["detrend_order"] = _keyword_defaults(bg.remove_background)["detrend_order"]
    defaults = bg.default_parameters(method)
    assert defaults == expected
    assert set(defaults) == bg.method_parameters(method)
    with pytest.raises(ValueError, match="unknown background removal method"):
        bg.default_parameters("sharp")


def test_vsharp_radius_defaults_are_those_of_vsharp_radii():
    radii = _keyword_defaults(bg.vsharp_radii)
    assert radii == {k: v for k, v in _keyword_defaults(bg.vsharp).items() if k in radii}


@pytest.mark.parametrize("method", bg.METHODS)
def test_remove_background_records_the_default_parameters(method):
    n = (24, 24, 24)
    x, y, z = np.meshgrid(*[np.arange(k) - k / 2 for k in n], indexing="ij")
    mask = x**2 + y**2 + z**2 < 10**2
    field = (0.01 * x + 0.002 * x * y).astype(np.float32)
    _, _, info = bg.remove_background(field, mask, (1.0, 1.0, 1.0), method=method, radius_max_mm=4.0) \
        if method == "vsharp" else bg.remove_background(field, mask, (1.0, 1.0, 1.0), method=method)
    defaults = bg.default_parameters(method)
    if method == "vsharp":
        defaults["radius_max_mm"] = 4.0
    assert {k: info[k] for k in defaults} == defaults


def test_lbv_in_a_forked_child_after_the_parent_ran_it(small_phantom):
    """MultiProc forks its workers: numba's GNU OpenMP layer would kill a child that runs LBV
    after the parent did ("fork() called from a process already using GNU OpenMP")."""
    import multiprocessing as mp

    ph = small_phantom
    bg.remove_background(ph.total_field, ph.brain_mask, ph.voxel_size, method="lbv")
    child = mp.get_context("fork").Process(target=bg.remove_background,
                                           args=(ph.total_field, ph.brain_mask, ph.voxel_size),
                                           kwargs={"method": "lbv"})
    child.start()
    child.join(120)
    assert child.exitcode == 0
