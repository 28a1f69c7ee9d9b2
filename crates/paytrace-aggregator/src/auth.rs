//! Bearer tokens: who may send spans (`--otlp-token-file`) and read flows
//! (`--api-token-file`).
//!
//! A token file holds one token a line (blank lines and `#` comments
//! ignored). A request is admitted when its `Authorization: Bearer <token>`
//! equals one of them, compared in constant time. The file is read again
//! when it changes on disk (checked at most once a second), so tokens rotate
//! without a restart; a file that becomes unreadable or empty keeps the
//! tokens it had, with a warning. Tokens are never logged.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use subtle::ConstantTimeEq;

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// It cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("the token file {0} holds no token: write one a line")]
    Empty(PathBuf),
}

/// The tokens of one file, read again when it changes.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("paytrace-doc-tokens-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let file = dir.join("tokens");
/// std::fs::write(&file, "# the collector\ns3cret\n").unwrap();
/// let tokens = paytrace_aggregator::auth::Tokens::load(&file).unwrap();
/// assert!(tokens.admits(Some(b"Bearer s3cret")));
/// assert!(!tokens.admits(Some(b"Bearer guess")));
/// assert!(!tokens.admits(None));
/// ```
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    tokens: Vec<Vec<u8>>,
    modified: Option<SystemTime>,
    checked: Instant,
}

fn read(path: &Path) -> Result<(Vec<Vec<u8>>, Option<SystemTime>), TokenError> {
    let unreadable = |source| TokenError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let modified = std::fs::metadata(path).map_err(unreadable)?.modified().ok();
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(TokenError::Empty(path.to_owned()));
    }
    Ok((tokens, modified))
}

impl Tokens {
    /// Reads `path`; an unreadable or empty file is an error.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let (tokens, modified) = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(Loaded {
                tokens,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// Whether an `Authorization` header value carries one of the tokens
    /// (`Bearer <token>`, the scheme in any case).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut state);
        // Every token is compared, whatever matched before it.
        state
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, t| {
                found | t.as_slice().ct_eq(presented)
            })
            .into()
    }

    /// The file's first token, as read now: what this aggregator presents
    /// to its peers (whose API takes the same tokens).
    pub(crate) fn first(&self) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut state);
        state
            .tokens
            .first()
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    fn refresh(&self, state: &mut Loaded) {
        if state.checked.elapsed() < RECHECK {
            return;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| m.modified().ok());
        if modified.is_some() && modified == state.modified {
            return;
        }
        match read(&self.path) {
            Ok((tokens, modified)) => {
                tracing::info!(path = %self.path.display(), tokens = tokens.len(), "token file read again");
                state.tokens = tokens;
                state.modified = modified;
            }
            Err(e) => tracing::warn!("{e}; keeping the tokens read before"),
        }
    }
}

/// The token of a `Bearer` credential.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().as_bytes())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"abc"), None);
    }

    #[test]
    fn an_empty_or_missing_file_is_refused_at_start() {
        let dir = std::env::temp_dir().join(format!("paytrace-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n\n").expect("written");
        assert!(matches!(Tokens::load(&empty), Err(TokenError::Empty(_))));
        assert!(matches!(
            Tokens::load(&dir.join("missing")),
            Err(TokenError::Unreadable { .. })
        ));
    }
}
