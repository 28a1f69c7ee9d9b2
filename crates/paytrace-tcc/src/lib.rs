//! The TCC (Try-Confirm-Cancel) model, in one place: the phases, the states
//! of a branch, the anomaly kinds, and the transition rules that both the
//! middleware's fence (`paytrace::tcc`, deciding what a participant may
//! run) and the aggregator (replaying what participants did, fence or not)
//! follow.
//!
//! ```
//! use paytrace_tcc::{Anomaly, BranchState, Decision, Phase, decide};
//!
//! // A Cancel that overtook its Try: answered, not run, and remembered,
//! // so that the late Try is refused.
//! let (decision, state) = decide(None, Phase::Cancel);
//! assert_eq!(decision, Decision::Skip(Some(Anomaly::EmptyRollback)));
//! assert_eq!(decide(state, Phase::Try).0, Decision::Reject(Anomaly::HangingTry));
//! ```
//!
//! - [`decide`]: the fence's rule, what to do with a phase call.
//! - [`observe`]: the same rule applied to what a participant *did*, with or
//!   without a fence: the anomaly, and the state the branch is in after it.

#![forbid(unsafe_code)]

use paytrace_semconv::tcc as names;

/// A TCC phase.
///
/// ```
/// use paytrace_tcc::Phase;
/// assert_eq!("confirm".parse::<Phase>(), Ok(Phase::Confirm));
/// assert_eq!(Phase::Cancel.as_str(), "cancel");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Reserve.
    Try,
    /// Commit the reservation.
    Confirm,
    /// Release the reservation.
    Cancel,
}

impl Phase {
    /// The `phase` label value and `tcc.phase` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Try => names::PHASE_TRY,
            Self::Confirm => names::PHASE_CONFIRM,
            Self::Cancel => names::PHASE_CANCEL,
        }
    }
}

/// A value that names no phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPhase(pub String);

impl std::fmt::Display for UnknownPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not try, confirm or cancel", self.0)
    }
}

impl std::error::Error for UnknownPhase {}

impl std::str::FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            names::PHASE_TRY => Ok(Self::Try),
            names::PHASE_CONFIRM => Ok(Self::Confirm),
            names::PHASE_CANCEL => Ok(Self::Cancel),
            other => Err(UnknownPhase(other.to_owned())),
        }
    }
}

/// What is known of a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BranchState {
    /// Tried; waiting for Confirm or Cancel: its resources are frozen.
    Tried,
    /// Confirmed.
    Confirmed,
    /// Cancelled after a Try.
    Cancelled,
    /// Cancelled before any Try arrived; a later Try is refused.
    RolledBackEmpty,
}

impl BranchState {
    /// Whether phase two has happened (the record may be cleaned up later).
    ///
    /// ```
    /// assert!(!paytrace_tcc::BranchState::Tried.is_finished());
    /// ```
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Tried)
    }

    /// The state's name where a store keeps it (a fence's Redis hash, its
    /// SQL table's `state` column).
    ///
    /// ```
    /// use paytrace_tcc::BranchState;
    /// assert_eq!(BranchState::RolledBackEmpty.as_str(), "rolled_back_empty");
    /// assert_eq!("tried".parse::<BranchState>(), Ok(BranchState::Tried));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tried => "tried",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::RolledBackEmpty => "rolled_back_empty",
        }
    }
}

/// A value that names no branch state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl std::fmt::Display for UnknownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not tried, confirmed, cancelled or rolled_back_empty",
            self.0
        )
    }
}

impl std::error::Error for UnknownState {}

impl std::str::FromStr for BranchState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Tried,
            Self::Confirmed,
            Self::Cancelled,
            Self::RolledBackEmpty,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A TCC anomaly: a phase that arrived where the protocol does not expect it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Anomaly {
    /// A Cancel arrived for a branch whose Try never did.
    EmptyRollback,
    /// A Try arrived after its branch was cancelled.
    HangingTry,
    /// A Cancel arrived after the branch was confirmed.
    CancelAfterConfirm,
    /// A Confirm arrived after the branch was cancelled.
    ConfirmAfterCancel,
    /// A repeated Confirm.
    DuplicateConfirm,
    /// A repeated Cancel.
    DuplicateCancel,
    /// A Confirm arrived for a branch that was never tried.
    ConfirmWithoutTry,
}

impl Anomaly {
    /// The `kind` label value.
    ///
    /// ```
    /// assert_eq!(paytrace_tcc::Anomaly::HangingTry.as_str(), "hanging_try");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyRollback => names::EMPTY_ROLLBACK,
            Self::HangingTry => names::HANGING_TRY,
            Self::CancelAfterConfirm => names::CANCEL_AFTER_CONFIRM,
            Self::ConfirmAfterCancel => names::CONFIRM_AFTER_CANCEL,
            Self::DuplicateConfirm => names::DUPLICATE_CONFIRM,
            Self::DuplicateCancel => names::DUPLICATE_CANCEL,
            Self::ConfirmWithoutTry => names::CONFIRM_WITHOUT_TRY,
        }
    }
}

/// The fence's decision on one phase call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the business handler.
    Run,
    /// Do not run it, and answer success (a repeat, or an empty rollback).
    Skip(Option<Anomaly>),
    /// Do not run it, and answer failure.
    Reject(Anomaly),
}

/// The fence's transition table: the decision for `phase` on a branch in
/// `state`, and the state it leaves (before the business handler runs).
///
/// ```
/// use paytrace_tcc::{Anomaly, BranchState, Decision, Phase, decide};
/// assert_eq!(decide(None, Phase::Try), (Decision::Run, Some(BranchState::Tried)));
/// assert_eq!(
///     decide(Some(BranchState::Confirmed), Phase::Cancel),
///     (Decision::Reject(Anomaly::CancelAfterConfirm), Some(BranchState::Confirmed)),
/// );
/// ```
pub fn decide(state: Option<BranchState>, phase: Phase) -> (Decision, Option<BranchState>) {
    use Anomaly::*;
    use BranchState::*;
    use Decision::*;
    match (phase, state) {
        (Phase::Try, None) => (Run, Some(Tried)),
        (Phase::Try, Some(s @ (Tried | Confirmed))) => (Skip(None), Some(s)),
        (Phase::Try, Some(s @ (Cancelled | RolledBackEmpty))) => (Reject(HangingTry), Some(s)),
        (Phase::Confirm, None) => (Reject(ConfirmWithoutTry), None),
        (Phase::Confirm, Some(Tried)) => (Run, Some(Confirmed)),
        (Phase::Confirm, Some(Confirmed)) => (Skip(Some(DuplicateConfirm)), Some(Confirmed)),
        (Phase::Confirm, Some(s @ (Cancelled | RolledBackEmpty))) => {
            (Reject(ConfirmAfterCancel), Some(s))
        }
        (Phase::Cancel, None) => (Skip(Some(EmptyRollback)), Some(RolledBackEmpty)),
        (Phase::Cancel, Some(Tried)) => (Run, Some(Cancelled)),
        (Phase::Cancel, Some(Confirmed)) => (Reject(CancelAfterConfirm), Some(Confirmed)),
        (Phase::Cancel, Some(s @ (Cancelled | RolledBackEmpty))) => {
            (Skip(Some(DuplicateCancel)), Some(s))
        }
    }
}

/// The history of one branch as phases arrive, each with whether it
/// succeeded: what [`observe`] reads and updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Branch {
    /// Its state; `None` before anything took effect.
    pub state: Option<BranchState>,
    /// Whether a Try was attempted and failed (then a Cancel is the expected
    /// compensation, not an empty rollback).
    pub try_failed: bool,
}

/// What a phase a participant ran did to its branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The anomaly the fence would have flagged, if any.
    pub anomaly: Option<Anomaly>,
    /// Whether a phase two (Confirm or Cancel) took effect: the branch was
    /// committed or released by it.
    pub took_effect: bool,
}

/// The rules of [`decide`] applied to what a participant did, with or
/// without a fence: `succeeded` is whether the phase's handler reported
/// success. A fence would have refused the phases it rejects; a participant
/// without one runs them, so a Confirm after a Cancel or a Cancel after a
/// Confirm still takes effect (and is flagged). A Cancel after a failed Try
/// is the expected compensation.
///
/// ```
/// use paytrace_tcc::{Anomaly, Branch, BranchState, Phase, observe};
///
/// let mut branch = Branch::default();
/// observe(&mut branch, Phase::Try, true);
/// observe(&mut branch, Phase::Confirm, true);
/// // A recovery job without a fence cancels the confirmed branch.
/// let seen = observe(&mut branch, Phase::Cancel, true);
/// assert_eq!(seen.anomaly, Some(Anomaly::CancelAfterConfirm));
/// assert!(seen.took_effect);
/// assert_eq!(branch.state, Some(BranchState::Cancelled));
/// ```
pub fn observe(branch: &mut Branch, phase: Phase, succeeded: bool) -> Observed {
    use BranchState::*;
    let (decision, next) = decide(branch.state, phase);
    let mut anomaly = match decision {
        Decision::Run | Decision::Skip(None) => None,
        Decision::Skip(Some(a)) | Decision::Reject(a) => Some(a),
    };
    let mut took_effect = false;
    match (phase, branch.state, decision) {
        (Phase::Try, None, _) if succeeded => branch.state = next,
        (Phase::Try, None, _) => branch.try_failed = true,
        (Phase::Cancel, None, _) if branch.try_failed => {
            // A failed Try compensated: what Cancel is for.
            anomaly = None;
            took_effect = succeeded;
            if succeeded {
                branch.state = Some(Cancelled);
            }
        }
        (Phase::Cancel, None, _) if succeeded => branch.state = next,
        (_, _, Decision::Run) => {
            took_effect = succeeded;
            if succeeded {
                branch.state = next;
            }
        }
        // Without a fence, these run anyway.
        (Phase::Confirm, Some(Cancelled), _) | (Phase::Cancel, Some(Confirmed), _) => {
            took_effect = succeeded;
            if succeeded {
                branch.state = Some(if phase == Phase::Confirm {
                    Confirmed
                } else {
                    Cancelled
                });
            }
        }
        _ => {}
    }
    Observed {
        anomaly,
        took_effect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (phase, state) pair: the fence's anomaly is the one observe
    /// reports, but for the compensation of a failed Try.
    #[test]
    fn observe_reports_what_the_fence_would_flag() {
        let states = [
            None,
            Some(BranchState::Tried),
            Some(BranchState::Confirmed),
            Some(BranchState::Cancelled),
            Some(BranchState::RolledBackEmpty),
        ];
        for state in states {
            for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
                for succeeded in [true, false] {
                    let mut branch = Branch {
                        state,
                        try_failed: false,
                    };
                    let seen = observe(&mut branch, phase, succeeded);
                    let flagged = match decide(state, phase).0 {
                        Decision::Run | Decision::Skip(None) => None,
                        Decision::Skip(Some(a)) | Decision::Reject(a) => Some(a),
                    };
                    assert_eq!(seen.anomaly, flagged, "{phase:?} on {state:?}");
                }
            }
        }
    }

    #[test]
    fn a_cancel_after_a_failed_try_is_compensation_not_an_empty_rollback() {
        let mut branch = Branch::default();
        assert_eq!(observe(&mut branch, Phase::Try, false).anomaly, None);
        let seen = observe(&mut branch, Phase::Cancel, true);
        assert_eq!(seen.anomaly, None);
        assert!(seen.took_effect);
        assert_eq!(branch.state, Some(BranchState::Cancelled));
    }

    #[test]
    fn a_fenced_empty_rollback_refuses_the_late_try() {
        let mut branch = Branch::default();
        let seen = observe(&mut branch, Phase::Cancel, true);
        assert_eq!(seen.anomaly, Some(Anomaly::EmptyRollback));
        assert!(!seen.took_effect);
        assert_eq!(
            observe(&mut branch, Phase::Try, true).anomaly,
            Some(Anomaly::HangingTry)
        );
        assert_eq!(branch.state, Some(BranchState::RolledBackEmpty));
    }
}
