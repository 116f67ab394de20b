"""shardkv: a distributed key-value database; the generated wire API lives in shardkv.v1."""
