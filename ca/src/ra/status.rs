//! Typed ACME object statuses (RFC 8555 section 7.1.6) and the order state machine.
//!
//! The store keeps statuses as text (the schema's CHECK constraints name the same values); these
//! types are how code decides on them, so that a transition the protocol does not allow is refused
//! by [`OrderStatus::can_become`] instead of being one typo in a SQL string away. A status string
//! this version does not know (a newer replica, a hand-edited row) is a [`UnknownStatus`] error,
//! never a panic and never silently treated as some other status.

use std::fmt;

/// A status string that is not one of the values of its object type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ACME {object} status {value:?}")]
pub struct UnknownStatus {
    /// Which object type (`order`, `authorization`, `challenge`, `account`).
    pub object: &'static str,
    /// The string as found.
    pub value: String,
}

impl From<UnknownStatus> for crate::CaError {
    /// Statuses are read from the store: one it cannot read is a store problem, not the client's.
    fn from(e: UnknownStatus) -> Self {
        crate::CaError::Store(e.to_string())
    }
}

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident, $object:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in the order RFC 8555 lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire and database spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Reads the wire or database spelling; anything else is an [`UnknownStatus`].
            pub fn parse(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownStatus { object: $object, value: other.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                Self::parse(s)
            }
        }
    };
}

status_enum!(
    /// Order status (RFC 8555 section 7.1.6, figure "State Transitions for Order Objects").
    OrderStatus, "order", {
        /// Some authorization is not valid yet.
        Pending => "pending",
        /// Every authorization is valid; the order may be finalized.
        Ready => "ready",
        /// Being finalized. This CA never stores it: finalize goes from `ready` to `valid` in
        /// one transaction ([`crate::ra::Registration::finalize`]); older versions stored it.
        Processing => "processing",
        /// The certificate is issued and the order points at it.
        Valid => "valid",
        /// Failed, expired or refused; final.
        Invalid => "invalid",
    }
);

status_enum!(
    /// Authorization status (RFC 8555 section 7.1.6).
    AuthzStatus, "authorization", {
        /// No challenge passed yet.
        Pending => "pending",
        /// A challenge passed.
        Valid => "valid",
        /// A challenge failed.
        Invalid => "invalid",
        /// The client deactivated it.
        Deactivated => "deactivated",
        /// It expired before a challenge passed.
        Expired => "expired",
        /// The server revoked it.
        Revoked => "revoked",
    }
);

status_enum!(
    /// Challenge status (RFC 8555 section 7.1.6).
    ChallengeStatus, "challenge", {
        /// Not attempted yet.
        Pending => "pending",
        /// Being validated (claimed by one POST, see [`crate::Store::acme_claim_challenge`]).
        Processing => "processing",
        /// Passed.
        Valid => "valid",
        /// Failed.
        Invalid => "invalid",
    }
);

status_enum!(
    /// Account status (RFC 8555 section 7.1.6).
    AccountStatus, "account", {
        /// In use.
        Valid => "valid",
        /// Deactivated by its holder; final.
        Deactivated => "deactivated",
        /// Revoked by the server; final.
        Revoked => "revoked",
    }
);

impl OrderStatus {
    /// Whether an order may move from `self` to `to`.
    ///
    /// RFC 8555's transitions, with `ready -> valid` added because this CA issues synchronously
    /// and commits the certificate together with the order's new status (so `processing` is never
    /// observable), and `processing -> ready` to release an order left in `processing` by an
    /// older version that crashed mid-finalize. `valid` and `invalid` are final.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Ready | Invalid) | (Ready, Processing | Valid | Invalid) | (Processing, Valid | Invalid | Ready)
        )
    }

    /// Whether no transition leaves this status.
    pub fn is_final(self) -> bool {
        !OrderStatus::ALL.iter().any(|to| self.can_become(*to))
    }

    /// The statuses an order can still expire from (everything that is not final).
    pub fn live() -> impl Iterator<Item = OrderStatus> {
        OrderStatus::ALL.iter().copied().filter(|s| !s.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_unknown_strings_are_errors() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Ok(*s));
        }
        for s in AuthzStatus::ALL {
            assert_eq!(AuthzStatus::parse(s.as_str()), Ok(*s));
        }
        for s in ChallengeStatus::ALL {
            assert_eq!(ChallengeStatus::parse(s.as_str()), Ok(*s));
        }
        for s in AccountStatus::ALL {
            assert_eq!(AccountStatus::parse(s.as_str()), Ok(*s));
        }
        let e = OrderStatus::parse("Ready").expect_err("case matters");
        assert_eq!(e, UnknownStatus { object: "order", value: "Ready".into() });
        assert!(AuthzStatus::parse("").is_err());
        assert!(ChallengeStatus::parse("expired").is_err(), "challenges do not expire");
        assert!(AccountStatus::parse("pending").is_err());
        assert!(matches!("valid".parse::<OrderStatus>(), Ok(OrderStatus::Valid)));
    }

    #[test]
    fn the_order_state_machine() {
        use OrderStatus::*;
        assert!(Pending.can_become(Ready));
        assert!(Pending.can_become(Invalid));
        assert!(!Pending.can_become(Valid), "a pending order has unproven names");
        assert!(!Pending.can_become(Processing));
        assert!(Ready.can_become(Valid));
        assert!(Ready.can_become(Invalid));
        assert!(!Ready.can_become(Pending));
        assert!(Processing.can_become(Ready), "recovery of an older version's crash");
        for to in OrderStatus::ALL {
            assert!(!Valid.can_become(*to), "valid -> {to}");
            assert!(!Invalid.can_become(*to), "invalid -> {to}");
            assert!(!to.can_become(*to), "{to} -> {to} is no transition");
        }
        assert!(Valid.is_final() && Invalid.is_final());
        assert_eq!(OrderStatus::live().collect::<Vec<_>>(), vec![Pending, Ready, Processing]);
        assert!(OrderStatus::live().all(|s| s.can_become(Invalid)), "every live order can expire");
    }
}
