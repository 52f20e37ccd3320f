#!/usr/bin/env bash
# A cluster in a box on this machine: a Ray head and worker nodes, each in its own network and
# mount namespace (own address, /dev/shm, /tmp, home), links shaped with tc tbf, S3 (moto) on the
# head. Needs root and iproute2. See clusterbox/__main__.py for the commands:
#   cluster/box.sh up --workers 2 --rate 100mbit      # foreground; Ctrl-C removes everything it made
#   cluster/box.sh exec head -- distmeta train resources.workers=3 resources.cpus_per_worker=1
#   cluster/box.sh cut node2 ; cluster/box.sh heal node2
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m clusterbox "$@"
