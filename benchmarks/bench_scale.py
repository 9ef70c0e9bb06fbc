"""Memory against grid size: the 1 mm demo and the same head on a 0.5 × 0.5 × 1 mm grid.

Usage::

    python benchmarks/bench_scale.py [--keep DIR] [--nprocs 2] [--no-grid] [--cohort]

The 1 mm, 8-echo demo participant (224×224×144) is written as BIDS, then copied onto a 448×448×144
grid of 0.5 × 0.5 × 1 mm voxels: each echo's complex signal is zero-filled in k-space in-plane (sinc
interpolation of the measured signal: the grid and the data size of a 0.5 mm in-plane acquisition,
without its extra detail), its phase written in radians.  Both go through ``qsmprep participant
--no-coreg`` (default preset) in a child process each; the table gives the wall time, the largest
process's peak resident memory (``getrusage``: the run's main process and its MultiProc workers)
and both per voxel, so a memory that grows linearly with the voxel count shows as a constant
bytes-per-voxel column.  Issue 19 asks for the 448×448×144 participant within 16 GB.

``--cohort``: the cohort's use of the cores.  The 1 mm participant is copied as a second one
(``sub-02``, the same files renamed); the two run together with ``--nprocs 2`` and one alone with
``--nprocs 1``; issue 19 asks for the pair to take at most 1.1 × the single run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

CHILD = """
import resource, sys
from qsmprep.cli.run import main
rc = main(sys.argv[1:])
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(f"PEAK_KB {peak} RC {rc}")
"""


def upsample_dataset(src, dst, factor=2):
    """Copy a BIDS dataset with every MEGRE echo zero-filled in k-space in-plane by ``factor``."""
    shutil.copytree(src, dst)
    anat = dst / "sub-01" / "anat"
    for t1w in anat.glob("*_T1w.*"):
        t1w.unlink()  # the run is --no-coreg
    for mag_file in sorted(anat.glob("*_part-mag_MEGRE.nii.gz")):
        phase_file = Path(str(mag_file).replace("part-mag", "part-phase"))
        mag_img, ph_img = nib.load(mag_file), nib.load(phase_file)
        raw = np.asarray(ph_img.dataobj, dtype=np.float64)
        phase = raw / 4096.0 * 2 * np.pi - np.pi  # the demo's int12 phase
        sig = np.asarray(mag_img.dataobj, dtype=np.float64) * np.exp(1j * phase)
        k = np.fft.fftshift(np.fft.fftn(sig, axes=(0, 1)), axes=(0, 1))
        n0, n1, n2 = sig.shape
        big = np.zeros((factor * n0, factor * n1, n2), dtype=np.complex128)
        o0, o1 = (factor * n0 - n0) // 2, (factor * n1 - n1) // 2
        big[o0:o0 + n0, o1:o1 + n1] = k
        up = np.fft.ifftn(np.fft.ifftshift(big, axes=(0, 1)), axes=(0, 1)) * factor**2
        affine = mag_img.affine.copy()
        affine[:3, :2] /= factor  # zero-filling keeps the old samples: new voxel factor·j is old voxel j
        nib.save(nib.Nifti1Image(np.abs(up).astype(np.float32), affine), mag_file)
        nib.save(nib.Nifti1Image(np.angle(up).astype(np.float32), affine), phase_file)
        sidecar = phase_file.with_suffix("").with_suffix(".json")
        meta = json.loads(sidecar.read_text())
        meta["Units"] = "rad"
        sidecar.write_text(json.dumps(meta, indent=2))


def copy_participant(src, dst, old="01", new="02"):
    """A BIDS dataset with participant ``old`` and a copy of it as ``new`` (files renamed)."""
    shutil.copytree(src, dst)
    for path in sorted((dst / f"sub-{old}").rglob("*")):
        if path.is_file():
            target = dst / f"sub-{new}" / path.relative_to(dst / f"sub-{old}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target.with_name(path.name.replace(f"sub-{old}", f"sub-{new}")))
    participants = dst / "participants.tsv"
    if participants.exists():
        lines = participants.read_text().splitlines()
        extra = [ln.replace(f"sub-{old}", f"sub-{new}", 1) for ln in lines[1:] if ln.startswith(f"sub-{old}")]
        participants.write_text("\n".join(lines + extra) + "\n")


def run(bids, out, work, nprocs, labels=None):
    t = time.perf_counter()
    extra = ["--participant-label", *labels] if labels else []
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bids), str(out), "participant", "-w", str(work),
                           "--nprocs", str(nprocs), "--no-coreg", "-q", *extra], capture_output=True, text=True)
    secs = time.perf_counter() - t
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KB")]
    if proc.returncode or not line or not line[0].endswith("RC 0"):
        raise SystemExit(f"participant failed on {bids}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return secs, int(line[0].split()[1]) * 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="folder to keep the datasets and runs in (default: a temporary folder)")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                   help="the 1 mm / 0.5 mm memory table (default on)")
    p.add_argument("--cohort", action="store_true", help="two participants on --nprocs cores against one on one core")
    a = p.parse_args(argv)
    from qsmprep.demo import write_demo_dataset

    root = Path(a.keep or tempfile.mkdtemp(prefix="qsmprep-scale-"))
    one = root / "demo-1mm"
    if not (one / "bids" / "dataset_description.json").exists():
        write_demo_dataset(one, size="full", n_subjects=1)
    if a.cohort:
        pair = root / "bids-two"
        if not pair.exists():
            copy_participant(one / "bids", pair)
        single, _ = run(pair, root / "out-single", root / "work-single", 1, labels=["01"])
        both, _ = run(pair, root / "out-two", root / "work-two", a.nprocs)
        print(f"one participant on 1 core: {single:.1f} s; two participants on {a.nprocs} cores: {both:.1f} s "
              f"({both / single:.2f} x)", flush=True)
    if not a.grid:
        return
    half = root / "bids-0.5mm"
    if not half.exists():
        upsample_dataset(one / "bids", half)
    print("| grid | voxels | wall (s) | peak RSS (GB) | bytes per voxel |")
    print("|---|---|---|---|---|")
    for name, bids in (("224×224×144, 1 mm", one / "bids"), ("448×448×144, 0.5 × 0.5 × 1 mm", half)):
        shape = nib.load(next((bids / "sub-01" / "anat").glob("*_echo-1_part-mag_MEGRE.nii.gz"))).shape
        tag = "1mm" if bids == one / "bids" else "0.5mm"
        secs, peak = run(bids, root / f"out-{tag}", root / f"work-{tag}", a.nprocs)
        n = int(np.prod(shape))
        print(f"| {name} | {n:,} | {secs:.1f} | {peak / 1024**3:.2f} | {peak / n:.0f} |", flush=True)


if __name__ == "__main__":
    main()
