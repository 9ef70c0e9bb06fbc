"""TemplateFlow access offline: a phantom template folder made here, clear errors, prefetch."""

import numpy as np
import nibabel as nib
import pytest

from qsmprep import templates


def make_phantom_templateflow(root, *, t1w=None, labels=None, lut=None, mask=None):
    """A TemplateFlow-layout folder ``root/tpl-Phantom`` (T1w, brain, mask, atlas + dseg.tsv)."""
    folder = root / "tpl-Phantom"
    folder.mkdir(parents=True, exist_ok=True)
    if t1w is None:
        t1w = nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4))
    if mask is None:
        mask = nib.Nifti1Image((np.asarray(t1w.dataobj) > 0).astype(np.uint8), t1w.affine)
    if labels is None:
        labels = nib.Nifti1Image(np.ones(t1w.shape, np.int16), t1w.affine)
    brain = nib.Nifti1Image(np.asarray(t1w.dataobj) * (np.asarray(mask.dataobj) > 0), t1w.affine)
    t1w.to_filename(folder / "tpl-Phantom_res-01_T1w.nii.gz")
    brain.to_filename(folder / "tpl-Phantom_res-01_desc-brain_T1w.nii.gz")
    mask.to_filename(folder / "tpl-Phantom_res-01_desc-brain_mask.nii.gz")
    labels.to_filename(folder / "tpl-Phantom_res-01_atlas-Phantom_dseg.nii.gz")
    (folder / "tpl-Phantom_atlas-Phantom_dseg.tsv").write_text(lut or "index\tname\n1\tLeft-Putamen\n")
    (folder / "template_description.json").write_text('{"Name": "qsmprep phantom template"}\n')
    return folder


@pytest.fixture
def tf_home(tmp_path, monkeypatch):
    home = tmp_path / "templateflow"
    make_phantom_templateflow(home)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("QSMPREP_OFFLINE", "1")
    return home


def test_template_and_atlas_from_templateflow_home(tf_home):
    tpl = templates.get_template("Phantom")
    assert tpl["t1w"].endswith("tpl-Phantom_res-01_T1w.nii.gz") and tpl["t1w"].startswith(str(tf_home))
    assert tpl["brain"].endswith("desc-brain_T1w.nii.gz") and tpl["mask"].endswith("desc-brain_mask.nii.gz")
    atlas = templates.get_atlas("Phantom", "Phantom")
    assert atlas["dseg"].endswith("tpl-Phantom_res-01_atlas-Phantom_dseg.nii.gz")
    assert atlas["lut"].endswith("tpl-Phantom_atlas-Phantom_dseg.tsv")


def test_templateflow_home_is_read_at_call_time(tmp_path, monkeypatch, tf_home):
    other = tmp_path / "other"
    make_phantom_templateflow(other)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(other))
    assert templates.get_template("Phantom")["t1w"].startswith(str(other))


def test_missing_template_names_the_prefetch_command(tf_home):
    with pytest.raises(templates.TemplateError) as err:
        templates.get_template("MNI152NLin2009cAsym")
    msg = str(err.value)
    assert "MNI152NLin2009cAsym" in msg and "qsmprep prefetch --template MNI152NLin2009cAsym" in msg
    assert str(tf_home) in msg


def test_offline_missing_files_are_listed(tf_home):
    # TemplateFlow's skeleton lists files with zero size until they are downloaded
    folder = tf_home / "tpl-MNI152NLin2009cAsym"
    folder.mkdir()
    for name in ("tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz", "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz",
                 "tpl-MNI152NLin2009cAsym_res-01_atlas-HOSPA_desc-th25_dseg.nii.gz"):
        (folder / name).write_bytes(b"")
    (folder / "template_description.json").write_text("{}\n")
    with pytest.raises(templates.TemplateError) as err:
        templates.get_template("MNI152NLin2009cAsym")
    msg = str(err.value)
    assert "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz" in msg and "offline" in msg
    with pytest.raises(templates.TemplateError, match="--atlas HOSPA:th25"):
        templates.get_atlas("MNI152NLin2009cAsym", "HOSPA:th25")


def test_unknown_atlas(tf_home):
    with pytest.raises(templates.TemplateError, match="atlas"):
        templates.get_atlas("Phantom", "HOSPA:th25")


@pytest.mark.parametrize("spec, parsed", [("HOSPA:th25", ("HOSPA", "th25")), ("Phantom", ("Phantom", None))])
def test_parse_atlas(spec, parsed):
    assert templates.parse_atlas(spec) == parsed


@pytest.mark.parametrize("spec", ["", "a:b:c"])
def test_parse_atlas_rejects(spec):
    with pytest.raises(ValueError, match="atlas"):
        templates.parse_atlas(spec)


def test_prefetch_lists_the_files(tf_home, capsys):
    files = templates.prefetch("Phantom", ["Phantom"])
    assert len(files) == 5 and all(f.startswith(str(tf_home)) for f in files)
    assert templates.main_prefetch(["--template", "Phantom", "--atlas", "Phantom"]) == 0
    out = capsys.readouterr()
    assert "tpl-Phantom_res-01_atlas-Phantom_dseg.nii.gz" in out.out and "5 files ready" in out.err
    assert templates.prefetch("none", []) == []


def test_prefetch_offline_failure_exits_2(tf_home, capsys):
    assert templates.main_prefetch(["--template", "MNI152NLin6Asym", "--atlas", "HOSPA:th25"]) == 2
    assert "qsmprep prefetch --template MNI152NLin6Asym --atlas HOSPA:th25" in capsys.readouterr().err
    with pytest.raises(templates.TemplateError, match="--template"):
        templates.prefetch("none", ["HOSPA"])
