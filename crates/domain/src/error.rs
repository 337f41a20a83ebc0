use std::borrow::Cow;

/// A value was rejected on its way in.
///
/// `field` names what was wrong (a dotted path for nested values, such as
/// `filter.any_of[1].radius_km`) and `reason` says why. The message never
/// contains a secret: credentials are reported by field name only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The field, or dotted path to the field, that was rejected.
    pub field: Cow<'static, str>,
    /// Why it was rejected.
    pub reason: Cow<'static, str>,
}

impl ValidationError {
    /// Builds an error for `field` with `reason`.
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, as in `filter` + `radius_km` -> `filter.radius_km`.
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: Cow::Owned(format!("{parent}.{}", self.field)),
            reason: self.reason,
        }
    }
}
