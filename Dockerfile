# qsmprep BIDS App image.  Build:  docker build -t qsmprep .
# Run:  docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmprep /data /out participant

# --- build stage: make the wheel -------------------------------------------------------
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
    && useradd --create-home --uid 1000 qsmprep \
    && mkdir -p /opt/templateflow && chmod -R a+rX /opt/templateflow
USER qsmprep
WORKDIR /home/qsmprep
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
