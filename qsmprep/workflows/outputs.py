"""Derivatives of one GRE acquisition: names and sidecars as in DESIGN.md."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from qsmprep.interfaces.derivatives import DerivativesSink

#: (outputnode field, suffix, desc, Units, info fields merged into the sidecar, fixed metadata)
OUTPUTS = (
    ("chi", "Chimap", None, "ppm",
     # chi_info carries phase_info already (gre.py merges it in for every χ-derived output)
     ("field_info", "unwrap_info", "local_info", "chi_info"), {"SkullStripped": True}),
    ("r2star", "R2starmap", None, "1/s", ("phase_info", "r2star_info"), {"SkullStripped": False}),
    ("t2star", "T2starmap", None, "s", ("phase_info", "r2star_info"), {"SkullStripped": False}),
    ("mask_filled", "mask", "brain", None, ("phase_info", "mask_info"), {"Type": "Brain"}),
    ("average", "magnitude", "echoaverage", "arbitrary", ("phase_info",), {"SkullStripped": False}),
    # brain-only echo average (filled mask): the image registered to the T1w
    ("brain", "magnitude", "echoaveragebrain", "arbitrary", ("phase_info", "mask_info"), {"SkullStripped": True}),
    # the total field is fitted over the whole field of view; the local field exists in the mask only
    ("total_field", "fieldmap", "totalfield", "ppm", ("phase_info", "field_info", "unwrap_info"),
     {"SkullStripped": False}),
    ("local_field", "fieldmap", "localfield", "ppm", ("phase_info", "field_info", "unwrap_info", "local_info"),
     {"SkullStripped": True}),
)

#: χ-separation's maps (``chi_separation`` method ``chisep``), with the same record.  χ⁺ and χ⁻
#: are absolute, not referenced (their sidecar's ChiSeparationReference says so).
CHISEP_OUTPUTS = (
    # not chi_info: its reference region is χ's, not the sources'
    ("chi_para", "Chimap", "paramagnetic", "ppm", ("phase_info", "field_info", "unwrap_info", "local_info",
                                                   "chisep_info"), {"SkullStripped": True}),
    ("chi_dia", "Chimap", "diamagnetic", "ppm", ("phase_info", "field_info", "unwrap_info", "local_info",
                                                 "chisep_info"), {"SkullStripped": True}),
    ("r2prime", "R2primemap", None, "1/s", ("phase_info", "r2star_info", "chisep_info"), {"SkullStripped": True}),
)

#: Sidecar dictionaries of the stages (``phase_info``: PhaseUnits, PhaseUnitsSource and
#: PhaseRawRange go into every sidecar: the unit used is never left implicit).
INFO_FIELDS = ("phase_info", "field_info", "unwrap_info", "local_info", "chi_info", "r2star_info", "mask_info")
CHISEP_INFO_FIELDS = ("chisep_info",)


def init_gre_derivatives_wf(*, output_dir, entities, sources, common_meta, has_r2star=True, has_chisep=False,
                            name="gre_derivatives_wf"):
    """Write the derivatives of one acquisition.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    entities : dict
        subject / session / acquisition / run of the acquisition.
    sources : list of str
        BIDS URIs of the raw files (``bids:raw:sub-01/anat/...``).
    common_meta : dict
        Metadata that goes into every sidecar (echo times, field strength, B0 direction,
        the qsmprep version and the run's configuration summary).
    has_r2star : bool
        False for single-echo data (no R2*/T2* outputs).
    has_chisep : bool
        Also write :data:`CHISEP_OUTPUTS` (inputs ``chi_para``, ``chi_dia``, ``r2prime``,
        ``chisep_info``).

    Inputs
    ------
    chi, r2star, t2star, mask_filled, average, total_field, local_field
        Files from :func:`qsmprep.workflows.gre.init_gre_wf`.
    field_info, unwrap_info, local_info, chi_info, r2star_info, mask_info
        Sidecar dictionaries of the stages.

    Outputs
    -------
    out_files
        The written derivative paths.
    """
    workflow = pe.Workflow(name=name)
    outputs = OUTPUTS + (CHISEP_OUTPUTS if has_chisep else ())
    files = [o[0] for o in outputs]
    infos = list(INFO_FIELDS) + (list(CHISEP_INFO_FIELDS) if has_chisep else [])
    inputnode = pe.Node(IdentityInterface(fields=files + infos), name="inputnode")
    written = [o for o in outputs if has_r2star or o[0] not in ("r2star", "t2star")]
    collect = pe.Node(Merge(len(written)), name="collect", run_without_submitting=True)
    outputnode = pe.Node(IdentityInterface(fields=["out_files"]), name="outputnode")
    for i, (field, suffix, desc, units, infos, fixed) in enumerate(written, start=1):
        sink = pe.Node(
            DerivativesSink(
                out_dir=str(output_dir), entities=dict(entities), suffix=suffix,
                meta=dict(common_meta, **fixed), sources=list(sources),
            ),
            name=f"ds_{field}", run_without_submitting=True,
        )
        if desc:
            sink.inputs.desc = desc
        if units:
            sink.inputs.units = units
        workflow.connect([(inputnode, sink, [(field, "in_file")])])
        if infos:
            merge = pe.Node(Merge(len(infos)), name=f"meta_{field}", run_without_submitting=True)
            for j, info in enumerate(infos, start=1):
                workflow.connect([(inputnode, merge, [(info, f"in{j}")])])
            workflow.connect([(merge, sink, [("out", "meta_extra")])])
        workflow.connect([(sink, collect, [("out_file", f"in{i}")])])
    workflow.connect([(collect, outputnode, [("out", "out_files")])])
    return workflow
