//! The demo shop's pieces that stand on their own and are tested alone.
//!
//! - [`ledger`]: the TCC participants' ledgers in SQLite or PostgreSQL,
//!   each phase in one transaction with the fence's row.
//! - [`stock`]: inventory levels in memory or in Redis, reserved atomically.

pub mod ledger;
pub mod stock;
