use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id: ids made later sort later,
            /// so "id order" is also creation order.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl From<$name> for Uuid {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = crate::ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map(Self).map_err(|_| {
                    crate::ValidationError::new(stringify!($name), "not a valid UUID")
                })
            }
        }
    };
}

define_id!(
    /// Identifies a [`ProxyPool`](crate::ProxyPool).
    PoolId
);
define_id!(
    /// Identifies a [`Proxy`](crate::Proxy).
    ProxyId
);
define_id!(
    /// Identifies a [`Consumer`](crate::Consumer).
    ConsumerId
);
define_id!(
    /// Identifies a [`Lease`](crate::Lease).
    LeaseId
);
define_id!(
    /// Identifies a [`HealthRecord`](crate::HealthRecord).
    HealthRecordId
);
define_id!(
    /// Identifies a stored API key ([`ApiKeyRecord`](crate::ApiKeyRecord)).
    ApiKeyId
);
