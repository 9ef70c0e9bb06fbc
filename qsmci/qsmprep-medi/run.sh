#!/usr/bin/env bash
# qsmprep MEDI dipole inversion: QSM-CI dipole stage.  qsmprep reads the consumed artifacts from $IN (and the
# runner's config.json parameter overrides, if any) and writes the produced one to $OUT.
set -euo pipefail
IN="${1:-/input}"; OUT="${2:-/output}"
exec qsmprep stage dipole --method medi "$IN" "$OUT"
