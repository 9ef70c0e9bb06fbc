"""One settings object for a qsmprep run: execution options and algorithm choices.

The CLI builds a :class:`Config` from its arguments and an optional preset
(``--config preset.json`` or ``.toml``).  Only the top-level workflow builder reads it;
stage builders receive explicit arguments.  The resolved configuration is written to
the work directory, into ``dataset_description.json`` (``GeneratedBy[0].Configuration``)
and, per stage, into the sidecars of the outputs it made.

Each processing stage is a :class:`Stage`: a named ``method`` (validated against
:data:`METHODS`) plus method-specific ``params`` that are passed as keyword arguments
to the pure function in :mod:`qsmprep.qsm`.  Default methods are in
:data:`DEFAULT_METHODS`; the default *value* of every option is in the signature of the
function that uses it, and nowhere else (:func:`method_defaults`).

A preset looks like::

    {"workflow": {"unwrapping": {"method": "skimage"},
                  "inversion": {"method": "tkd", "params": {"threshold": 0.2}},
                  "reference": {"method": "whole-brain"}}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qsmprep.errors import InputError

#: Allowed methods per stage (only what is implemented; a choice listed here always runs).
METHODS = {
    "phase_units": ("auto", "radians", "degrees", "int12", "int12-signed", "uint16", "rescale"),
    "phase_offset": ("none", "mcpc3ds"),
    "denoise": ("none", "mppca"),
    "unwrapping": ("laplacian", "romeo", "skimage"),
    "combination": ("linear", "nonlinear", "per-echo"),
    "r2star": ("loglinear", "arlo"),
    "echo_average": ("rss", "mean"),
    "masking": ("threshold", "bet", "none"),
    "background": ("vsharp", "pdf", "lbv", "ismv", "resharp"),
    "inversion": ("tkd", "tikhonov", "ilsqr", "medi", "medi+0", "tv", "nltv", "rts", "whqsm"),
    "unringing": ("none", "subvoxel-shift"),
    "reference": ("whole-brain", "csf", "roi", "none"),
    "chi_separation": ("none", "chisep"),
}

#: Default method of each stage: fast, robust methods for phase handling, and for the
#: field-to-χ steps the pair validated best on the demo phantom through the whole pipeline:
#: LBV + MEDI (MEDI is the lesion study's method).  Unwrapping is ROMEO, the exact
#: unwrapping the 2024 QSM consensus asks for: through the whole pipeline it beats the
#: Laplacian's XSIM on both phantom families (1 mm demo 0.828 vs 0.800, the MNI head's four
#: protocols 0.746-0.760 vs 0.735-0.752) at an equal NRMSE (demo 48.1 vs 48.8 %, MNI within
#: 0.7 points), and its total field is 2π-exact where the Laplacian's is off by a smooth
#: function near strong sources (the demo's calcification moment 0.3 % vs 23 % off; README,
#: ``benchmarks/bench_accuracy.py``); the pipeline computes ROMEO's quality map for the mask
#: with either method, so it costs no more time.  On the 1 mm phantom LBV's local field
#: gives every inversion a better χ than PDF's (MEDI voxel NRMSE 0.13 vs 0.39, iLSQR 0.51 vs
#: 0.70, TV 0.35 vs 0.60; README, ``benchmarks/bench_pipeline.py``); PDF stays one preset
#: line away.  Unringing (Gibbs ringing of χ, local subvoxel shifts) is on for voxels up to
#: 1.1 mm: at 1 mm on the MNI head, whose signal is k-space cropped as every scan is, it lowers
#: NRMSE by 0.8-1.1 points and halves the calcification moment error, and on the demo (no
#: truncation) it changes nothing that matters; at 3 mm it blurs the nuclei on both families
#: (README, "Gibbs ringing").
DEFAULT_METHODS = {
    "phase_units": "auto", "phase_offset": "none", "denoise": "none", "unwrapping": "romeo",
    "combination": "linear", "r2star": "loglinear", "echo_average": "rss", "masking": "threshold", "background": "lbv",
    "inversion": "medi", "unringing": "subvoxel-shift", "reference": "whole-brain", "chi_separation": "none",
}

#: The options the configuration lists for a method (and so ``dataset_description.json``
#: and the ``QSMPipeline`` of every sidecar).  Only their *names* are here: each value is
#: the default in the signature of the function that uses it (:func:`method_defaults`).
#: Each stage's own sidecar keys list every option it ran with.
LISTED_OPTIONS = {
    ("inversion", "tkd"): ("threshold",),
    ("inversion", "tikhonov"): ("lambda_", "lambda_rule"),
    ("inversion", "ilsqr"): ("tol", "max_iter"),
    ("inversion", "medi"): ("lambda_", "lambda_rule", "edge_fraction"),
    ("inversion", "medi+0"): ("lambda_", "lambda_rule", "edge_fraction"),
    ("inversion", "tv"): ("lambda_", "lambda_rule"),
    ("inversion", "nltv"): ("lambda_", "lambda_rule"),
    ("inversion", "rts"): ("lambda_", "lambda_rule", "delta"),
    ("inversion", "whqsm"): ("lambda_", "beta"),
    ("background", "vsharp"): ("radius_max_mm",),
    ("background", "pdf"): ("tol", "max_iter", "pad"),
    ("background", "lbv"): ("tol", "max_iter", "peel"),
    ("background", "ismv"): ("radius_mm", "tol"),
    ("background", "resharp"): ("radius_mm", "lambda_"),
    ("r2star", "loglinear"): ("r2star_max",),
    ("r2star", "arlo"): ("r2star_max",),
    ("combination", "linear"): ("intercept",),
    ("combination", "nonlinear"): ("max_iter",),
    ("combination", "per-echo"): ("intercept",),
    ("masking", "threshold"): ("refine", "grow_mm", "erode_mm"),
    ("masking", "bet"): ("f", "g", "refine", "grow_mm", "erode_mm"),
    ("masking", "none"): ("refine", "grow_mm", "erode_mm"),
    ("chi_separation", "chisep"): ("lambda_", "lambda_rule", "edge_fraction", "r2"),
    ("denoise", "mppca"): ("patch_radius",),
    ("unringing", "subvoxel-shift"): ("max_voxel_mm", "n_shifts", "min_window", "max_window"),
}

#: Where the pipeline deliberately departs from a function's own default (a choice, not a
#: copy): the functions leave the phase-quality refinement off, the pipeline refines the
#: threshold and BET masks (README, "Algorithms and presets").
PIPELINE_CHOICES = {
    ("masking", "threshold"): {"refine": True},
    ("masking", "bet"): {"refine": True},
}


def signature_defaults(stage, method):
    """Every option of ``method`` with its default, read from the signature that owns it."""
    from qsmprep.qsm import background, echoes, inversion, masking
    from qsmprep.qsm._params import keyword_defaults

    if stage == "inversion":
        return inversion.default_parameters(method)
    if stage == "background":
        return background.default_parameters(method)
    if stage == "masking":
        return masking.default_parameters(method)
    if stage == "r2star":
        return keyword_defaults(echoes.r2star_map, exclude=("method", "mask"))
    if stage == "denoise" and method == "mppca":
        from qsmprep.qsm import denoise

        return keyword_defaults(denoise.denoise_magnitude, exclude=("mask",))
    if stage == "unringing" and method == "subvoxel-shift":
        from qsmprep.qsm import unring

        return {**keyword_defaults(unring.unring_as_planned, exclude=("workers",)),
                **keyword_defaults(unring.unring, exclude=("axes", "mask", "workers"))}
    if stage == "chi_separation" and method == "chisep":
        from qsmprep.qsm import chisep

        return chisep.parameters()
    if stage == "combination":
        func = echoes.fit_field_nonlinear if method == "nonlinear" else echoes.fit_field
        return keyword_defaults(func, exclude=("method", "phase_wrapped", "mask", "signal_fraction", "init_slope",
                                                "init_offset"))
    return {}


def method_defaults(stage, method):
    """The parameters a stage starts from with ``method``: :data:`LISTED_OPTIONS` with their
    signature defaults, then :data:`PIPELINE_CHOICES`."""
    names = LISTED_OPTIONS.get((stage, method), ())
    if not names:
        return {}
    defaults = signature_defaults(stage, method)
    missing = [n for n in names if n not in defaults]
    if missing:  # a listed option without a default in its signature is a bug here
        raise RuntimeError(f"{stage} {method}: no signature default for {missing}")
    params = {n: defaults[n] for n in names}
    params.update(PIPELINE_CHOICES.get((stage, method), {}))
    return params


class _MethodDefaults(dict):
    """``METHOD_DEFAULTS[(stage, method)]``: :func:`method_defaults`, computed on first use
    (importing the numerics is deferred until a configuration is built)."""

    def __missing__(self, key):
        value = self[key] = method_defaults(*key)
        return value

    def get(self, key, default=None):
        return self[key] if key in LISTED_OPTIONS else default


#: Parameters a method starts from when a preset switches a stage to it.
METHOD_DEFAULTS = _MethodDefaults()


def default_stages():
    """``{stage: {"method", "params"}}`` of the default pipeline."""
    return {stage: {"method": method, "params": method_defaults(stage, method)}
            for stage, method in DEFAULT_METHODS.items()}


ECHO_STRATEGIES = ("combined", "per-echo")
PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph")


@dataclass
class Stage:
    """One processing stage: a method name and its keyword parameters."""

    method: str
    params: dict = field(default_factory=dict)


@dataclass
class WorkflowSettings:
    """Algorithm choices; every field is recorded in the outputs' sidecars."""

    #: Stage name -> :class:`Stage`; see :data:`METHODS` for the choices.
    stages: dict = field(default_factory=lambda: {k: Stage(**v) for k, v in default_stages().items()})
    #: Invert the echo-combined field ("combined") or each echo and average ("per-echo").
    echo_strategy: str = "combined"
    #: Zero padding (voxels per side) for FFT-based operators.
    pad_voxels: int = 16

    def stage(self, name):
        return self.stages[name]


@dataclass
class ExecutionSettings:
    """Where data comes from and goes to, and how the graph runs."""

    bids_dir: str | None = None
    output_dir: str | None = None
    work_dir: str | None = None
    participant_label: list | None = None
    session_label: list | None = None
    nprocs: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    #: Options of the SLURM plugins (``--plugin-args``).
    plugin_args: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    #: Field strength (T) to use when sidecars lack MagneticFieldStrength.
    b0: float | None = None
    verbosity: int = 0
    run_uuid: str | None = None
    #: A brain mask (NIfTI in the GRE grid) replacing the computed one (``--mask``; one acquisition).
    mask: str | None = None
    #: BIDS derivatives folder with per-acquisition ``desc-brain_mask`` files (``--derivatives``).
    derivatives: str | None = None
    #: Also write χ, R2* and T2* as DICOM series (``--dicom-export``).
    dicom_export: bool = False
    #: BIDS derivatives folder with R2 (or T2) maps for χ-separation (``--r2-dir``).
    r2_dir: str | None = None


@dataclass
class AnatSettings:
    """Registration and ROI options (used when the participant has a T1w)."""

    #: Coregister the GRE echo average to the T1w (when there is one).
    coreg: bool = True
    #: TemplateFlow template for T1w normalisation, or None (no template space, no atlas).
    template: str | None = None
    #: TemplateFlow atlases (``name[:desc]``) in ``template`` for ROI tables.
    atlases: list = field(default_factory=list)
    #: BIDS-derivatives folder with T1w-space ``*_dseg.nii.gz`` segmentations (+ ``dseg.tsv``).
    segmentation_dir: str | None = None
    #: Erode every label by this many voxels before ROI statistics (partial-voxel guard).
    roi_erode: int = 0
    #: Faster, less accurate registration.
    sloppy: bool = False
    #: BIDS-derivatives folder with lesion masks (:mod:`qsmprep.workflows.lesions`).
    lesion_dir: str | None = None
    #: Options of the lesion analysis (``qsmprep.analysis.lesions.lesion_parameters()``;
    #: only those set by the user: the defaults are the functions' signatures).
    lesion_options: dict = field(default_factory=dict)


@dataclass
class Config:
    """The resolved settings of one run."""

    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    anat: AnatSettings = field(default_factory=AnatSettings)

    def to_dict(self):
        """JSON-serialisable dictionary of the whole configuration."""
        return asdict(self)

    def to_json(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def update_workflow(self, preset, *, source="preset"):
        """Apply a preset's ``workflow`` section (validated) on top of the current settings."""
        wf = preset.get("workflow", preset)
        unknown = set(wf) - set(METHODS) - {"echo_strategy", "pad_voxels", "stages"}
        if unknown:
            raise InputError(
                f"unknown workflow setting(s) {sorted(unknown)}; known: "
                f"{sorted(METHODS) + ['echo_strategy', 'pad_voxels']}",
                path=source,
            )
        stages = dict(wf.get("stages", {}))
        stages.update({k: v for k, v in wf.items() if k in METHODS})
        for name, value in stages.items():
            if isinstance(value, str):
                value = {"method": value}
            if not isinstance(value, dict) or set(value) - {"method", "params"}:
                raise InputError(
                    f"stage {name!r} must be a method name or {{'method': ..., 'params': {{...}}}}",
                    path=source,
                )
            current = self.workflow.stages[name]
            method = value.get("method", current.method)
            if method not in METHODS[name]:
                raise InputError(
                    f"{name} method {method!r} is not one of {list(METHODS[name])}", path=source
                )
            params = dict(METHOD_DEFAULTS.get((name, method), {})) if method != current.method else dict(current.params)
            params.update(value.get("params", {}))
            self.workflow.stages[name] = Stage(method=method, params=params)
        if "echo_strategy" in wf:
            if wf["echo_strategy"] not in ECHO_STRATEGIES:
                raise InputError(
                    f"echo_strategy {wf['echo_strategy']!r} is not one of {list(ECHO_STRATEGIES)}",
                    path=source,
                )
            self.workflow.echo_strategy = wf["echo_strategy"]
        if "pad_voxels" in wf:
            pad = wf["pad_voxels"]
            if not isinstance(pad, int) or pad < 0:
                raise InputError(f"pad_voxels must be a non-negative integer, got {pad!r}", path=source)
            self.workflow.pad_voxels = pad
        if (self.workflow.stages["combination"].method == "nonlinear"
                and self.workflow.stages["unwrapping"].method == "laplacian"):  # romeo/skimage: 2π-consistent
            raise InputError(
                "combination 'nonlinear' fits the complex signal starting from the unwrapped phase "
                "and needs it 2π-consistent with the data; Laplacian unwrapping is exact only up to "
                "a smooth function, so use unwrapping 'romeo' or 'skimage' with it",
                path=source,
            )
        _check_stage_params(self.workflow.stages, source)
        # The per-echo strategy needs per-echo fields, and per-echo fields imply the strategy.
        if self.workflow.stages["combination"].method == "per-echo":
            self.workflow.echo_strategy = "per-echo"
        elif self.workflow.echo_strategy == "per-echo":
            self.workflow.stages["combination"] = Stage("per-echo", {"intercept": True})
        return self


def _check_stage_params(stages, source):
    """Refuse parameters a method does not take, and a 'roi' reference without its mask file."""
    from qsmprep.qsm import background, inversion

    for name, module in (("background", background), ("inversion", inversion)):
        stage = stages[name]
        unknown = sorted(set(stage.params) - module.method_parameters(stage.method))
        if unknown:
            raise InputError(
                f"{name} method {stage.method!r} has no parameter(s) {unknown}; it takes "
                f"{sorted(module.method_parameters(stage.method))}", path=source,
            )
    sep = stages["chi_separation"]
    if sep.method == "chisep":
        from qsmprep.qsm import chisep

        unknown = sorted(set(sep.params) - set(chisep.parameters()))
        if unknown:
            raise InputError(f"chi_separation method 'chisep' has no parameter(s) {unknown}; it takes "
                             f"{sorted(chisep.parameters())}", path=source)
    elif sep.params:
        raise InputError(f"chi_separation 'none' takes no parameters, got {sorted(sep.params)}", path=source)
    rule = stages["inversion"].params.get("lambda_rule", "fixed")
    if rule not in inversion.LAMBDA_RULES:
        raise InputError(f"inversion lambda_rule {rule!r} is not one of {list(inversion.LAMBDA_RULES)}",
                         path=source)
    if stages["inversion"].method == "whqsm" and rule != "fixed":
        raise InputError(f"inversion 'whqsm' takes lambda_rule 'fixed' only, got {rule!r}: its data term includes "
                         "the background field it fits, which the automatic rules' residual leaves out", path=source)
    ref = stages["reference"]
    if ref.method == "roi":
        roi = ref.params.get("mask")
        if not roi:
            raise InputError("reference 'roi' needs params {'mask': '<reference ROI mask, NIfTI in the GRE "
                             "grid>'}", path=source)
        if not Path(roi).is_file():
            raise InputError(f"reference ROI mask {roi} does not exist", path=source)
        ref.params["mask"] = str(Path(roi).absolute())
    elif ref.params:
        raise InputError(f"reference {ref.method!r} takes no parameters, got {sorted(ref.params)}", path=source)


def load_preset(path):
    """Read a JSON or TOML preset file into a dictionary (clear error if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("configuration preset not found", path=path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError as exc:  # Python 3.10
                raise InputError("TOML presets need Python >= 3.11; use JSON", path=path) from exc

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise InputError(f"cannot parse configuration preset: {exc}", path=path) from exc


def mock_config(**workflow):
    """A default :class:`Config` for tests, with optional workflow overrides."""
    cfg = Config()
    if workflow:
        cfg.update_workflow({"workflow": workflow}, source="mock_config")
    return cfg
