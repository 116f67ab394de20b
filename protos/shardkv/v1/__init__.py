"""Generated protobuf and gRPC stubs of the shardkv.v1 wire API (regenerate with `make proto`)."""
