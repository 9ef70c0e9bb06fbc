"""Templates and atlases through the TemplateFlow client, offline-friendly.

Files come from ``$TEMPLATEFLOW_HOME`` (read when each function is called, so a test or a
container can point it anywhere).  qsmprep never downloads during a run unless the file is
missing *and* the network is reachable; when a download is impossible the run stops with a
:class:`TemplateError` that names the missing files and the command that fetches them
ahead of time::

    qsmprep prefetch --template MNI152NLin2009cAsym --atlas HOSPA HOCPAL

(on a machine with network access, sharing ``TEMPLATEFLOW_HOME`` with the offline one,
e.g. a bind-mounted folder for the container).  Set ``QSMPREP_OFFLINE=1`` to forbid any
download attempt (the error is then raised at once, without a network timeout).

Atlases are addressed as ``<atlas>[:<desc>]`` (e.g. ``HOSPA:th25``, ``HOCPAL:th25``,
``Schaefer2018:400Parcels7Networks``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qsmprep.errors import InputError

#: ``--template`` choices of the CLI (``none`` skips template registration).
TEMPLATES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: Default atlases for the ROI tables: Harvard-Oxford subcortical and lateralised cortical.
DEFAULT_ATLASES = ("HOSPA:th25", "HOCPAL:th25")
#: Resolution index of the template files used for registration and template-space outputs.
DEFAULT_RESOLUTION = 1


class TemplateError(InputError):
    """A template or atlas file is not available (offline, or missing from TemplateFlow)."""


def templateflow_home():
    """``$TEMPLATEFLOW_HOME`` (or TemplateFlow's default cache folder)."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(home).expanduser()
    from templateflow.conf.env import get_templateflow_home

    return Path(get_templateflow_home())


def _offline():
    return os.environ.get("QSMPREP_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _client():
    """A TemplateFlow client on the current ``$TEMPLATEFLOW_HOME`` (no auto-update, no network)."""
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=templateflow_home(), autoupdate=False)


def parse_atlas(spec):
    """``"HOSPA:th25"`` → ``("HOSPA", "th25")``; ``"Phantom"`` → ``("Phantom", None)``."""
    spec = str(spec).strip()
    if not spec or spec.count(":") > 1:
        raise ValueError(f"atlas must be '<name>' or '<name>:<desc>', got {spec!r}")
    name, _, desc = spec.partition(":")
    return name, (desc or None)


def _prefetch_hint(template, atlases=()):
    atl = (" --atlas " + " ".join(atlases)) if atlases else ""
    return (f"fetch them ahead of time on a machine with network access with "
            f"`qsmprep prefetch --template {template}{atl}` (TEMPLATEFLOW_HOME={templateflow_home()}) "
            f"and make that folder available to this run through TEMPLATEFLOW_HOME")


def _query(template, atlases=(), **query):
    """Resolve files for ``query``; download missing ones unless offline; raise TemplateError."""
    client = _client()
    if template not in client.templates():
        raise TemplateError(
            f"template '{template}' is not in TemplateFlow at {templateflow_home()}; "
            + _prefetch_hint(template, atlases), path=templateflow_home(),
        )
    files = client.ls(template, **query)
    if not files:
        raise TemplateError(
            f"TemplateFlow has no file for template '{template}' with {query}; check the name, or "
            + _prefetch_hint(template, atlases), path=templateflow_home(),
        )
    missing = [f for f in files if not f.is_file() or f.stat().st_size == 0]
    if missing and not _offline():
        try:
            client.get(template, **query)
        except Exception as exc:  # noqa: BLE001 - requests/datalad raise many types offline
            raise TemplateError(
                f"cannot download {', '.join(str(m) for m in missing)} ({type(exc).__name__}: {exc}); "
                + _prefetch_hint(template, atlases), path=templateflow_home(),
            ) from exc
        missing = [f for f in files if not f.is_file() or f.stat().st_size == 0]
    if missing:
        raise TemplateError(
            f"missing template files (offline): {', '.join(str(m) for m in missing)}; "
            + _prefetch_hint(template, atlases), path=templateflow_home(),
        )
    return [str(f) for f in files]


def _one(files, what):
    if len(files) != 1:
        raise TemplateError(f"{what}: expected one file, TemplateFlow matched {len(files)}: {files}")
    return files[0]


def get_template(template, *, resolution=DEFAULT_RESOLUTION, atlases=()):
    """Paths of a template's head T1w, brain T1w and brain mask at ``resolution``.

    Returns
    -------
    dict
        ``t1w`` (head), ``brain`` (``desc-brain_T1w``, or None when the template has none:
        the workflows then use the head T1w with the brain mask as metric mask),
        ``mask`` (``desc-brain_mask``).  ``atlases`` only completes the prefetch hint of errors.
    """
    t1w = _one(_query(template, atlases=atlases, resolution=resolution, suffix="T1w", desc=None, extension=".nii.gz"),
               f"{template} T1w")
    mask = _one(_query(template, atlases=atlases, resolution=resolution, suffix="mask", desc="brain", extension=".nii.gz"),
                f"{template} brain mask")
    try:
        brain = _one(_query(template, atlases=atlases, resolution=resolution, suffix="T1w", desc="brain", extension=".nii.gz"),
                     f"{template} brain T1w")
    except TemplateError:
        brain = None
    return {"t1w": t1w, "brain": brain, "mask": mask}


def get_atlas(template, atlas, *, resolution=DEFAULT_RESOLUTION):
    """Paths of an atlas's ``dseg`` image and its ``dseg.tsv`` look-up table in ``template``.

    ``atlas`` is ``<name>[:<desc>]``.  The TSV may be shared across resolutions and
    descriptions (TemplateFlow stores e.g. ``tpl-X_atlas-HOSPA_dseg.tsv`` once).
    """
    name, desc = parse_atlas(atlas)
    query = {"atlas": name, "suffix": "dseg", "extension": ".nii.gz", "resolution": resolution}
    if desc:
        query["desc"] = desc
    files = _query(template, atlases=(atlas,), **query)
    dseg = _one(files, f"{template} atlas {atlas}")
    tsv_query = {"atlas": name, "suffix": "dseg", "extension": ".tsv"}
    tsvs = _client().ls(template, **tsv_query)
    if desc and any(f"_desc-{desc}_" in t.name for t in tsvs):
        tsv_query["desc"] = desc
    elif any("_desc-" not in t.name for t in tsvs):
        tsv_query["desc"] = None
    if not tsvs:
        raise TemplateError(f"{template} atlas {atlas}: no dseg.tsv look-up table in TemplateFlow",
                            path=templateflow_home())
    luts = _query(template, atlases=(atlas,), **tsv_query)
    # prefer the table without a resolution entity (shared by all resolutions)
    lut = sorted(luts, key=lambda t: ("_res-" in Path(t).name, t))
    return {"dseg": dseg, "lut": lut[0], "template": template, "atlas": name, "desc": desc}


def prefetch(template, atlases=(), *, resolution=DEFAULT_RESOLUTION):
    """Download (or check) everything a run with ``--template``/``--atlas`` needs.

    Parameters
    ----------
    template : str
        TemplateFlow template name (``none`` fetches nothing but atlases are then an error).
    atlases : sequence of str
        ``<name>[:<desc>]`` atlas specifications in that template.

    Returns
    -------
    list of str
        The files now present in ``$TEMPLATEFLOW_HOME``.
    """
    if template in (None, "", "none"):
        if atlases:
            raise TemplateError("atlases live in a template space: give --template with --atlas")
        return []
    files = list(get_template(template, resolution=resolution, atlases=tuple(atlases)).values())
    for atlas in atlases:
        info = get_atlas(template, atlas, resolution=resolution)
        files += [info["dseg"], info["lut"]]
    return [f for f in files if f]


def get_prefetch_parser():
    parser = argparse.ArgumentParser(
        prog="qsmprep prefetch",
        description="Download the TemplateFlow template and atlases a run will use into "
        "$TEMPLATEFLOW_HOME, so that the run itself needs no network.",
    )
    parser.add_argument("--template", default=TEMPLATES[0],
                        help=f"TemplateFlow template (one of {', '.join(TEMPLATES)}, or any TemplateFlow name)")
    parser.add_argument("--atlas", nargs="*", default=list(DEFAULT_ATLASES), metavar="NAME[:DESC]",
                        help="atlases in that template, e.g. HOSPA:th25 HOCPAL:th25")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="template resolution index")
    return parser


def main_prefetch(argv=None):
    """``qsmprep prefetch --template T --atlas A[:desc] ...``; returns an exit code."""
    args = get_prefetch_parser().parse_args(argv)
    try:
        files = prefetch(args.template, args.atlas, resolution=args.resolution)
    except InputError as exc:
        print(f"qsmprep prefetch: {exc}", file=sys.stderr)
        return 2
    for path in files:
        print(path)
    print(f"qsmprep prefetch: {len(files)} files ready in TEMPLATEFLOW_HOME={templateflow_home()}", file=sys.stderr)
    return 0
