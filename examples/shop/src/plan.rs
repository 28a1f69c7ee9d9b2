//! The shop's services and their fixed ports, shifted by `--port-base`.

use std::fmt;
use std::net::SocketAddr;

/// One of the shop's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Entry point: `POST /checkout`.
    Gateway,
    /// Creates orders and coordinates TCC.
    Order,
    /// Stock, a TCC participant.
    Inventory,
    /// Payments, a TCC participant that talks to the channels.
    Payment,
    /// Loyalty points, a TCC participant.
    Points,
    /// Coupons, a TCC participant.
    Coupon,
    /// Mock Alipay channel.
    Alipay,
    /// Mock WeChat Pay channel.
    #[value(name = "wechat_pay")]
    WechatPay,
    /// Mock card acquirer.
    Card,
}

impl Role {
    /// Every role, in port order.
    pub const ALL: [Role; 9] = [
        Role::Gateway,
        Role::Order,
        Role::Inventory,
        Role::Payment,
        Role::Points,
        Role::Coupon,
        Role::Alipay,
        Role::WechatPay,
        Role::Card,
    ];

    /// The `service` label and `service.name`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Order => "order",
            Role::Inventory => "inventory",
            Role::Payment => "payment",
            Role::Points => "points",
            Role::Coupon => "coupon",
            Role::Alipay => "alipay",
            Role::WechatPay => "wechat_pay",
            Role::Card => "card",
        }
    }

    fn offset(self) -> u16 {
        Role::ALL.iter().position(|r| *r == self).unwrap_or(0) as u16
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where everything listens: service *k* on `base + k` (HTTP) and
/// `base + 20 + k` (gRPC, inventory only), the aggregator's OTLP/gRPC on
/// `base + 17`, OTLP/HTTP on `base + 18`, API on `base + 80`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The first port.
    pub base: u16,
}

/// The default `--port-base`.
pub const DEFAULT_PORT_BASE: u16 = 7100;

impl Plan {
    /// The address of `role`.
    pub fn addr(self, role: Role) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + role.offset()))
    }

    /// The base URL of `role`.
    pub fn url(self, role: Role) -> String {
        format!("http://{}", self.addr(role))
    }

    /// The gRPC address of `role` (only inventory serves gRPC: its TCC
    /// phases), `base + 20 + k`.
    pub fn grpc_addr(self, role: Role) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 20 + role.offset()))
    }

    /// The in-process aggregator's OTLP/gRPC address.
    pub fn otlp_grpc(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 17))
    }

    /// The in-process aggregator's OTLP/HTTP address.
    pub fn otlp_http(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 18))
    }

    /// The in-process aggregator's API address.
    pub fn api(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 80))
    }
}
