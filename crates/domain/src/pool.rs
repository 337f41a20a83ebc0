use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ConsumerId, PoolId, ValidationError, validate_name};

/// A named group of proxies that workers lease from. Names are unique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyPool {
    /// Identity.
    pub id: PoolId,
    /// Unique name workers ask for.
    pub name: String,
    /// Free text for operators.
    pub description: Option<String>,
    /// When the pool was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ProxyPool {
    /// A new pool named `name`, created now. Fails if the name is invalid.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let pool = Self {
            id: PoolId::new(),
            name: name.into(),
            description: None,
            created_at: crate::lease::now_micros(),
        };
        pool.validate()?;
        Ok(pool)
    }

    /// Sets the description.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("pool.name", &self.name)
    }
}

/// A named worker (or group of workers) that holds leases. Names are unique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    /// Identity.
    pub id: ConsumerId,
    /// Unique name.
    pub name: String,
    /// When the consumer was first seen.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
