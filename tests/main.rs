//! Every integration test in one binary (`autotests = false` in Cargo.toml): `tests/common`
//! is compiled and linked once, not once per file. Each file is a module; run one with a name
//! filter, e.g. `dev/test.sh logical::` or `cargo nextest run --release -E 'test(/^delta::/)'`.

mod common;

mod check;
mod consume;
mod delta;
mod docs;
mod init;
mod logical;
mod pipeline;
mod produce;
mod service;
mod status;
mod stop;
mod tls;
