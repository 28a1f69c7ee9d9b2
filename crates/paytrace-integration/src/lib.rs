//! The middleware's tests that need programs from outside Rust (`tests/`),
//! so that `cargo test -p paytrace` needs none; each test binary checks at
//! its start for what it needs with `paytrace_testkit::require`, which says
//! how to install it. Besides them:
//!
//! - [`ledger`]: the stock ledger the SQL fence's tests run their phases
//!   against, on SQLite, PostgreSQL and MySQL/MariaDB;
//! - `hold_branch`: a participant the Redis fence test kills while it holds
//!   a branch;
//! - `fence_load`: a participant the SQL fence's crash test kills under load.

pub mod ledger;
