//! The formats that leave the process: the snapshot a restart reads back
//! ([`crate::state`]) and the windows replicas send each other
//! ([`crate::cluster`]). Each is a set of types of its own, kept apart from
//! the types the analysis works with: renaming an internal field changes no
//! byte on disk or on the wire, and a change of format is a new version
//! beside the old one, never an edit of it.
//!
//! The rules:
//! - a version's types never change once released; a new version is a new
//!   module, with conversions from the previous one, so a file or message
//!   of the previous version is still read;
//! - every version has a fixture written by the build that introduced it
//!   (`tests/fixtures/`), and a test that reads it and checks what it holds;
//! - an unknown (newer) version is refused with a message that says which
//!   version was met and which this build reads, never misread.
//!
//! Version 1 is the format of every snapshot and window written before the
//! formats had types of their own (the same JSON, byte for byte).

pub(crate) mod v1;

/// The snapshot format this build writes.
pub(crate) const SNAPSHOT_VERSION: u32 = 1;
/// The snapshot versions this build reads.
pub(crate) const SNAPSHOT_READS: &[u32] = &[1];

/// The windows format this build sends to its peers.
pub(crate) const WINDOWS_VERSION: u32 = 1;
