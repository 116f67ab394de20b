"""The real grpcurl binary against a running shardd, with the commands the README shows:

    grpcurl -plaintext 127.0.0.1:7101 list
    grpcurl -plaintext 127.0.0.1:7101 describe shardkv.v1.PutRequest
    grpcurl -plaintext -d '{"key":"aGVsbG8=","value":"d29ybGQ="}' 127.0.0.1:7101 shardkv.v1.KV/Put
    grpcurl -plaintext -d '{"key":"aGVsbG8="}' 127.0.0.1:7101 shardkv.v1.KV/Get

(keys and values are bytes, so grpcurl's JSON carries them in base64: "hello", "world").
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Proc

GRPCURL = Path(sys.executable).parent / "grpcurl"


def grpcurl(node: Proc, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [
        str(GRPCURL),
        "-plaintext",
        *(["-d", data] if data is not None else []),
        node.address,
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.timeout(60)
def test_list_describe_put_get(node: Proc) -> None:
    listed = grpcurl(node, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"shardkv.v1.KV", "shardkv.v1.Replica", "grpc.health.v1.Health"} <= set(services)

    described = grpcurl(node, "describe", "shardkv.v1.PutRequest")
    assert described.returncode == 0, described.stderr
    assert "bytes key = 1;" in described.stdout and "bytes value = 2;" in described.stdout

    put = grpcurl(
        node, "shardkv.v1.KV/Put", data=json.dumps({"key": b64(b"hello"), "value": b64(b"world")})
    )
    assert put.returncode == 0, put.stderr
    version = int(json.loads(put.stdout)["version"])  # uint64 travels as a JSON string

    got = grpcurl(node, "shardkv.v1.KV/Get", data=json.dumps({"key": b64(b"hello")}))
    assert got.returncode == 0, got.stderr
    answer = json.loads(got.stdout)
    assert answer["found"] is True
    assert base64.b64decode(answer["value"]) == b"world"
    assert int(answer["version"]) == version

    health = grpcurl(node, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}


@pytest.mark.timeout(60)
def test_malformed_requests_fail_and_the_node_keeps_serving(node: Proc) -> None:
    for bad in ('{"key": 5}', '{"nope": "aGVsbG8="}', "{not json"):
        result = grpcurl(node, "shardkv.v1.KV/Put", data=bad)
        assert result.returncode != 0, bad
        assert "Error" in result.stderr or "error" in result.stderr, result.stderr

    refused = grpcurl(node, "shardkv.v1.KV/Put", data='{"key": ""}')
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr and "key must not be empty" in refused.stderr

    scan = grpcurl(
        node, "shardkv.v1.KV/Scan", data=json.dumps({"start": b64(b"b"), "end": b64(b"a")})
    )
    assert "InvalidArgument" in scan.stderr and "must sort before" in scan.stderr

    still = grpcurl(node, "shardkv.v1.KV/Get", data=json.dumps({"key": b64(b"absent")}))
    assert still.returncode == 0 and json.loads(still.stdout) == {}  # found=false: all defaults
