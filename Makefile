# The two commands of the README are `make demo` and `make test`; the rest are their parts.
.PHONY: demo test up down build lint smoke demo-check

# Start the local stack, build, and run the pipeline on it.
demo: up build
	dev/demo.sh

# What CI runs (.ci/run): start the local stack, run every test against it (dev/test.sh, which
# runs alone too), then the lint, the benchmarks' smoke run, and the demo twice with the lake
# checked. One line each, so that `make -j` never runs two of them at once.
test: up
	dev/test.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory smoke
	$(MAKE) --no-print-directory demo-check

# Install what is missing and start PostgreSQL and the broker (no-op when already up).
up:
	dev/stack.sh up

# Stop exactly the processes `make up` started.
down:
	dev/stack.sh down

build:
	cargo build --release --locked

# Release profile, like the tests, the demo and the benchmarks: clippy then reuses their build
# scripts (librdkafka's C build above all) instead of building everything once more.
lint:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets --locked -- -D warnings

# Every benchmark once at a tiny size (it compiles and runs; no timing).
smoke: up
	dev/smoke.sh

# `make demo` twice, then the lake must hold the seed orders plus the demos', nothing twice.
demo-check: up
	dev/demo-check.sh
