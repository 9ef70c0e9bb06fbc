"""Accuracy of a whole ``qsmprep participant`` run on both phantom families, scored by QSM-CI's scorer.

Usage::

    python benchmarks/bench_accuracy.py [--resolution 1] [--protocols siemens3t,ge3t,philips3t,oblique3t]
                                        [--demo/--no-demo] [--config preset.json] [--nprocs 2]
                                        [--keep DIR [--reuse]] [--r2-map]

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
haemorrhage mean (MNI family).

With a preset that switches χ-separation on (``{"workflow": {"chi_separation": "chisep"}}``) a
second table scores χ⁺ and |χ⁻| against each family's χ-separation truth with QSM-CI's
``kind="chisep"`` metrics (NRMSE, XSIM, deep-grey NRMSE and linearity, the calcification's
leak into χ⁺, the iron's into χ⁻), plus the deep-grey mean |error| of each source; ``--r2-map``
gives the run the family's true R2 map (``--r2-dir truth/r2``) instead of the GRE-only R2′.
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

COLUMNS = ("nrmse", "nrmse_detrend", "xsim", "hfen", "dgm_linearity", "dgm_mae_ppm", "calc_moment_rel",
           "nrmse_blood", "coverage", "haemorrhage_ppm", "seconds")


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
        tag = (Path(a.config).stem if a.config else "default") + ("-r2map" if a.r2_map else "")
        if a.rescore and (case / f"scores-{tag}.json").exists():
            secs = json.loads((case / f"scores-{tag}.json").read_text())["seconds"]
        else:
            secs = _run(case / "bids", case / f"out-{tag}", case / f"work-{tag}", a.nprocs, a.config,
                        r2_dir=case / "truth" / "r2" if a.r2_map else None)
        truth = case / "truth" / "sub-01"
        seg = _read(truth / "sub-01_dseg.nii.gz", np.int32)
        if family == "demo":
            from qsmprep.demo import qsmci_segmentation

            seg = qsmci_segmentation(seg)
        chi = _read(case / f"out-{tag}" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
        m = score(chi, _read(truth / "sub-01_Chimap.nii.gz"), _read(truth / "sub-01_desc-brain_mask.nii.gz"), seg)
        m["seconds"] = secs
        out_anat = case / f"out-{tag}" / "sub-01" / "anat"
        if (out_anat / "sub-01_desc-paramagnetic_Chimap.nii.gz").exists():
            m["chisep"] = score_chisep(out_anat, truth, _read(truth / "sub-01_desc-brain_mask.nii.gz"), seg)
        rows.append((name, m))
        (case / f"scores-{tag}.json").write_text(json.dumps(m, indent=2, default=str) + "\n")
    print(f"preset: {a.config or 'default'}; folder {root}")
    print("| case | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in rows:
        cells = [m[c] if isinstance(m[c], str) else f"{m[c]:.3f}" if abs(m[c]) < 10 else f"{m[c]:.1f}"
                 for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
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
