#!/usr/bin/env bash
# Writes the Python stubs of protos/shardkv/v1/*.proto into OUT (default: beside the protos).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-protos}"
python -m grpc_tools.protoc -I protos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/shardkv/v1/*.proto
