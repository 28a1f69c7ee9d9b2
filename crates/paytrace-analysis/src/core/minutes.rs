//! The ring of minutes the rolling windows are read from: an hour of
//! per-minute groups, error and incomplete counts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::breakdown::Groups;

/// The windows the API offers, in minutes.
pub const WINDOWS_MINUTES: [u64; 4] = [1, 5, 15, 60];

#[derive(Clone, Debug, Default)]
pub(crate) struct Minute {
    pub(crate) minute: u64,
    pub(crate) groups: Groups,
    /// Failed instances, weighted by what each stands for under sampling.
    pub(crate) errors: HashMap<Arc<str>, f64>,
    /// Incomplete instances, weighted alike.
    pub(crate) incomplete: HashMap<Arc<str>, f64>,
}

/// The slot of `minute`, opened if new; the ring keeps an hour. Minutes
/// are shared with the published view ([`super::View`]): the slot written
/// is copied first if the view still holds it (once per tick at most).
pub(crate) fn slot(minutes: &mut VecDeque<Arc<Minute>>, minute: u64) -> &mut Minute {
    match minutes.back() {
        // The same minute, or the wall clock went back: the latest slot.
        Some(last) if last.minute >= minute => {}
        _ => {
            minutes.push_back(Arc::new(Minute {
                minute,
                ..Minute::default()
            }));
            while minutes.len() > 60 || minutes.front().is_some_and(|m| m.minute + 60 <= minute) {
                minutes.pop_front();
            }
        }
    }
    let last = minutes.len() - 1;
    Arc::make_mut(&mut minutes[last])
}

impl Minute {
    /// Adds another replica's counts of the same minute.
    pub(crate) fn merge(&mut self, other: &Minute) {
        self.groups.merge(&other.groups);
        for (flow, n) in &other.errors {
            *self.errors.entry(flow.clone()).or_default() += n;
        }
        for (flow, n) in &other.incomplete {
            *self.incomplete.entry(flow.clone()).or_default() += n;
        }
    }
}

/// The minutes of the last `window_minutes` up to `now_minute`.
pub(crate) fn in_window<'a, M: std::borrow::Borrow<Minute> + 'a>(
    minutes: impl IntoIterator<Item = &'a M>,
    now_minute: u64,
    window_minutes: u64,
) -> impl Iterator<Item = &'a Minute> {
    minutes
        .into_iter()
        .map(std::borrow::Borrow::borrow)
        .filter(move |m| m.minute + window_minutes > now_minute && m.minute <= now_minute)
}

impl From<&Minute> for crate::format::v1::Minute {
    fn from(m: &Minute) -> Self {
        Self {
            minute: m.minute,
            groups: (&m.groups).into(),
            errors: m.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            incomplete: m.incomplete.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

impl From<crate::format::v1::Minute> for Minute {
    fn from(m: crate::format::v1::Minute) -> Self {
        Self {
            minute: m.minute,
            groups: m.groups.into(),
            errors: m.errors.into_iter().collect(),
            incomplete: m.incomplete.into_iter().collect(),
        }
    }
}
