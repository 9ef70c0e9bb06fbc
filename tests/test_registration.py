"""ANTs registration: known rigid motion of the demo T1w recovered, transforms, label round trips."""

import nibabel as nib
import numpy as np
import pytest

from qsmprep.anat import (
    apply_transforms, brain_extract_t1w, invert_affine_file, read_affine, register, rigid_error, write_affine,
)

MOTION = (6.0, 0.0, 0.0, 0.0, 4.0, 0.0)   # 6° about x, 4 mm along y
#: corners of a box around the brain (mm), to check displacement errors over the whole brain
BRAIN_BOX = np.array([[x, y, z] for x in (-60, 60) for y in (-80, 80) for z in (-50, 60)], dtype=float)


def t1w_labels(size, seed, motion, affine, shape):
    """Ground-truth labels of the demo head rendered on a T1w grid moved by ``motion``."""
    from qsmprep.demo.anatomy import _head_coords, _labels_at, _rotation, _subject_variation

    (rot, shift), _ = _subject_variation(seed)
    if motion is not None:
        m_rot = _rotation(*motion[:3])
        rot, shift = m_rot @ rot, m_rot @ shift + np.asarray(motion[3:], dtype=float)
    return _labels_at(*_head_coords(affine, shape, (rot, shift)))


def true_t1w_to_gre(motion):
    """World matrix mapping T1w points to GRE points (the ITK direction of from-GRE_to-T1w)."""
    from qsmprep.demo.anatomy import _rotation

    m_rot = _rotation(*motion[:3])
    out = np.eye(4)
    out[:3, :3] = m_rot.T
    out[:3, 3] = -m_rot.T @ np.asarray(motion[3:], dtype=float)
    return out


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, small_phantom, small_gre):
    """Files: GRE echo-averaged magnitude, GRE labels, moved T1w and its labels, T1w brain extraction."""
    from qsmprep.demo import render_t1w

    root = tmp_path_factory.mktemp("reg")
    sig, _ = small_gre
    avg = np.sqrt((np.abs(sig) ** 2).mean(axis=-1)).astype(np.float32)
    files = {"root": root}
    files["average"] = str(root / "gre_average.nii.gz")
    nib.Nifti1Image(avg, small_phantom.affine).to_filename(files["average"])
    files["gre_labels"] = str(root / "gre_labels.nii.gz")
    nib.Nifti1Image(small_phantom.labels.astype(np.int16), small_phantom.affine).to_filename(files["gre_labels"])
    t1w = render_t1w("small", seed=0, t1w_motion=MOTION)
    files["t1w"] = str(root / "t1w.nii.gz")
    t1w.to_filename(files["t1w"])
    labels = t1w_labels("small", 0, MOTION, t1w.affine, t1w.shape)
    files["t1w_labels"] = str(root / "t1w_labels.nii.gz")
    nib.Nifti1Image(labels.astype(np.int16), t1w.affine).to_filename(files["t1w_labels"])
    files["be"] = brain_extract_t1w(files["t1w"], root / "be", num_threads=2)
    return files


def test_affine_file_round_trip(tmp_path):
    from qsmprep.demo.anatomy import _rotation

    mat = np.eye(4)
    mat[:3, :3] = _rotation(5.0, -3.0, 10.0) @ np.diag([1.02, 0.98, 1.0])
    mat[:3, 3] = [3.0, -4.0, 7.5]
    path = write_affine(mat, tmp_path / "x.mat")
    assert np.allclose(read_affine(path), mat, atol=1e-5)
    inv = invert_affine_file(path, tmp_path / "inv.mat")
    assert np.allclose(read_affine(inv) @ mat, np.eye(4), atol=1e-5)


def test_rigid_error_measures():
    from qsmprep.demo.anatomy import _rotation

    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = _rotation(0.0, 0.0, 2.0)
    b[:3, 3] = [0.0, 3.0, 4.0]
    angle, trans = rigid_error(a, b)
    assert angle == pytest.approx(2.0, abs=1e-6) and trans == pytest.approx(5.0)


def test_apply_transform_moves_an_image_by_a_known_shift(tmp_path):
    data = np.zeros((20, 20, 20), dtype=np.float32)
    data[8:12, 8:12, 8:12] = 1.0
    img = nib.Nifti1Image(data, np.eye(4))
    img.to_filename(tmp_path / "in.nii.gz")
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 0.0, 0.0]   # output point x samples the input at x + 3
    write_affine(shift, tmp_path / "shift.mat")
    out = apply_transforms(tmp_path / "in.nii.gz", tmp_path / "in.nii.gz", [str(tmp_path / "shift.mat")],
                           tmp_path / "out.nii.gz", interpolation="nearestNeighbor", dtype=np.int16)
    res = np.asarray(nib.load(out).dataobj)
    assert res.dtype == np.int16
    assert np.array_equal(res[5:9, 8:12, 8:12], np.ones((4, 4, 4))) and res.sum() == 64
    inv = apply_transforms(tmp_path / "out.nii.gz", tmp_path / "in.nii.gz", [(str(tmp_path / "shift.mat"), True)],
                           tmp_path / "back.nii.gz", interpolation="nearestNeighbor", dtype=np.int16)
    assert np.array_equal(np.asarray(nib.load(inv).dataobj), data.astype(np.int16))
    with pytest.raises(ValueError, match="interpolation"):
        apply_transforms(tmp_path / "in.nii.gz", tmp_path / "in.nii.gz", [], tmp_path / "x.nii.gz",
                         interpolation="cubic")


@pytest.mark.parametrize("option, value", [("stages", ("rigid", "bogus")), ("preset", "fast"),
                                           ("initialize", "centre"), ("sampling_rate", 2.0)])
def test_register_validates_options(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        register(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "x_", **{option: value})


def test_chained_linear_stages_share_the_pyramid():
    """Rigid stops above full resolution, the affine that refines it starts below the coarsest level."""
    from qsmprep.anat import LINEAR_PRESETS, linear_schedule

    p = LINEAR_PRESETS["precise"]
    full = list(zip(p["shrink_factors"], p["smoothing_sigmas"], p["iterations"]))
    assert linear_schedule(("rigid",)) == [("rigid", full)]
    assert linear_schedule(("rigid", "affine", "syn")) == [("rigid", full[:-1]), ("affine", full[1:])]
    assert [lv[-1][0] for _, lv in linear_schedule(("translation", "rigid", "affine"))] == [2, 2, 1]
    assert linear_schedule(("affine", "syn"), "sloppy")[0][1][0][0] == LINEAR_PRESETS["sloppy"]["shrink_factors"][0]
    with pytest.raises(ValueError, match="preset"):
        linear_schedule(("rigid",), "fast")


def test_t1w_brain_extraction_without_template(small_pair):
    from qsmprep.demo import BRAIN_LABELS, DEEP_GREY_LABELS

    mask = np.asarray(nib.load(small_pair["be"]["mask"]).dataobj) > 0
    labels = np.asarray(nib.load(small_pair["t1w_labels"]).dataobj)
    brain = np.isin(labels, BRAIN_LABELS)
    tissue = np.isin(labels, (5, 6, *DEEP_GREY_LABELS))   # GM, WM and nuclei (CSF is dark on T1w)
    assert (mask & tissue).sum() / tissue.sum() > 0.97
    assert (mask & ~brain).sum() / mask.sum() < 0.02          # almost nothing outside the skull
    assert (mask & np.isin(labels, DEEP_GREY_LABELS)).sum() == np.isin(labels, DEEP_GREY_LABELS).sum()


def test_recovers_known_rigid_motion_of_the_demo_t1w(small_pair):
    """GRE (3 mm) → T1w (2 mm) moved by 6° and 4 mm: rotation < 1°, translation < 1 mm."""
    be = small_pair["be"]
    fixed_mask = small_pair["root"] / "t1w_mask_dil.nii.gz"
    from scipy import ndimage as ndi

    m = nib.load(be["mask"])
    nib.Nifti1Image(ndi.binary_dilation(np.asarray(m.dataobj) > 0, iterations=2).astype(np.uint8),
                    m.affine).to_filename(fixed_mask)
    reg = register(be["corrected"], small_pair["average"], small_pair["root"] / "rigid_", stages=("rigid",),
                   fixed_mask=fixed_mask, num_threads=2)
    est = read_affine(reg["forward"][0])
    truth = true_t1w_to_gre(MOTION)
    angle, trans = rigid_error(est, truth)
    _, worst = rigid_error(est, truth, BRAIN_BOX)
    print(f"rigid: rotation error {angle:.3f} deg, translation error {trans:.3f} mm, brain-box max {worst:.3f} mm")
    assert angle < 1.0 and trans < 1.0
    assert worst < 1.5   # 1/2 GRE voxel at the far corners of the brain


def test_labels_round_trip_t1w_to_gre(small_pair, tmp_path):
    """T1w-space labels through the (true, inverted) GRE→T1w transform land on the GRE labels."""
    from qsmprep.demo import DEEP_GREY_LABELS

    # from-GRE_to-T1w: maps T1w points to GRE points (resamples GRE images into T1w)
    xfm = write_affine(true_t1w_to_gre(MOTION), tmp_path / "from-GRE_to-T1w.mat")
    out = apply_transforms(small_pair["t1w_labels"], small_pair["average"], [(xfm, True)], tmp_path / "lab.nii.gz",
                           interpolation="nearestNeighbor", dtype=np.int16)
    got = np.asarray(nib.load(out).dataobj)
    want = np.asarray(nib.load(small_pair["gre_labels"]).dataobj)
    assert got.shape == want.shape
    deep = np.isin(want, DEEP_GREY_LABELS)
    agree = (got[deep] == want[deep]).mean()
    brain_agree = (got[want > 3] == want[want > 3]).mean()
    print(f"deep-grey voxel agreement {agree:.3f}, brain {brain_agree:.3f}")
    assert agree > 0.85 and brain_agree > 0.9
    # and back: the round trip T1w → GRE → T1w equals the true GRE labels resampled into T1w
    # (the only loss is the 3 mm GRE grid itself, not the transforms)
    back = apply_transforms(out, small_pair["t1w"], [xfm], tmp_path / "back.nii.gz",
                            interpolation="nearestNeighbor", dtype=np.int16)
    direct = apply_transforms(small_pair["gre_labels"], small_pair["t1w"], [xfm], tmp_path / "direct.nii.gz",
                              interpolation="nearestNeighbor", dtype=np.int16)
    back, direct = np.asarray(nib.load(back).dataobj), np.asarray(nib.load(direct).dataobj)
    deep_t1 = np.isin(direct, DEEP_GREY_LABELS)
    round_trip = (back[deep_t1] == direct[deep_t1]).mean()
    print(f"round trip agreement {round_trip:.3f}")
    assert round_trip > 0.85
