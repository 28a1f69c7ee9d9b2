//! The formats that leave the process: the snapshot a restart reads back
//! (`paytrace-aggregator serve --state-dir`) and the windows replicas send
//! each other (`serve --peer`). Each is a set of types of its own, kept apart from
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
pub const SNAPSHOT_VERSION: u32 = 1;
/// The snapshot versions this build reads.
pub const SNAPSHOT_READS: &[u32] = &[1];

/// The windows format this build sends to its peers.
pub const WINDOWS_VERSION: u32 = 1;

/// Everything a restart would otherwise lose ([`crate::core::Core::snapshot`]),
/// in the snapshot format this build writes; serialise it (JSON) with a
/// header naming [`SNAPSHOT_VERSION`], and read back only the versions in
/// [`SNAPSHOT_READS`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Snapshot(pub(crate) v1::Snapshot);

/// The windows one replica sends another
/// ([`crate::core::Windows::to_message`]), in the windows format this build
/// writes; serialise it as JSON.
#[derive(Debug, serde::Serialize)]
#[serde(transparent)]
pub struct WindowsMessage(pub(crate) v1::Windows);
