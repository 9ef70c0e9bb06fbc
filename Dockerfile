# qsmprep BIDS App image.  Build:  docker build -t qsmprep .
# Run:  docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmprep /data /out participant

# --- build stage: make the wheel (the version is baked in from qsmprep/_version.py) -----
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY qsmprep ./qsmprep
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /wheels

# --- runtime stage ---------------------------------------------------------------------
FROM python:3.11-slim
ENV OMP_NUM_THREADS=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba-cache
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 1000 qsmprep
# The template and atlases the README's examples use (--template MNI152NLin2009cAsym --atlas
# HOSPA:th25 HOCPAL:th25), fetched at build time so the image runs with --network none, and
# readable by any uid (docker run --user, apptainer).  Others: `qsmprep prefetch` into a
# bind-mounted TEMPLATEFLOW_HOME (see README).
RUN mkdir -p /opt/templateflow \
    && qsmprep prefetch --template MNI152NLin2009cAsym --atlas HOSPA:th25 HOCPAL:th25 \
    && chmod -R a+rX /opt/templateflow
ENV QSMPREP_OFFLINE=1
USER 1000:1000
WORKDIR /home/qsmprep
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
