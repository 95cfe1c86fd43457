#!/bin/sh
# Download, extract, remap and verify scannet under $MSEG_DATA_ROOT (resumable; see README.md here).
# Extra arguments go to mseg-prepare, e.g. --workers 16 or --dry-run.
exec mseg-prepare all --datasets scannet --root "${MSEG_DATA_ROOT:?set MSEG_DATA_ROOT}" "$@"
