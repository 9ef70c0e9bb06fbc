"""The optional ``denoise`` stage (MP-PCA of the multi-echo magnitude) on both phantom families.

Usage::

    python benchmarks/bench_denoise.py [--snr 30,100] [--size small|full] [--mni-resolution 3]
                                       [--threads 2]

For each family (the demo phantom, ``qsmprep.demo``; the MNI ICBM152 head,
``benchmarks/phantom_mni.py``, Siemens-like protocol) and each peak SNR, the magnitude is
denoised with :func:`qsmprep.qsm.denoise.denoise_magnitude` (time, also in FFT pairs of the
padded inversion grid) and compared with the raw magnitude on:

* R2* (the pipeline's log-linear fit) against the same fit of the noiseless signal, over the
  true brain: RMSE, median |error| and mean error (1/s);
* χ through the default stages that read the magnitude, after Laplacian unwrapping (the
  default when this was measured; it reads no magnitude and the phase is not denoised, so
  the unwrapped phase is the same for both), the magnitude-weighted linear field fit with its
  noise map, LBV and MEDI (magnitude edge mask, noise weights), on the *true* brain mask so
  that only the magnitude differs: NRMSE against the true χ over LBV's mask (both demeaned
  there) and the deep-grey mean |error| (ppm, relative to the mask mean).

The noiseless signal is the same simulation with the noise switched off (demo: ``snr`` 1e9;
MNI: the same seed, noise scaled to ~0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phantom_mni  # noqa: E402
from _common import fft_pair_seconds, inversion_grid  # noqa: E402


def _demo(size, snr):
    from qsmprep.demo import DEEP_GREY_LABELS, make_phantom, simulate_gre

    ph = make_phantom(size, seed=0)
    noisy, clean = (simulate_gre(ph, snr=s, seed=0)[0] for s in (snr, 1e9))
    return {"signal": noisy, "clean": clean, "tes": np.asarray(ph.tes), "b0": 3.0, "chi": ph.chi,
            "brain": ph.brain_mask.astype(bool), "labels": ph.labels, "deep": DEEP_GREY_LABELS,
            "voxel_size": tuple(ph.voxel_size), "b0_dir": tuple(ph.b0_dir)}


def _mni(resolution, snr, threads):
    out = {}
    for key, s in (("signal", snr), ("clean", 1e9)):
        ph = phantom_mni.make_mni_phantom(resolution, protocol="siemens3t", snr=s, seed=0, workers=threads)
        out[key] = ph.signal
    prot = ph.protocol
    out.update(tes=np.asarray(prot.tes), b0=prot.b0,
               chi=ph.chi, brain=ph.brain_mask.astype(bool), labels=ph.labels, deep=tuple(range(1, 8)),
               voxel_size=tuple(ph.voxel_size), b0_dir=tuple(ph.b0_dir))
    return out


def _chi(case, mag, threads):
    from qsmprep.qsm.background import lbv
    from qsmprep.qsm.echoes import echo_average, fit_field
    from qsmprep.qsm.inversion import medi
    from qsmprep.qsm.unwrap import unwrap_echoes

    phase = np.angle(case["signal"]).astype(np.float32)
    unwrapped = unwrap_echoes(phase, method="laplacian", voxel_size=case["voxel_size"], workers=threads)[0]
    fit = fit_field(unwrapped, mag, case["tes"], case["b0"])
    local, mask = lbv(fit["field"], case["brain"], case["voxel_size"], workers=threads)[:2]
    chi = medi(local, mask, case["voxel_size"], case["b0_dir"], magnitude=echo_average(mag), noise=fit["noise"],
               workers=threads)
    return chi, mask


def _scores(case, mag, threads):
    from qsmprep.qsm.echoes import r2star_map

    brain = case["brain"]
    r2 = r2star_map(mag, case["tes"])[0][brain] - r2star_map(np.abs(case["clean"]), case["tes"])[0][brain]
    chi, mask = _chi(case, mag, threads)
    est = chi - chi[mask].mean()
    true = case["chi"] - case["chi"][mask].mean()
    nrmse = float(np.linalg.norm((est - true)[mask]) / np.linalg.norm(true[mask]))
    dgm = [abs(float(est[sel].mean() - true[sel].mean()))
           for sel in (mask & (case["labels"] == lab) for lab in case["deep"]) if sel.any()]
    return {"r2_rmse": float(np.sqrt(np.mean(r2 ** 2))), "r2_median": float(np.median(np.abs(r2))),
            "r2_bias": float(np.mean(r2)), "chi_nrmse": nrmse, "dgm_err": float(np.mean(dgm))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snr", default="30,100", help="peak SNRs, comma-separated")
    p.add_argument("--size", choices=["small", "full"], default="small", help="demo family size")
    p.add_argument("--mni-resolution", type=float, default=3.0, help="MNI family voxel size (mm)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from qsmprep.qsm.denoise import denoise_magnitude

    print("| family | peak SNR | magnitude | R2* RMSE / median / mean error (1/s) | χ NRMSE | deep-grey "
          "mean |error| (ppm) | MP-PCA s (FFT pairs) |")
    print("|---|---|---|---|---|---|---|")
    for snr in (float(s) for s in args.snr.split(",")):
        for family in ("demo", "mni"):
            case = _demo(args.size, snr) if family == "demo" else _mni(args.mni_resolution, snr, args.threads)
            pair = fft_pair_seconds(inversion_grid(case["brain"]), args.threads)
            raw = np.abs(case["signal"]).astype(np.float32)
            t = time.perf_counter()
            den, info = denoise_magnitude(raw)
            dt = time.perf_counter() - t
            for name, mag in (("raw", raw), ("mppca", den)):
                s = _scores(case, mag, args.threads)
                timing = f"{dt:.1f} ({dt / pair:.0f})" if name == "mppca" else ""
                print(f"| {family} {case['brain'].shape} | {snr:g} | {name} | {s['r2_rmse']:.2f} / "
                      f"{s['r2_median']:.2f} / {s['r2_bias']:+.2f} | {s['chi_nrmse']:.3f} | {s['dgm_err']:.4f} | "
                      f"{timing} |", flush=True)


if __name__ == "__main__":
    main()
