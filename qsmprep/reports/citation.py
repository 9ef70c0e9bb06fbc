"""Methods boilerplate: ``out/logs/CITATION.md`` and ``CITATION.bib`` describing what ran.

The text is assembled from the run's resolved configuration and the acquisitions it processed
(stage by stage, with the parameter values actually configured), using the phrases and
reference keys of ``qsmprep/data/boilerplate.json`` and the entries of
``qsmprep/data/references.bib``.  Nothing describes a step that did not run: anatomy
sentences appear only when registration ran, atlas sentences only with atlases, and so on.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from qsmprep import __version__

#: stages in the order they run, with the words that introduce them
_STAGE_ORDER = ("phase_units", "phase_offset", "denoise", "unwrapping", "combination", "r2star", "echo_average",
                "masking", "background", "inversion", "unringing", "reference")
#: parameters that are bookkeeping rather than method settings
_SKIP_PARAMS = {"lambda_rule", "refine", "mask"}


@lru_cache(maxsize=1)
def phrases():
    return json.loads(resources.files("qsmprep").joinpath("data").joinpath("boilerplate.json").read_text())


@lru_cache(maxsize=1)
def bibliography():
    """``{key: (entry type, {field: value}, raw text)}`` of ``references.bib``."""
    text = resources.files("qsmprep").joinpath("data").joinpath("references.bib").read_text()
    return parse_bibtex(text)


def parse_bibtex(text):
    """Minimal BibTeX reader for our own file: ``@type{key, field = {value}, ...}`` entries."""
    entries = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        kind, key = match.group(1).lower(), match.group(2)
        i, depth = match.end(), 1
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[match.end():i - 1]
        fields = {}
        for fm in re.finditer(r"(\w+)\s*=\s*\{", body):
            j, d = fm.end(), 1
            while d and j < len(body):
                d += {"{": 1, "}": -1}.get(body[j], 0)
                j += 1
            fields[fm.group(1).lower()] = body[fm.end():j - 1]
        entries[key] = (kind, fields, text[match.start():i])
    return entries


def _plain(value):
    value = re.sub(r"\\[\"'`^~]\{?(\w)\}?", r"\1", value)  # accents: {\"u} -> u (ASCII is fine here)
    return value.replace("{", "").replace("}", "").replace("--", "–")


def format_reference(key):
    """``Authors (year). Title. Journal volume(number):pages. doi:...`` of one key."""
    _, f, _ = bibliography()[key]
    authors = [a.strip() for a in _plain(f.get("author", "")).split(" and ")]
    names = []
    for a in authors:
        if a == "others":
            continue
        last, _, first = a.partition(",")
        initials = "".join(p[0] for p in re.split(r"[\s.\-]+", first.strip()) if p)
        names.append(f"{last.strip()} {initials}".strip())
    author = ", ".join(names[:6]) + (", et al." if len(names) > 6 or "others" in authors else "")
    vol = f.get("volume", "")
    num = f"({f['number']})" if f.get("number") else ""
    pages = f":{_plain(f['pages'])}" if f.get("pages") else ""
    doi = f" doi:{f['doi']}" if f.get("doi") else ""
    return f"{author} ({f.get('year', 'n.d.')}). {_plain(f.get('title', ''))}. {_plain(f.get('journal', ''))} {vol}{num}{pages}.{doi}"


def _fmt_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def _params_text(params):
    shown = {k: v for k, v in sorted(params.items()) if k not in _SKIP_PARAMS and v is not None}
    if not shown:
        return ""
    return " (" + ", ".join(f"{k.rstrip('_')} = {_fmt_value(v)}" for k, v in shown.items()) + ")"


def _acquisitions_text(records):
    groups = {}
    for rec in records:
        tes = tuple(round(te * 1e3, 2) for te in rec.echo_times)
        vox = tuple(round(float(v), 2) for v in rec.voxel_size) if rec.voxel_size else ()
        key = (rec.suffix, tes, float(rec.b0), vox, tuple(rec.shape))
        groups.setdefault(key, set()).add(rec.subject)
    parts = []
    for (suffix, tes, b0, vox, shape), subjects in sorted(groups.items()):
        te_text = ", ".join(f"{t:g}" for t in tes)
        vox_text = " × ".join(f"{v:g}" for v in vox) + " mm" if vox else "unknown voxel size"
        parts.append(f"{len(subjects)} participant(s) with {len(tes)}-echo {suffix} data at {b0:g} T "
                     f"(TE = {te_text} ms; voxel size {vox_text}; matrix {' × '.join(map(str, shape))})")
    return "; ".join(parts)


def versions():
    import importlib.metadata as md

    out = {"version": __version__}
    for name, dist in (("nipype", "nipype"), ("numpy", "numpy"), ("scipy", "scipy"), ("antspyx", "antspyx"),
                       ("nibabel", "nibabel"), ("scikit-image", "scikit-image"), ("templateflow", "templateflow"),
                       ("pybids", "pybids")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _num(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def phase_units_used(out_dir, records):
    """``[(prefix, units, source, raw_range)]``: the phase units each acquisition was processed with.

    Read from the acquisition's ``*_desc-qc_metrics.json`` (``PhaseUnits``, ``PhaseUnitsSource``,
    ``PhaseRawRange``), else from its ``*_Chimap.json`` sidecar (same keys); ``units`` is None
    when neither records it (derivatives of an older run, or an acquisition that failed early).
    """
    from qsmprep.analysis.qc import read_qc
    from qsmprep.bids import derivative_path

    found = []
    for rec in records:
        info = {}
        qc, _ = read_qc(derivative_path(out_dir, rec.entities, "metrics", desc="qc", extension=".json"))
        if qc is not None:
            info = {k: qc.get(k) for k in ("PhaseUnits", "PhaseUnitsSource", "PhaseRawRange")}
        if not info.get("PhaseUnits"):
            try:
                side = json.loads(derivative_path(out_dir, rec.entities, "Chimap", extension=".json").read_text())
            except (OSError, ValueError):
                side = {}
            if isinstance(side, dict) and side.get("PhaseUnits"):
                info = {k: side.get(k) for k in ("PhaseUnits", "PhaseUnitsSource", "PhaseRawRange")}
        rng = info.get("PhaseRawRange")
        rng = tuple(rng) if isinstance(rng, (list, tuple)) and len(rng) == 2 else None
        found.append((rec.prefix, info.get("PhaseUnits") or None, info.get("PhaseUnitsSource") or None, rng))
    return found


def phase_units_sentence(used, max_listed=6):
    """One sentence naming the phase units used per acquisition (grouped by unit and its source)."""
    if not used:
        return ""
    groups = {}
    for prefix, units, source, rng in used:
        groups.setdefault((units, source), []).append((prefix, rng))
    parts = []
    for (units, source), members in sorted(groups.items(), key=lambda kv: (kv[0][0] is None, str(kv[0]))):
        if units is None:
            who = ", ".join(p for p, _ in members[:max_listed]) + (f" and {len(members) - max_listed} more"
                                                                    if len(members) > max_listed else "")
            parts.append(f"not recorded for {who} (derivatives written before qsmprep recorded them)")
            continue
        label = f"{units} ({source})" if source else str(units)
        if len(members) <= max_listed:
            who = ", ".join(f"{p} (raw range {_num(r[0])} to {_num(r[1])})" if r else p for p, r in members)
        else:
            ranges = [r for _, r in members if r]
            who = f"{len(members)} acquisitions"
            if ranges:
                who += f" (raw values from {_num(min(r[0] for r in ranges))} to {_num(max(r[1] for r in ranges))})"
        parts.append(f"{label} for {who}")
    return "the phase units used were " + "; ".join(parts)


def methods_text(config, records, out_dir=None):
    """(markdown text, list of reference keys) describing the configured processing of ``records``.

    With ``out_dir`` (the derivatives of the run), the phase units each acquisition was actually
    processed with are stated (:func:`phase_units_used`), not only the configured choice.
    """
    p = phrases()
    cites = []

    def use(key, extra="", **fmt):
        """The phrase of ``key`` + ``extra`` (parameters) + its reference marks."""
        entry = p[key]
        for c in entry["cite"]:
            if c not in cites:
                cites.append(c)
        text = entry["text"].format(**fmt) if fmt else entry["text"]
        marks = "".join(f"[{cites.index(c) + 1}]" for c in entry["cite"])
        return text + extra + (" " + marks if marks else "")

    stages = config.workflow.stages
    ver = versions()
    lines = ["# Methods (generated by qsmprep)", "",
             "This text was generated by qsmprep from the configuration of the run that produced these "
             "derivatives. It may be copied into a manuscript; please keep the references.", ""]
    lines.append(use("software", version=ver["version"], nipype=ver["nipype"], numpy=ver["numpy"],
                     scipy=ver["scipy"], antspyx=ver["antspyx"]) + ".")
    lines.append("")
    if records:
        lines.append(f"**Data.** Multi-echo gradient-echo data of {_acquisitions_text(records)} were processed "
                     "per acquisition.")
        lines.append("")

    phase = []
    if any(r.is_complex for r in records):
        phase.append("magnitude and phase were computed from the real and imaginary images")
    if any(not r.is_complex for r in records) or not records:
        phase.append(use(f"phase_units:{stages['phase_units'].method}"))
    if out_dir is not None and records:
        phase.append(phase_units_sentence(phase_units_used(out_dir, records)))
    offset = stages["phase_offset"].method
    if offset != "none":
        phase.append(use(f"phase_offset:{offset}"))
    dn = stages["denoise"] if "denoise" in stages else None
    if dn is not None and dn.method != "none":
        phase.append(use(f"denoise:{dn.method}", _params_text(dn.params)))
    un = stages["unwrapping"]
    phase.append(use(f"unwrapping:{un.method}", _params_text(un.params)))
    comb = stages["combination"]
    if config.workflow.echo_strategy == "per-echo" and comb.method != "per-echo":
        phase.append(use("combination:per-echo"))
    else:
        phase.append(use(f"combination:{comb.method}", _params_text(comb.params)))
    phase.append("the field was converted to ppm with the gyromagnetic ratio 42.577478 MHz/T and each "
                 "acquisition's field strength; the B0 direction was taken from the image affine")
    lines.append("**Field map.** " + _sentences(phase))
    lines.append("")

    r2 = stages["r2star"]
    mag = [use(f"r2star:{r2.method}", _params_text(r2.params))]
    mask = stages["masking"]
    mask_text = use(f"masking:{mask.method}", _params_text(mask.params))
    if mask.params.get("refine", True):
        mask_text += " " + use("masking:refine")
        from qsmprep.qsm.masking import refine_mask
        from qsmprep.qsm._params import keyword_defaults

        own = {**keyword_defaults(refine_mask), **mask.params}   # the signature's defaults, the preset's values
        if own["grow_mm"]:
            mask_text += " " + use("masking:grow", grow_mm=f"{own['grow_mm']:g}",
                                   threshold=f"{own['grow_quality_threshold']:g}")
    mag.append(mask_text + ", computed on " + use(f"echo_average:{stages['echo_average'].method}"))
    lines.append("**Magnitude, R2\\* and mask.** " + _sentences(mag))
    lines.append("")

    bg, inv, ref = stages["background"], stages["inversion"], stages["reference"]
    rule = inv.params.get("lambda_rule", "fixed")
    chi = [use(f"background:{bg.method}", _params_text(bg.params)),
           use(f"inversion:{inv.method}", _params_text(inv.params) + " " + use(f"lambda_rule:{rule}")),
           use(f"reference:{ref.method}", _params_text(ref.params))]
    if inv.method == "medi" and inv.params.get("solver") == "admm":  # the solver, with its own reference
        chi.insert(2, use("inversion:medi:admm"))
    unr = stages["unringing"] if "unringing" in stages else None
    if unr is not None and unr.method != "none":  # (each acquisition's sidecar says whether its sampling allowed it)
        chi.insert(-1, use(f"unringing:{unr.method}", _params_text(unr.params)))
    lines.append("**Susceptibility.** " + _sentences(chi) + " Susceptibility is given in ppm (SI, relative).")
    lines.append("")
    sep = stages.get("chi_separation")
    if sep is not None and sep.method == "chisep":
        if getattr(config.execution, "r2_dir", None):
            source = ("R2' was computed as R2* - R2 with the R2 (or T2) maps given, each registered rigidly to "
                      "the GRE magnitude (ANTs, mutual information)")
        else:
            source = use("chisep:gre-only", r2=_num(sep.params.get("r2", 0)))
        shown = {k: v for k, v in sep.params.items() if k in ("lambda_", "edge_fraction")}
        lines.append("**χ-separation.** " + _sentences([use("chi_separation:chisep", _params_text(shown)), source]))
        lines.append("")

    anat = config.anat
    if anat.coreg and any(r.t1w for r in records):
        a = [use("anat:coreg")]
        if anat.template:
            a.append(use("anat:template", template=anat.template))
            key = f"template:{anat.template}"
            if key in p:
                use(key)
                a[-1] += "".join(f"[{cites.index(c) + 1}]" for c in p[key]["cite"])
        if anat.atlases:
            a.append(use("anat:atlas", atlases=", ".join(anat.atlases)))
        if anat.segmentation_dir:
            a.append(use("anat:segmentation"))
        if anat.atlases or anat.segmentation_dir:
            erode = f", after eroding each label by {anat.roi_erode} voxel(s)" if anat.roi_erode else ""
            a.append(use("anat:roistats", erode=erode))
        if anat.sloppy:
            a.append("Registration used the faster, less accurate `--sloppy` setting")
        lines.append("**Anatomy.** " + _sentences(a))
        lines.append("")

    lines += ["## References", ""]
    lines += [f"{i}. {format_reference(key)}" for i, key in enumerate(cites, start=1)]
    return "\n".join(lines) + "\n", cites


def _sentences(parts):
    parts = [s.strip() for s in parts if s and s.strip()]
    out = []
    for s in parts:
        s = s[0].upper() + s[1:]
        out.append(s if s.endswith(".") else s + ".")
    return " ".join(out)


def write_citation(out_dir, config, records):
    """Write ``out_dir/logs/CITATION.md`` and ``CITATION.bib``; return their paths.

    Written after processing, so that the phase units each acquisition used can be read from
    its QC file or χ sidecar."""
    from qsmprep.interfaces.derivatives import atomic_write_text

    text, cites = methods_text(config, records, out_dir=out_dir)
    logs = Path(out_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    md_path, bib_path = logs / "CITATION.md", logs / "CITATION.bib"
    atomic_write_text(md_path, text)
    bib = bibliography()
    atomic_write_text(bib_path, "\n".join(bib[k][2] for k in cites) + "\n")
    return md_path, bib_path
