#!/usr/bin/env bash
# The demo (`make demo`, after `make up` and the build): bootstraps the table and topics.
# The producer and consumer are not built yet; the demo stops after `init` and says so.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
./target/release/orderstream init
echo
echo "demo: the table holds the ten seed orders and the topics exist."
echo "demo: the producer and consumer are not implemented yet, so the demo stops here."
