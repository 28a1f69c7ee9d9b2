//! Restarts that lose nothing (`serve --state-dir DIR`): the pipeline's
//! state written to a snapshot file periodically and at shutdown, and read
//! back at start.
//!
//! The snapshot holds the rolling windows (an hour of per-minute sketches),
//! the recent and slowest flows with their spans, the traces still
//! assembling, the flows still waiting for their other traces, and the TCC
//! transactions followed (so a branch tried before a restart and never
//! confirmed is still reported frozen). Arrival times are kept as ages and
//! aged by the time the process was down, so idle periods run on across the
//! restart.
//!
//! The file is gzip-compressed JSON with a header naming its format and
//! version, written to a temporary file, synced and renamed over the last
//! one, so a crash mid-write leaves the previous snapshot whole. A file that
//! cannot be read back (truncated, not ours, another version) is renamed
//! aside with the reason in the log and the start goes on empty: never a
//! crash loop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The snapshot's file name in the state directory.
pub const SNAPSHOT_FILE: &str = "paytrace-aggregator.snapshot.json.gz";
/// The `format` every snapshot declares.
const FORMAT: &str = "paytrace-aggregator-snapshot";
/// The version this build writes (its types: [`crate::format`]).
const VERSION: u32 = paytrace_analysis::format::SNAPSHOT_VERSION;

/// Why a state directory cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The directory cannot be created or written.
    #[error("cannot use {dir} as the state directory: {source}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// What became of the snapshot found at start.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loaded {
    /// There was none.
    Nothing,
    /// It was read back; the pipeline holds its state.
    Restored,
    /// It could not be read and was moved to the path given; the pipeline
    /// starts empty.
    SetAside(PathBuf),
}

/// The state directory: where snapshots are written and read.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("paytrace-doc-state-{}", std::process::id()));
/// let state = paytrace_aggregator::state::StateDir::open(&dir).unwrap();
/// assert!(state.snapshot_path().ends_with("paytrace-aggregator.snapshot.json.gz"));
/// ```
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    format: &'a str,
    version: u32,
    written_unix_ns: u64,
    pipeline: &'a T,
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    written_unix_ns: u64,
    pipeline: T,
}

impl StateDir {
    /// Creates `dir` if needed and checks that it can be written.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        let error = |source| StateError::Directory {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(error)?;
        let probe = dir.join(".paytrace-write-test");
        std::fs::write(&probe, b"").map_err(error)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self { dir })
    }

    /// Where the snapshot is.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Writes `state` atomically: a temporary file, synced, renamed over the
    /// previous snapshot, the directory synced.
    pub(crate) fn save<T: Serialize>(&self, state: &T, wall: SystemTime) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let file = std::fs::File::create(&tmp)?;
        // serde_json writes a token at a time: buffered before the
        // compressor, whose every call has a fixed cost (unbuffered, the
        // same snapshot took 20 times longer).
        let mut json = std::io::BufWriter::with_capacity(
            256 * 1024,
            flate2::write::GzEncoder::new(file, flate2::Compression::fast()),
        );
        serde_json::to_writer(
            &mut json,
            &EnvelopeOut {
                format: FORMAT,
                version: VERSION,
                written_unix_ns: unix_ns(wall),
                pipeline: state,
            },
        )?;
        let file = json
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .finish()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, self.snapshot_path())?;
        // The rename itself must survive a power loss.
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Reads the snapshot, if there is one. A snapshot that cannot be read
    /// back is moved aside (`….set-aside-<unix seconds>`) and reported in
    /// the `Err`, with the path it was moved to.
    pub(crate) fn load<T: for<'de> Deserialize<'de>>(
        &self,
        wall: SystemTime,
    ) -> Result<Option<(T, Duration)>, (String, PathBuf)> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.set_aside(&path, &format!("cannot be read: {e}"), wall)),
        };
        match decode::<T>(&bytes) {
            Ok((state, written_unix_ns)) => {
                let down = Duration::from_nanos(unix_ns(wall).saturating_sub(written_unix_ns));
                Ok(Some((state, down)))
            }
            Err(why) => Err(self.set_aside(&path, &why, wall)),
        }
    }

    fn set_aside(&self, path: &Path, why: &str, wall: SystemTime) -> (String, PathBuf) {
        let aside = self.dir.join(format!(
            "{SNAPSHOT_FILE}.set-aside-{}",
            unix_ns(wall) / 1_000_000_000
        ));
        match std::fs::rename(path, &aside) {
            Ok(()) => (why.to_owned(), aside),
            Err(e) => (
                format!("{why}; and it cannot be moved aside ({e}): it will be overwritten"),
                path.to_owned(),
            ),
        }
    }
}

/// The state and its write time from a snapshot's bytes, or why not.
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(T, u64), String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut json)
        .map_err(|e| format!("it is damaged (not a whole gzip stream: {e})"))?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|e| format!("it is damaged (not a whole snapshot: {e})"))?;
    if header.format != FORMAT {
        return Err(format!(
            "it is not a paytrace-aggregator snapshot (format {:?})",
            header.format
        ));
    }
    if !paytrace_analysis::format::SNAPSHOT_READS.contains(&header.version) {
        return Err(format!(
            "it is format version {} and this build reads version {}: \
             a newer build wrote it (start that build, or let this one start empty)",
            header.version,
            paytrace_analysis::format::SNAPSHOT_READS
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let envelope: EnvelopeIn<T> = serde_json::from_slice(&json)
        .map_err(|e| format!("it is damaged (its state does not parse: {e})"))?;
    Ok((envelope.pipeline, envelope.written_unix_ns))
}

/// A snapshot's bytes as a `Write` sink would have them, for tests.
#[cfg(test)]
fn encode<T: Serialize>(state: &T, written_unix_ns: u64) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let envelope = EnvelopeOut {
        format: FORMAT,
        version: VERSION,
        written_unix_ns,
        pipeline: state,
    };
    serde_json::to_writer(&mut gz, &envelope).expect("serialises");
    gz.flush().expect("flushes");
    gz.finish().expect("finishes")
}

fn unix_ns(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn dir(name: &str) -> StateDir {
        let dir =
            std::env::temp_dir().join(format!("paytrace-state-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir::open(dir).expect("a state dir")
    }

    #[test]
    fn a_snapshot_reads_back_with_the_time_it_was_down() {
        let state = dir("roundtrip");
        let written = UNIX_EPOCH + Duration::from_secs(1_000);
        state.save(&vec![1u32, 2, 3], written).expect("written");
        let (back, down) = state
            .load::<Vec<u32>>(written + Duration::from_secs(42))
            .expect("readable")
            .expect("present");
        assert_eq!(back, [1, 2, 3]);
        assert_eq!(down, Duration::from_secs(42));
        assert!(!state.dir.join(format!("{SNAPSHOT_FILE}.tmp")).exists());
    }

    #[test]
    fn damaged_foreign_and_other_versions_are_set_aside_with_the_reason() {
        let now = UNIX_EPOCH + Duration::from_secs(7_000);
        let whole = encode(&vec![1u32], 1);
        let foreign = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(br#"{"format":"someone-else","version":1,"pipeline":[]}"#)
                .expect("written");
            gz.finish().expect("finished")
        };
        let newer = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(format!(r#"{{"format":"{FORMAT}","version":99}}"#).as_bytes())
                .expect("written");
            gz.finish().expect("finished")
        };
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("truncated", whole[..whole.len() / 2].to_vec(), "damaged"),
            ("plain", b"{\"format\":".to_vec(), "damaged"),
            ("foreign", foreign, "not a paytrace-aggregator snapshot"),
            ("newer", newer, "version 99"),
        ];
        for (name, bytes, reason) in cases {
            let state = dir(name);
            std::fs::write(state.snapshot_path(), &bytes).expect("written");
            let (why, aside) = state
                .load::<Vec<u32>>(now)
                .expect_err("cannot be read back");
            assert!(why.contains(reason), "{name}: {why}");
            assert!(!state.snapshot_path().exists(), "{name}: still in place");
            assert_eq!(std::fs::read(&aside).expect("kept aside"), bytes, "{name}");
        }
    }
}
