//! No library: this package holds (besides `hold_branch`, a participant
//! the Redis fence test kills while it holds a branch) the middleware's tests that need programs
//! from outside Rust (`tests/`), so that `cargo test -p paytrace` needs
//! none. Each test binary checks at its start for what it needs with
//! `paytrace_testkit::require`, which says how to install it.
