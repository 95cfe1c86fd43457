#!/bin/sh
# Download, extract, remap, relabel and verify idd under $MSEG_DATA_ROOT (resumable; see README.md here).
# Extra arguments go to mseg-prepare, e.g. --workers 16 or --dry-run.
exec mseg-prepare all --datasets idd --root "${MSEG_DATA_ROOT:?set MSEG_DATA_ROOT}" "$@"
