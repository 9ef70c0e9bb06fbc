"""End-to-end benchmark: the demo phantom through ``qsmprep participant``.

Usage::

    python benchmarks/bench_pipeline.py [--size full|small] [--config preset.json] [--nprocs 2]
                                        [--keep DIR [--reuse]]

Prints the wall time of the run and a per-stage table: each node's duration (from Nipype's
results; the steps run now, in the order they finished), the same in FFT pairs of the padded
inversion grid measured in this process first (``benchmarks/_common.py``) and its peak
memory (Nipype's resource monitor, which samples each node's process tree once a second, so
a spike shorter than that can be missed); then the peak resident memory of this process and
its children, and the deep-grey ROI accuracy against the phantom truth.  Numbers depend on
the machine: report them with its core count, the FFT-pair column compares across machines.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from _common import fft_pair_seconds, header, inversion_grid, row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--config", help="workflow preset (JSON/TOML)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", help="folder to keep the run in (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse the demo dataset and the work folder already there, so a "
                             "second preset recomputes only the steps it changes (e.g. the inversion)")
    args = parser.parse_args(argv)

    from nipype import config as nipype_config
    from nipype.utils.filemanip import loadpkl

    from qsmprep.analysis.validation import compare_roi_means, format_comparison
    from qsmprep.cli.run import main as qsmprep_main
    from qsmprep.demo import DEEP_GREY_LABELS, label_name, write_demo_dataset

    root = Path(args.keep or tempfile.mkdtemp(prefix="qsmprep-bench-"))
    t0 = time.perf_counter()
    if not (args.reuse and (root / "bids" / "dataset_description.json").exists()):
        write_demo_dataset(root, size=args.size, n_subjects=1, overwrite=True)
    t_demo = time.perf_counter() - t0
    mask = np.asarray(nib.load(root / "truth/sub-01/sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    grid = inversion_grid(mask)
    pair = fft_pair_seconds(grid, args.nprocs)
    try:
        import importlib
        importlib.import_module("psutil")  # pip install -e ".[bench]"
        nipype_config.enable_resource_monitor()
    except ImportError:
        print("psutil is not installed (pip install -e '.[bench]'): no per-node peak memory")
    cmd = [str(root / "bids"), str(root / "out"), "participant", "-w", str(root / "work"),
           "--nprocs", str(args.nprocs)]
    if args.config:
        cmd += ["--config", args.config]
    t0, started = time.perf_counter(), time.time()
    # the resource monitor writes its .proc-* samples into the working directory of the
    # process that runs an interface: keep them in the run's folder, not the caller's
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = qsmprep_main(cmd)
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - t0
    if rc:
        return rc
    print(f"demo generation ({args.size}): {t_demo:.1f} s")
    print(header(pair, grid, args.nprocs))
    print(row(f"participant (wall, --nprocs {args.nprocs})", wall, pair))
    for res in sorted((root / "work").rglob("result_*.pklz"), key=lambda p: p.stat().st_mtime):
        if res.stat().st_mtime < started:
            continue  # reused from an earlier run (--reuse): not run now
        runtime = loadpkl(res).runtime
        peak = getattr(runtime, "mem_peak_gb", None)
        print(row("  " + res.parent.name, getattr(runtime, "duration", float("nan")), pair, peak))
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"peak RSS: {max(peak_self, peak_child):.2f} GB (largest single process)")

    chi = np.asarray(nib.load(root / "out/sub-01/anat/sub-01_Chimap.nii.gz").dataobj, np.float32)
    chi_true = np.asarray(nib.load(root / "truth/sub-01/sub-01_Chimap.nii.gz").dataobj, np.float32)
    labels = np.asarray(nib.load(root / "truth/sub-01/sub-01_dseg.nii.gz").dataobj).astype(int)
    names = {lab: label_name(lab) for lab in DEEP_GREY_LABELS}
    res = compare_roi_means(chi, chi_true, labels, chi != 0, DEEP_GREY_LABELS)
    print("both maps referenced to their mean over the QSM mask (whole brain):")
    print(format_comparison(res, names))
    # a uniform χ offset over the brain has a field that is harmonic inside it, so it is
    # not measurable; errors near the mask's edge move the whole-brain mean, a deep CSF
    # reference is what a study of deep-grey iron would use
    res = compare_roi_means(chi, chi_true, labels, chi != 0, DEEP_GREY_LABELS, reference=np.isin(labels, (7, 8)))
    print("both maps referenced to the lateral ventricles (true labels): "
          f"r = {res['r']:.3f}, slope = {res['slope']:.3f}, mean |error| = {res['mean_abs_error']:.4f} ppm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
