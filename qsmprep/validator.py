"""The BIDS validator, run on the input dataset before a participant run starts (as fMRIPrep does).

qsmprep runs the bids-standard TypeScript validator through its Python distribution,
``bids-validator-deno`` (pinned in setup.cfg), as a subprocess, and turns its errors into one
:class:`~qsmprep.errors.InputError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")

#: The BIDS validator qsmprep runs (the bids-standard TypeScript validator's Python
#: distribution, ``bids-validator-deno``, pinned in setup.cfg).
VALIDATOR = "bids-validator-deno"
#: Errors shown in the message when the validator rejects a dataset.
MAX_ERRORS_SHOWN = 5


def find_validator():
    """Path of the ``bids-validator-deno`` executable (beside this Python, else on PATH), or None."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / VALIDATOR
    return str(beside) if beside.is_file() else shutil.which(VALIDATOR)


def run_bids_validator(bids_dir, *, timeout=600):
    """Validate ``bids_dir`` with the BIDS validator, as fMRIPrep does before it starts.

    Errors raise :class:`InputError` with the validator's codes, locations and messages
    (the first :data:`MAX_ERRORS_SHOWN`) and the hint ``--skip-bids-validation``; warnings are
    logged as one summary line.  Returns ``{"validator", "schema_version", "errors",
    "warnings"}``.  The validator only reads the dataset.
    """
    import json
    import os
    import subprocess

    exe = find_validator()
    if exe is None:
        raise InputError(f"the BIDS validator ({VALIDATOR}, a qsmprep dependency) is not installed; "
                         "reinstall qsmprep or pass --skip-bids-validation")
    env = dict(os.environ, DENO_NO_UPDATE_CHECK="1", DENO_NO_PROMPT="1")
    try:
        res = subprocess.run([exe, str(bids_dir), "--json"], capture_output=True, text=True, timeout=timeout,
                             env=env)
    except subprocess.TimeoutExpired:
        raise InputError(f"the BIDS validator did not finish within {timeout} s; pass --skip-bids-validation "
                         "to go on without it", path=bids_dir) from None
    try:
        report = json.loads(res.stdout)
        issues = report["issues"]["issues"]
    except (ValueError, KeyError, TypeError):
        tail = " / ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise InputError(f"the BIDS validator did not run (exit {res.returncode}: {tail or 'no output'}); "
                         "pass --skip-bids-validation to go on without it", path=bids_dir) from None
    errors = [i for i in issues if i.get("severity") == "error"]
    warnings = [i for i in issues if i.get("severity") == "warning"]
    version = str((report.get("summary") or {}).get("schemaVersion", ""))
    if errors:
        shown = "; ".join(
            f"{e.get('code')}{'/' + e['subCode'] if e.get('subCode') else ''} at {e.get('location', '?')}"
            + (f" ({' '.join(str(e['issueMessage']).split())[:120]})"
               if e.get("issueMessage") and not str(e["issueMessage"]).startswith("Field description") else "")
            for e in errors[:MAX_ERRORS_SHOWN])
        more = f" and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError(f"the BIDS validator found {len(errors)} error(s): {shown}{more}; fix them, or pass "
                         "--skip-bids-validation to process the dataset anyway", path=bids_dir)
    if warnings:
        codes = sorted({w.get("code") for w in warnings})
        LOGGER.warning("BIDS validator: %d warning(s) (%s)", len(warnings), ", ".join(map(str, codes[:8])))
    return {"validator": VALIDATOR, "schema_version": version, "errors": 0, "warnings": len(warnings)}
