"""What the two servers (router and shardd) share; needs the ``server`` extra.

- ``telemetry`` the request interceptor (request ids, counts, latencies, log lines) and the
  Prometheus endpoint.
- ``tally``     plain-integer histograms and counters that metrics read at scrape time.
- ``status``    the one table from exceptions to gRPC status codes, and the handler
  wrappers every servicer of node and router uses.
"""

from shardkv.common.extras import require_extra

require_extra("server", "shardkv.serving")
