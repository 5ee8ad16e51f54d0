# The two commands of README.md, and the steps they are made of.
#
#   make run    build (release) and run a broker on ./quiver-data, example plugins ready
#   make test   build everything and run the whole test suite, lint included

CARGO ?= cargo
WASM := wasm32-wasip2
EXAMPLE_PLUGINS := plugins/target/$(WASM)/release

.PHONY: run test build plugins example-plugins wasm-target lint

run: example-plugins
	$(CARGO) build --release --package quiver-host --bin quiver
	./target/release/quiver serve --plugin-dir $(EXAMPLE_PLUGINS)

# The integration tests start target/debug/quiver, run the SDK examples, and deploy
# the example and test plugins, so all of them are built first.
test: plugins build
	$(CARGO) test --workspace
	$(MAKE) lint

build:
	$(CARGO) build --workspace --bins --examples

# Plugins are WebAssembly components: the wasm32-wasip2 target comes from rustup.
wasm-target:
	rustup target add $(WASM)

example-plugins: wasm-target
	$(CARGO) build --manifest-path plugins/Cargo.toml --target $(WASM) --release

plugins: example-plugins
	$(CARGO) build --manifest-path tests/plugins/Cargo.toml --target $(WASM) --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --all --manifest-path plugins/Cargo.toml -- --check
	$(CARGO) fmt --all --manifest-path tests/plugins/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --target $(WASM) --release -- -D warnings
	$(CARGO) clippy --manifest-path tests/plugins/Cargo.toml --target $(WASM) --release -- -D warnings
