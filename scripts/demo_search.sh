#!/usr/bin/env bash
# Archive search demo: a georeferenced GeoTIFF mosaic of synthetic scenes, indexed with the quickstart's tiny
# PIR (trained first if needed), three text searches with GeoJSON and contact sheets (CPU, a few minutes).
source "$(dirname "$0")/setup_env.sh"
python scripts/demo_search.py "$@"
