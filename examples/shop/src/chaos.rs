//! Fault injection: `--chaos NAME[,NAME]`.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::plan::Role;

/// One fault, and the signal it should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Fault {
    /// The chaos channel answers 20x slower: its method's `channel.request`
    /// critical-path time grows twentyfold, the others' stay, and it is the
    /// largest stage of that method's checkout (larger than the wait for the
    /// channel's callback, which is not slowed).
    ChannelSlow,
    /// The chaos channel answers 503: `channel.request` errors for its method
    /// only, its checkouts are cancelled.
    ChannelDown,
    /// The chaos channel never calls back: `paytrace_flows_incomplete_total`
    /// counts `terminal_stage_missing` for its checkouts.
    CallbackLost,
    /// The inventory pool has one connection: `paytrace_resource_wait_seconds`
    /// and pool timeouts rise, `inventory.try` slows.
    PoolExhausted,
    /// Inventory's Confirm takes longer than the coordinator's 1 s timeout on
    /// a fifth of orders: the coordinator retries (`paytrace_tcc_phase_retries_total`),
    /// the retries are `duplicate_confirm` anomalies, branches stay frozen
    /// longer (`paytrace_tcc_pending_oldest_seconds`).
    ConfirmNetworkFailure,
    /// A recovery job sends a late Cancel to inventory after a tenth of
    /// orders were confirmed: `cancel_after_confirm` anomalies, refused.
    CancelAfterConfirm,
    /// On a tenth of orders inventory's Cancel overtakes its Try:
    /// `empty_rollback`, then the late Try is refused as `hanging_try`, and
    /// the order's own Cancel is a `duplicate_cancel`.
    EmptyRollback,
    /// The payment callback consumer stalls: `paytrace_queue_depth` and
    /// `paytrace_queue_oldest_age_seconds` grow, `async:payment.confirm` (the
    /// wait in the queue) takes a larger share.
    QueueBacklog,
}

/// The mock channel that channel faults hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChaosChannel {
    /// The alipay mock.
    Alipay,
    /// The wechat_pay mock.
    #[value(name = "wechat_pay")]
    WechatPay,
    /// The card mock.
    Card,
}

impl ChaosChannel {
    /// The mock's role.
    pub fn role(self) -> Role {
        match self {
            Self::Alipay => Role::Alipay,
            Self::WechatPay => Role::WechatPay,
            Self::Card => Role::Card,
        }
    }
}

/// The faults in force, from a moment on (`--chaos-after`) or from the start.
#[derive(Clone, Debug, Default)]
pub struct Chaos {
    faults: HashSet<Fault>,
    channel: Option<Role>,
    from: Option<SystemTime>,
}

impl Chaos {
    /// `faults`, affecting `channel` where a fault is about one channel.
    pub fn new(faults: &[Fault], channel: Role) -> Self {
        Self {
            faults: faults.iter().copied().collect(),
            channel: Some(channel),
            from: None,
        }
    }

    /// The same faults, in force only from `from` on.
    pub fn starting_at(mut self, from: Option<SystemTime>) -> Self {
        self.from = from;
        self
    }

    /// When the faults start, if not from the start.
    pub fn from(&self) -> Option<SystemTime> {
        self.from
    }

    /// Whether `fault` is in force now.
    pub fn has(&self, fault: Fault) -> bool {
        self.faults.contains(&fault) && self.from.is_none_or(|from| SystemTime::now() >= from)
    }

    /// Whether `fault` is asked for, now or later.
    pub fn planned(&self, fault: Fault) -> bool {
        self.faults.contains(&fault)
    }

    fn on_channel(&self, fault: Fault, role: Role) -> bool {
        self.has(fault) && self.channel == Some(role)
    }

    /// Whether mock channel `role` is slowed.
    pub fn channel_slow(&self, role: Role) -> bool {
        self.on_channel(Fault::ChannelSlow, role)
    }

    /// Whether mock channel `role` fails.
    pub fn channel_down(&self, role: Role) -> bool {
        self.on_channel(Fault::ChannelDown, role)
    }

    /// Whether mock channel `role` drops its callbacks.
    pub fn callback_lost(&self, role: Role) -> bool {
        self.on_channel(Fault::CallbackLost, role)
    }
}
