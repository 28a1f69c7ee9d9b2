//! The demo shop's pieces that stand on their own and are tested alone.
//!
//! - [`stock`]: inventory levels in memory or in Redis, reserved atomically.

pub mod stock;
