use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// How to choose among the proxies that are available and match the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// The available proxy with the smallest id (ids are time-ordered, so
    /// this is the oldest).
    #[default]
    FirstAvailable,
    /// Fewest current leases, then oldest `checked_at` (never checked
    /// first), then smallest id.
    LeastUsed,
    /// Cycles through the available proxies in id order: the next one is the
    /// available proxy with the smallest id greater than the last one handed
    /// out, wrapping to the smallest. The cursor is per pool and shared by
    /// every worker of a storage.
    RoundRobin,
    /// Lowest latest reachable health-check latency first; proxies never
    /// measured last; ties by id.
    LowestLatency,
    /// Uniformly at random.
    Random,
}

impl Selector {
    /// Every selector, in a stable order.
    pub const ALL: [Self; 5] = [
        Self::FirstAvailable,
        Self::LeastUsed,
        Self::RoundRobin,
        Self::LowestLatency,
        Self::Random,
    ];

    /// The snake_case name (`"round_robin"`), as stored and as given on the
    /// command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FirstAvailable => "first_available",
            Self::LeastUsed => "least_used",
            Self::RoundRobin => "round_robin",
            Self::LowestLatency => "lowest_latency",
            Self::Random => "random",
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Selector {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|sel| sel.as_str() == wanted).ok_or_else(|| {
            ValidationError::new(
                "selector",
                "must be one of first_available, least_used, round_robin, lowest_latency, random",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Selector::ALL {
            assert_eq!(s.as_str().parse::<Selector>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            "round-robin".parse::<Selector>().unwrap(),
            Selector::RoundRobin
        );
        assert_eq!("nope".parse::<Selector>().unwrap_err().field, "selector");
    }
}
