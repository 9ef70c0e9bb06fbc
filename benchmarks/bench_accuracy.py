"""Accuracy of a whole ``qsmprep participant`` run on both phantom families, scored by QSM-CI's scorer.

Usage::

    python benchmarks/bench_accuracy.py [--resolution 1] [--protocols siemens3t,ge3t,philips3t,oblique3t]
                                        [--demo/--no-demo] [--config preset.json] [--nprocs 2]
                                        [--keep DIR [--reuse]] [--r2-map] [--oracle METHODS]

Families: the demo phantom (``qsmprep.demo``, full size, 1 mm; its labels mapped onto QSM-CI's)
and the MNI ICBM152 head (``benchmarks/phantom_mni.py``), one row per protocol. Each dataset goes
through ``qsmprep participant --no-coreg`` (with ``--config`` if given), and its ``Chimap`` is
scored against the truth inside the truth's brain mask by ``qsm_ci.qsm_eval.score_arrays``, the
function the QSM-CI leaderboard uses (NRMSE and detrended NRMSE in %, XSIM, HFEN in %, DGM
linearity ``|1 − slope|``, calcification moment deviation in ppm·voxels, blood and DGM NRMSE,
coverage). χ is relative, so before scoring the map is shifted, on the voxels the run kept, to
the truth's mean over those voxels; the voxels its mask dropped stay zero and are scored as
such (QSM-CI's rule). The shift makes the deep-grey means and the calcification moment
independent of the reference the preset chose. The table adds the
deep-grey mean |error| (ppm, labels 1-7), the calcification moment's relative error and the
haemorrhage mean (MNI family). Where the family has a band-limited truth (the MNI head's
``desc-bandlimited_Chimap``: what a noiseless acquisition at the output resolution sees, see
``phantom_mni``), the deep-grey linearity, deep-grey mean |error| and calcification moment are
also scored against it (columns ``*_bl``): the part of those errors that the sampling, not the
processing, makes is then the difference between the two.

With a preset that switches χ-separation on (``{"workflow": {"chi_separation": "chisep"}}``) a
second table scores χ⁺ and |χ⁻| against each family's χ-separation truth with QSM-CI's
``kind="chisep"`` metrics (NRMSE, XSIM, deep-grey NRMSE and linearity, the calcification's
leak into χ⁺, the iron's into χ⁻), plus the deep-grey mean |error| of each source; ``--r2-map``
gives the run the family's true R2 map (``--r2-dir truth/r2``) instead of the GRE-only R2′.

``--oracle medi,tv,...`` runs no pipeline: each inversion (``METHOD[:KEY=VALUE...]``, its
defaults otherwise) is given the ideal local field, the field of the true χ inside the true
brain mask (:func:`qsmprep.demo.physics.dipole_field`, on the output grid, noiseless), that
mask, and the echoes' RSS magnitude for its weights and edges, and scored as above. The local
field is what a perfect unwrapping, fit, mask and background removal would hand over, made with
the inversions' own dipole model on their own grid (an inverse crime), so these scores are the
most an inversion can reach on a family: a pipeline bar above them is out of reach of every
pipeline that ends in that inversion.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phantom_mni  # noqa: E402
from _common import method_spec  # noqa: E402

COLUMNS = ("nrmse", "nrmse_detrend", "xsim", "hfen", "dgm_linearity", "dgm_mae_ppm", "calc_moment_rel",
           "nrmse_blood", "coverage", "haemorrhage_ppm", "dgm_linearity_bl", "dgm_mae_ppm_bl", "calc_moment_rel_bl",
           "seconds")
#: the metrics also scored against a family's band-limited truth (module docstring)
BANDLIMITED = ("dgm_linearity", "dgm_mae_ppm", "calc_moment_rel")


def _read(path, dtype=np.float32):
    return np.asarray(nib.load(path).dataobj).astype(dtype)


def score(chi, truth, mask, seg):
    """QSM-CI's metrics plus deep-grey, calcification and haemorrhage numbers (module docstring)."""
    from qsm_ci.qsm_eval import score_arrays

    mask = mask > 0
    support = mask & np.isfinite(chi) & (chi != 0)      # what the run's own mask kept
    chi = np.where(support, chi - chi[support].mean() + truth[support].mean(), 0.0)
    metrics, _ = score_arrays(chi.astype(np.float64), truth.astype(np.float64), mask.astype(np.uint8),
                              kind="chi", seg=seg.astype(np.int32))
    dgm = [lab for lab in range(1, 8) if (mask & (seg == lab)).sum() >= 5]
    metrics["dgm_mae_ppm"] = float(np.mean([abs(chi[mask & (seg == k)].mean() - truth[mask & (seg == k)].mean())
                                            for k in dgm]))
    calc = seg == 16
    gt_moment = float(truth[calc].sum()) if calc.any() else float("nan")
    metrics["calc_moment_rel"] = metrics["calc_moment_dev"] / abs(gt_moment) if calc.any() else float("nan")
    haem = mask & (seg == 17)
    metrics["haemorrhage_ppm"] = (f"{chi[haem].mean():.3f}/{truth[haem].mean():.3f}" if haem.any() else "-")
    return metrics


def read_truths(truth_dir):
    """``truth_dir``'s χ (``sub-01_Chimap``), brain mask (float) and band-limited χ (None where the
    family has none), read once for :func:`score_both`."""
    bl = truth_dir / "sub-01_desc-bandlimited_Chimap.nii.gz"
    return {"chi": _read(truth_dir / "sub-01_Chimap.nii.gz"),
            "mask": _read(truth_dir / "sub-01_desc-brain_mask.nii.gz"),
            "bandlimited": _read(bl) if bl.exists() else None}


def score_both(chi, truths, seg):
    """:func:`score` against ``truths`` (:func:`read_truths`) in its brain mask, plus :data:`BANDLIMITED`
    against its band-limited χ as ``<metric>_bl`` ("-" where the family has none)."""
    m = score(chi, truths["chi"], truths["mask"], seg)
    m_bl = {} if truths["bandlimited"] is None else score(chi, truths["bandlimited"], truths["mask"], seg)
    m.update({f"{k}_bl": m_bl.get(k, "-") for k in BANDLIMITED})
    return m


def score_chisep(out_anat, truth, mask, seg):
    """QSM-CI's χ-separation metrics of χ⁺ and |χ⁻| (``kind="chisep"``) and deep-grey mean |errors|."""
    from qsm_ci.qsm_eval import score_arrays

    mask = mask > 0
    rows = {}
    for comp, desc in (("para", "paramagnetic"), ("dia", "diamagnetic")):
        est = np.abs(_read(out_anat / f"sub-01_desc-{desc}_Chimap.nii.gz"))
        ref = np.abs(_read(truth / f"sub-01_desc-{desc}_Chimap.nii.gz"))
        m, _ = score_arrays(est.astype(np.float64), ref.astype(np.float64), mask.astype(np.uint8), kind="chisep",
                            seg=seg.astype(np.int32), component=comp)
        dgm = [lab for lab in range(1, 8) if (mask & (seg == lab)).sum() >= 5]
        m["dgm_mae_ppm"] = float(np.mean([abs(est[mask & (seg == k)].mean() - ref[mask & (seg == k)].mean())
                                          for k in dgm]))
        calc = mask & (seg == 16)
        m["calc_ppm"] = f"{est[calc].mean():.3f}/{ref[calc].mean():.3f}" if calc.any() else "-"
        rows[comp] = m
    return rows


CHISEP_COLUMNS = ("nrmse", "xsim", "nrmse_dgm", "dgm_linearity", "dgm_mae_ppm", "calc_ppm", "calc_leak",
                  "iron_leak", "coverage")


def _run(bids, out, work, nprocs, config, r2_dir=None):
    from qsmprep.cli.run import main as qsmprep_main

    args = [str(bids), str(out), "participant", "-w", str(work), "--nprocs", str(nprocs), "--no-coreg"]
    if config:
        args += ["--config", str(config)]
    if r2_dir:
        args += ["--r2-dir", str(r2_dir)]
    t = time.perf_counter()
    rc = qsmprep_main(args)
    if rc != 0:
        raise SystemExit(f"qsmprep participant failed on {bids} (exit {rc})")
    return time.perf_counter() - t


def _echoes(bids):
    """The first GRE's echo times (s), field strength (T), RSS magnitude and the phase image's affine."""
    anat = bids / "sub-01" / "anat"
    echoes = sorted(anat.glob("sub-01_echo-*_part-phase_MEGRE.nii.gz")) or sorted(
        anat.glob("sub-01_echo-*_part-real_MEGRE.nii.gz"))
    if not echoes:
        raise SystemExit(f"no part-phase or part-real MEGRE echoes in {anat}")
    tes, mags = [], []
    for img_path in echoes:
        side = json.loads(img_path.with_name(img_path.name.replace(".nii.gz", ".json")).read_text())
        tes.append(side["EchoTime"])
        b0 = side["MagneticFieldStrength"]
        part = "phase" if "part-phase" in img_path.name else "real"
        mag = img_path.with_name(img_path.name.replace(f"part-{part}", "part-mag"))
        if mag.exists():
            mags.append(_read(mag))
        else:
            mags.append(np.abs(_read(img_path) + 1j * _read(img_path.with_name(img_path.name.replace(
                "part-real", "part-imag")))).astype(np.float32))
    from qsmprep.qsm.echoes import echo_average

    return tes, b0, echo_average(np.stack(mags, axis=-1)), nib.load(echoes[0]).affine


def oracle(case, specs, seg, workers):
    """Each inversion's scores on the ideal local field of ``case`` (module docstring): ``[(spec, metrics)]``."""
    from qsmprep.demo.physics import dipole_field
    from qsmprep.qsm.echoes import phase_per_ppm
    from qsmprep.qsm.inversion import invert, uses_phase_scale
    from qsmprep.qsm.kernels import b0_direction

    truths = read_truths(case / "truth" / "sub-01")
    chi_true, mask = truths["chi"], truths["mask"] > 0
    tes, b0, magnitude, affine = _echoes(case / "bids")
    vs = tuple(float(v) for v in nib.affines.voxel_sizes(affine))
    b0_dir = b0_direction(affine)
    field = dipole_field(chi_true * mask, vs, b0_dir) * mask
    rows = []
    for spec in specs:
        method, extra = method_spec(spec)
        if uses_phase_scale(method, extra):
            extra["phase_scale"] = phase_per_ppm(tes, b0)
        t = time.perf_counter()
        chi, _ = invert(field, mask, vs, b0_dir, method=method, magnitude=magnitude, workers=workers, **extra)
        m = score_both(chi * mask, truths, seg)
        m["seconds"] = time.perf_counter() - t
        rows.append((spec, m))
    return rows


def _print_table(rows, first="case"):
    print(f"| {first} | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in rows:
        cells = [m[c] if isinstance(m[c], str) else f"{m[c]:.3f}" if abs(m[c]) < 10 else f"{m[c]:.1f}"
                 for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=float, default=1.0, help="MNI family output voxel size (mm)")
    p.add_argument("--protocols", default=",".join(phantom_mni.PROTOCOLS))
    p.add_argument("--demo", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the demo family (full size, 1 mm)")
    p.add_argument("--config", help="workflow preset (JSON/TOML)")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--keep", help="folder to keep the datasets and runs in (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="with --keep: reuse datasets already there")
    p.add_argument("--r2-map", action="store_true",
                   help="with a chisep preset: give the runs the true R2 maps (--r2-dir truth/r2)")
    p.add_argument("--oracle", metavar="METHODS",
                   help="score these inversions on each case's ideal local field instead of running the pipeline")
    p.add_argument("--rescore", action="store_true",
                   help="with --keep: score the runs already there instead of running again")
    a = p.parse_args(argv)
    root = Path(a.keep or tempfile.mkdtemp(prefix="qsmprep-acc-"))
    cases = [("demo", None)] if a.demo else []
    cases += [("mni", prot) for prot in a.protocols.split(",") if prot]
    rows = []
    for family, prot in cases:
        name = "demo-full" if family == "demo" else f"mni-{prot}-{a.resolution:g}mm"
        case = root / name
        if not ((a.reuse or a.rescore) and (case / "bids" / "dataset_description.json").exists()):
            if family == "demo":
                from qsmprep.demo import write_demo_dataset

                write_demo_dataset(case, size="full", n_subjects=1, overwrite=True)
            else:
                phantom_mni.write_mni_dataset(case, resolution=a.resolution, protocol=prot, workers=a.nprocs)
        truth = case / "truth" / "sub-01"
        seg = _read(truth / "sub-01_dseg.nii.gz", np.int32)
        if family == "demo":
            from qsmprep.demo import qsmci_segmentation

            seg = qsmci_segmentation(seg)
        if a.oracle:
            got = oracle(case, [x for x in a.oracle.split(",") if x], seg, a.nprocs)
            (case / "scores-oracle.json").write_text(json.dumps(dict(got), indent=2, default=str) + "\n")
            rows += [(f"{name}, {spec}", m) for spec, m in got]
            continue
        tag = (Path(a.config).stem if a.config else "default") + ("-r2map" if a.r2_map else "")
        if a.rescore and (case / f"scores-{tag}.json").exists():
            secs = json.loads((case / f"scores-{tag}.json").read_text())["seconds"]
        else:
            secs = _run(case / "bids", case / f"out-{tag}", case / f"work-{tag}", a.nprocs, a.config,
                        r2_dir=case / "truth" / "r2" if a.r2_map else None)
        chi = _read(case / f"out-{tag}" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
        truths = read_truths(truth)
        m = score_both(chi, truths, seg)
        m["seconds"] = secs
        out_anat = case / f"out-{tag}" / "sub-01" / "anat"
        if (out_anat / "sub-01_desc-paramagnetic_Chimap.nii.gz").exists():
            m["chisep"] = score_chisep(out_anat, truth, truths["mask"], seg)
        rows.append((name, m))
        (case / f"scores-{tag}.json").write_text(json.dumps(m, indent=2, default=str) + "\n")
    if a.oracle:
        print(f"ideal local field, true brain mask (--oracle); folder {root}")
        _print_table(rows, "case, inversion")
        return
    print(f"preset: {a.config or 'default'}; folder {root}")
    _print_table(rows)
    sep = [(name, m["chisep"]) for name, m in rows if "chisep" in m]
    if sep:
        print("\nchi-separation (QSM-CI kind=chisep; dia scored as |chi-|):")
        print("| case | source | " + " | ".join(CHISEP_COLUMNS) + " |")
        print("|---" * (len(CHISEP_COLUMNS) + 2) + "|")
        for name, comps in sep:
            for comp, m in comps.items():
                cells = [m[c] if isinstance(m.get(c), str) else "-" if c not in m else f"{m[c]:.3f}"
                         for c in CHISEP_COLUMNS]
                print(f"| {name} | {comp} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
