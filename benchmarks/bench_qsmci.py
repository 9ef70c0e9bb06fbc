"""Benchmark of the QSM-CI stage contract: each ``qsmprep stage`` on the demo, scored by QSM-CI.

Usage::

    python benchmarks/bench_qsmci.py [--size full|small] [--nthreads 2]
                                     [--cases field-mapping:romeo,end-to-end:,...]
                                     [--config PRESET]

Converts the demo phantom (simulated at SNR 100) to the contract's artifacts the way
``tests/test_qsmci.py`` does: phase in rad and magnitude from the simulated signal, the
phantom's brain mask, and the *true* total and local fields as the isolated stages' inputs
(as QSM-CI feeds them).  Each case runs ``qsmprep stage STAGE [--method M]`` (no method: the
pipeline's default; ``--config`` applies to every case) and its output is scored with
QSM-CI's own scorer (``qsm_ci.qsm_eval.score_arrays``) against the phantom's truth over the
whole mask (voxels a stage leaves at 0 count as 0).  The time is the command's wall time,
including reading and writing the artifacts; it depends on the machine and its load, so it
is printed beside one FFT pair of the padded inversion grid measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from _common import fft_pair_seconds, inversion_grid

#: The README's rows: (stage, method or "" for the pipeline's default).
CASES = ("field-mapping:romeo,field-mapping:laplacian,bfr:lbv,bfr:ismv,dipole:medi,dipole:rts,"
         "bfr+dipole:medi,end-to-end:")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="full", choices=("full", "small"))
    p.add_argument("--nthreads", type=int, default=2)
    p.add_argument("--cases", default=CASES, help="comma-separated STAGE:METHOD (METHOD empty: default)")
    p.add_argument("--config", help="workflow preset (JSON/TOML) for every case")
    p.add_argument("--keep", help="folder to keep the contract's input and outputs in")
    args = p.parse_args(argv)

    from qsm_ci.qsm_eval import score_arrays

    from qsmprep.cli.run import main as qsmprep_main
    from qsmprep.demo import make_phantom, simulate_gre
    from qsmprep.qsmci.contract import ARTIFACT_FILE, STAGES, write_inputs

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-qsmci-"))
    ph = make_phantom(args.size, seed=0)
    sig, _ = simulate_gre(ph, snr=100.0, seed=0)
    m = ph.brain_mask
    inp = write_inputs(root / "input", affine=ph.affine, mask=m, te=ph.tes, b0=ph.b0, b0_dir=ph.b0_dir,
                       voxel_size=ph.voxel_size, phase=np.angle(sig), magnitude=np.abs(sig),
                       totalfield=ph.total_field * m, localfield=ph.local_field * m)
    truth = {"totalfield": ph.total_field, "localfield": ph.local_field, "chimap": ph.chi}
    pair = fft_pair_seconds(inversion_grid(m), args.nthreads)
    print(f"demo {args.size} {m.shape}, {len(ph.tes)} echoes; one FFT pair of the padded grid "
          f"{pair * 1e3:.0f} ms ({args.nthreads} threads)")
    print("| stage, method | NRMSE % | detrended % | HFEN % | r | XSIM | coverage | time |")
    print("|---|---|---|---|---|---|---|---|")
    for i, case in enumerate(c for c in args.cases.split(",") if c):
        stage, _, method = case.partition(":")
        out = root / f"out{i}-{stage}-{method or 'default'}"
        argv = ["stage", stage, str(inp), str(out), "--nthreads", str(args.nthreads)]
        argv += ["--method", method] if method else []
        argv += ["--config", args.config] if args.config else []
        t0 = time.perf_counter()
        rc = qsmprep_main(argv)
        wall = time.perf_counter() - t0
        if rc:
            print(f"| {stage}, {method or 'default'} | failed (exit code {rc}) |")
            continue
        (produced,) = STAGES[stage]["produces"]
        path = out / ARTIFACT_FILE[produced]
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        used = {"totalfield": "PhaseUnwrapping", "localfield": "BackgroundRemoval",
                "chimap": "DipoleInversion"}[produced]
        data = np.asarray(nib.load(path).dataobj, np.float64)
        kind = "chi" if produced == "chimap" else "field"
        s = score_arrays(data, truth[produced].astype(np.float64), m.astype(np.uint8), kind=kind)[0]
        hfen = f"{s['hfen']:.1f}" if "hfen" in s else "–"  # the scorer's errors are in %
        label = f"{stage}, {meta.get(used, method)}" if method else f"{stage}, default ({meta.get(used)})"
        print(f"| {label} | {s['nrmse']:.1f} | {s['nrmse_detrend']:.1f} | {hfen} | "
              f"{s['correlation']:.3f} | {s['xsim']:.3f} | {s['coverage']:.3f} | {wall:.0f} s "
              f"({wall / pair:.0f} pairs) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
