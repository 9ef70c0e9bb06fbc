#!/usr/bin/env bash
# qsmprep field mapping: ROMEO unwrapping + linear echo fit: QSM-CI field-mapping stage.  qsmprep reads the consumed artifacts from $IN (and the
# runner's config.json parameter overrides, if any) and writes the produced one to $OUT.
set -euo pipefail
IN="${1:-/input}"; OUT="${2:-/output}"
exec qsmprep stage field-mapping --method romeo "$IN" "$OUT"
