# The two commands of README.md, and the steps they are made of.
#
#   make run    build (release) and run a broker on ./quiver-data
#   make test   build everything and run the whole test suite, lint included

CARGO ?= cargo

.PHONY: run test build lint

run:
	$(CARGO) build --release --package quiver-host --bin quiver
	./target/release/quiver serve

# The integration tests start target/debug/quiver and run the SDK examples, so both
# are built before the tests run.
test: build
	$(CARGO) test --workspace
	$(MAKE) lint

build:
	$(CARGO) build --workspace --bins --examples

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
