"""GRE → T1w coregistration: T1w brain extraction, affine registration, maps in T1w space."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsmprep.interfaces.derivatives import DerivativesSink
from qsmprep.interfaces.registration import ApplyTransforms, CoregGREtoT1w, T1wBrainExtraction

COREG_INPUTS = ["t1w", "average", "mask", "chi", "r2star", "chi_info", "template", "template_mask"]
COREG_OUTPUTS = [
    "t1w_preproc", "t1w_brain", "t1w_mask", "xfm_gre2t1w", "xfm_t1w2gre", "gre_in_t1w", "chi_t1w",
    "r2star_t1w", "mask_t1w", "info",
]
#: suffix names of the transform derivatives (``derivative_path`` joins them after the prefix)
XFM_GRE2T1W = "from-GRE_to-T1w_mode-image_xfm"
XFM_T1W2GRE = "from-T1w_to-GRE_mode-image_xfm"


def init_coreg_wf(*, brain_extraction="threshold", stages=("rigid", "affine"), sloppy=False, has_r2star=True,
                  omp_nthreads=1, output_dir=None, entities=None, sources=None, common_meta=None,
                  t1w_uri=None, name="coreg_wf"):
    """Register the GRE echo-averaged magnitude to the T1w and resample χ, R2* and mask to T1w.

    The T1w is bias-corrected (N4) and skull-stripped (``brain_extraction``); the GRE
    echo-averaged magnitude (``average``, with the head: its skull and scalp help nothing
    since the metric is restricted to the dilated T1w brain mask) is registered to the
    bias-corrected T1w with ANTs rigid then affine stages, Mattes mutual information and the
    ``gre2t1w`` 3-level pyramid (:data:`qsmprep.anat.registration.LINEAR_PRESETS`).  χ and R2*
    are resampled into T1w space with linear interpolation, the mask with nearest neighbour.

    Parameters
    ----------
    brain_extraction : {"threshold", "template", "none"}
        ``none`` when the T1w is already skull-stripped; ``template`` needs ``template`` and
        ``template_mask`` inputs (e.g. from :func:`qsmprep.templates.get_template`);
        ``threshold`` (default) needs nothing (N4 + Otsu + morphology).
    stages : tuple
        ``("rigid", "affine")`` (default, as antsRegistrationSyN[a]) or ``("rigid",)``.
    sloppy : bool
        Faster, less accurate registration (coarser pyramid, fewer samples).
    has_r2star : bool
        False for single-echo data (no R2* to resample).
    omp_nthreads : int
        ITK threads of the registration and resampling nodes.
    output_dir, entities, sources, common_meta : optional
        When ``output_dir`` is given, the transforms and the ``space-T1w`` maps are written
        as derivatives of the acquisition ``entities``.
    t1w_uri : str, optional
        The T1w's BIDS URI, the ``SpatialReference`` of the ``space-T1w`` maps (BIDS asks for
        one where the space is not a standard template).

    Inputs
    ------
    t1w : T1w image (with skull, or skull-stripped with ``brain_extraction="none"``);
    average : GRE echo-averaged magnitude (``gre_wf.outputnode.average``);
    mask : GRE mask (``mask_filled``); chi, r2star : maps; chi_info : χ sidecar dictionary;
    template, template_mask : for ``brain_extraction="template"``.

    Outputs
    -------
    t1w_preproc, t1w_brain, t1w_mask, xfm_gre2t1w (``.mat``: GRE → T1w resampling),
    xfm_t1w2gre (its inverse), gre_in_t1w, chi_t1w, r2star_t1w, mask_t1w, info.
    """
    if brain_extraction not in ("threshold", "template", "none"):
        raise ValueError(f"brain_extraction must be 'threshold', 'template' or 'none', got {brain_extraction!r}")
    stages = tuple(stages)
    if stages not in (("rigid",), ("rigid", "affine"), ("affine",)):
        raise ValueError(f"stages must be ('rigid',), ('rigid', 'affine') or ('affine',), got {stages}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=COREG_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=COREG_OUTPUTS), name="outputnode")

    # one core: the T1w's brain extraction has no input from the GRE, so it runs beside the GRE's
    # unwrapping and echo fits (one core each) instead of holding the whole scheduler before them
    skullstrip = pe.Node(T1wBrainExtraction(method=brain_extraction, num_threads=1),
                         name="t1w_skullstrip", n_procs=1, mem_gb=1.0)
    coreg = pe.Node(
        CoregGREtoT1w(stages=list(stages), preset="sloppy" if sloppy else "gre2t1w", num_threads=omp_nthreads),
        name="coreg_gre2t1w", n_procs=omp_nthreads, mem_gb=1.5,
    )
    workflow.connect([
        (inputnode, skullstrip, [("t1w", "t1w")]),
        (skullstrip, coreg, [("corrected", "fixed")]),
        (inputnode, coreg, [("average", "moving")]),
        (coreg, outputnode, [("xfm", "xfm_gre2t1w"), ("inv_xfm", "xfm_t1w2gre"), ("warped", "gre_in_t1w"),
                             ("info", "info")]),
        (skullstrip, outputnode, [("corrected", "t1w_preproc"), ("brain", "t1w_brain")]),
    ])
    if brain_extraction == "template":
        workflow.connect([(inputnode, skullstrip, [("template", "template"), ("template_mask", "template_mask")])])
    # with brain_extraction "none" (skull-stripped T1w) the mask is the T1w's nonzero voxels
    workflow.connect([(skullstrip, coreg, [("mask", "fixed_mask")]),
                      (skullstrip, outputnode, [("mask", "t1w_mask")])])

    maps = [("chi", "linear", "float32"), ("mask", "nearestNeighbor", "uint8")]
    if has_r2star:
        maps.insert(1, ("r2star", "linear", "float32"))
    for field, interp, dtype in maps:
        node = pe.Node(ApplyTransforms(interpolation=interp, dtype=dtype, out_name=f"{field}_t1w.nii.gz",
                                       num_threads=omp_nthreads), name=f"{field}_to_t1w", mem_gb=1.0)
        workflow.connect([
            (inputnode, node, [(field, "in_file")]),
            (skullstrip, node, [("corrected", "reference")]),
            (coreg, node, [("xfm", "transforms")]),
            (node, outputnode, [("out_file", f"{field}_t1w")]),
        ])

    if output_dir is not None:
        _connect_derivatives(workflow, outputnode, output_dir=output_dir, entities=entities, sources=sources,
                             common_meta=common_meta, has_r2star=has_r2star, t1w_uri=t1w_uri)
    return workflow


def _connect_derivatives(workflow, outputnode, *, output_dir, entities, sources, common_meta, has_r2star,
                         t1w_uri=None):
    if entities is None:
        raise ValueError("entities are needed to name the derivatives")
    meta = dict(common_meta or {})
    in_t1w = {"SpatialReference": t1w_uri} if t1w_uri else {}
    srcs = list(sources or [])
    outputs = [
        ("xfm_gre2t1w", XFM_GRE2T1W, None, None, ".mat", {"FromSpace": "GRE", "ToSpace": "T1w"}),
        ("xfm_t1w2gre", XFM_T1W2GRE, None, None, ".mat", {"FromSpace": "T1w", "ToSpace": "GRE"}),
        ("chi_t1w", "Chimap", "T1w", "ppm", ".nii.gz",
         {"SkullStripped": True, "Interpolation": "linear", **in_t1w}),
        ("mask_t1w", "mask", "T1w", None, ".nii.gz",
         {"Type": "Brain", "Interpolation": "nearest neighbour", **in_t1w}),
    ]
    if has_r2star:
        outputs.append(("r2star_t1w", "R2starmap", "T1w", "1/s", ".nii.gz",
                        {"SkullStripped": False, "Interpolation": "linear", **in_t1w}))
    for field, suffix, space, units, ext, fixed in outputs:
        sink = pe.Node(
            DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix=suffix, extension=ext,
                            meta=dict(meta, **fixed), sources=srcs),
            name=f"ds_{field}", run_without_submitting=True,
        )
        if space:
            sink.inputs.space = space
        if field == "mask_t1w":
            sink.inputs.desc = "brain"
        if units:
            sink.inputs.units = units
        if field == "chi_t1w":  # χ in T1w space keeps χ's own sidecar (ReferenceRegion, methods)
            from nipype.interfaces.utility import Merge

            inputnode = workflow.get_node("inputnode")
            merge = pe.Node(Merge(2), name="chi_t1w_meta", run_without_submitting=True)
            workflow.connect([(inputnode, merge, [("chi_info", "in1")]), (outputnode, merge, [("info", "in2")]),
                              (outputnode, sink, [(field, "in_file")]), (merge, sink, [("out", "meta_extra")])])
            continue
        workflow.connect([(outputnode, sink, [(field, "in_file"), ("info", "meta_extra")])])
