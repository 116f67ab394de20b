# Every target creates .venv on first use and (re)installs the project into it when the
# package layout changes, so a fresh clone needs nothing but Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Directories whose file lists the strict editable install links; their mtime changes when
# a module is added or removed, which is when the install must be redone.
PKG_DIRS := protos/shardkv protos/shardkv/v1 common serving shardd $(wildcard router router/*/) client client/cli
# The C sources the install compiles (it needs a compiler: system-deps below).
NATIVE_SRC := common/_ring_hash.c router/requests/_spans.c

.PHONY: venv system-deps test proto lint typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(PKG_DIRS) $(NATIVE_SRC)
	PYTHON=$(PYTHON) scripts/install-system-deps.sh cc python-headers
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]' --config-settings editable_mode=strict
	touch $@

# Debian packages the suite runs for real (etcd, strace, promtool): installed when missing.
system-deps:
	@scripts/install-system-deps.sh

# lint and typecheck first: CI runs nothing but this target.
test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH scripts/genproto.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	for pkg in common serving shardd router client; do $(BIN)/mypy $$pkg || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
	rm -f common/*.so router/requests/*.so

# The local cluster: NODES, N, R, W choose the topology of a new cluster; VAR holds its
# topology, data, logs and pid files; PORT is the router's port, nodes take the next ones.
# TOPOLOGY=etcd keeps the topology in a local etcd (installed from Debian when missing) on
# PORT-10, shared by ROUTERS routers (r2 on PORT-1, ...); a cluster remembers both.
VAR ?= var
PORT ?= 7100
CLUSTER := $(BIN)/python scripts/local_cluster.py --var $(VAR) --base-port $(PORT)
CLUSTER_OPTS := $(if $(NODES),--nodes $(NODES)) $(if $(N),--n $(N)) $(if $(R),--r $(R)) $(if $(W),--w $(W)) \
	$(if $(TOPOLOGY),--topology $(TOPOLOGY)) $(if $(ROUTERS),--routers $(ROUTERS))

.PHONY: cluster cluster-status cluster-stop cluster-clean

cluster: $(STAMP)
	@$(if $(filter etcd,$(TOPOLOGY)),scripts/install-system-deps.sh etcd etcdctl)
	@$(CLUSTER) start $(CLUSTER_OPTS)

cluster-status: $(STAMP)
	@$(CLUSTER) status

cluster-stop: $(STAMP)
	@$(CLUSTER) stop

cluster-clean: $(STAMP)
	@$(CLUSTER) clean

# Benchmarks (benchmarks/README.md). bench-deps installs etcd from Debian (as root, or
# through sudo) (the `bench` extra comes with every install); bench runs the suite (about 13 minutes) and
# writes benchmarks/results/<timestamp>.{json,md,png}; bench-quick is a one-minute subset;
# bench-soak a steady 5-minute run (SOAK_MINUTES); bench-micro the pytest-benchmark
# micro-benchmarks, then group commit at 1 and 64 writers (benchmarks/bench_group_commit.py).
# BENCH_ARGS passes options, e.g. BENCH_ARGS="--systems shardkv,etcd-1".
BENCH := $(BIN)/python -m benchmarks.run
BENCH_ARGS ?=
SOAK_MINUTES ?= 5

.PHONY: bench bench-quick bench-soak bench-micro bench-deps

bench-deps: $(STAMP) system-deps

bench: $(STAMP)
	$(BENCH) --profile full $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BENCH) --profile quick $(BENCH_ARGS)

bench-soak: $(STAMP)
	$(BENCH) --profile soak --minutes $(SOAK_MINUTES) $(BENCH_ARGS)

bench-micro: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python -m pytest benchmarks/micro --benchmark-only --benchmark-sort=name \
		--benchmark-columns=min,median,mean,stddev,ops,rounds \
		--benchmark-json=benchmarks/results/micro-$$(date +%Y%m%d-%H%M%S).json $(PYTEST_ARGS)
	$(BIN)/python benchmarks/bench_group_commit.py --seconds 2
