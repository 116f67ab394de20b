# Every target creates .venv on first use and (re)installs the project into it when the
# package layout changes, so a fresh clone needs nothing but Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Directories whose file lists the strict editable install links; their mtime changes when
# a module is added or removed, which is when the install must be redone.
PKG_DIRS := protos/shardkv protos/shardkv/v1 shardd router client

.PHONY: venv test proto lint typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(PKG_DIRS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=strict
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH scripts/genproto.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shardd router client

clean:
	rm -rf $(VENV) build *.egg-info

# The local cluster: NODES, N, R, W choose the topology of a new cluster; VAR holds its
# topology, data, logs and pid files; PORT is the router's port, nodes take the next ones.
VAR ?= var
PORT ?= 7100
CLUSTER := $(BIN)/python scripts/local_cluster.py --var $(VAR) --base-port $(PORT)
CLUSTER_OPTS := $(if $(NODES),--nodes $(NODES)) $(if $(N),--n $(N)) $(if $(R),--r $(R)) $(if $(W),--w $(W))

.PHONY: cluster cluster-status cluster-stop cluster-clean

cluster: $(STAMP)
	$(CLUSTER) start $(CLUSTER_OPTS)

cluster-status: $(STAMP)
	$(CLUSTER) status

cluster-stop: $(STAMP)
	$(CLUSTER) stop

cluster-clean: $(STAMP)
	$(CLUSTER) clean
