"""The benchmark suite: a cluster load generator (`make bench`) and micro-benchmarks.

`python -m benchmarks.run` starts every system it measures as its own processes (shardkv
nodes and a router, a lone shardd, etcd members), drives them from one asyncio client
process, and writes JSON, Markdown and PNG results under benchmarks/results/.
"""
