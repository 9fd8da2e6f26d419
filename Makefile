# The two commands of the README are `make demo` and `make test`; the rest are their parts.
.PHONY: demo test up down build lint

# Start the local stack, build, and run the pipeline on it.
demo: up build
	dev/demo.sh

# Start the local stack and run every test against it.
test: up
	dev/test.sh

# Install what is missing and start PostgreSQL and the broker (no-op when already up).
up:
	dev/stack.sh up

# Stop exactly the processes `make up` started.
down:
	dev/stack.sh down

build:
	cargo build --release --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
