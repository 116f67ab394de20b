"""What the router serves over gRPC and HTTP.

- ``kv_service``    the public KV service: validate, delegate to the coordinator, map errors.
- ``admin_service`` the Admin service: topology, node add/remove, moves, repair.
- ``operations``    Admin's operator calls: cluster status, backup, restore.
- ``errors``        the router's errors and their codes in the shared status table.
- ``security``      TLS / mutual TLS credentials and the bearer-token interceptor.
- ``metrics``       Prometheus metrics computed at scrape time.
"""
