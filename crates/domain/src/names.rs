use crate::ValidationError;

/// The longest pool or consumer name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Checks a pool or consumer name: not blank, at most [`MAX_NAME_CHARS`]
/// characters, no control characters.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    // Names are checked on every acquire: most are short ASCII, decided
    // byte by byte without decoding.
    if name.is_ascii()
        && name.len() <= MAX_NAME_CHARS
        && name.bytes().any(|b| !b.is_ascii_whitespace())
        && !name.bytes().any(|b| b.is_ascii_control())
    {
        return Ok(());
    }
    if name.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be blank"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks optional text fields: each may be absent, but not blank when
/// given. Returns the first offending field.
pub(crate) fn validate_optional_text(
    fields: [(&'static str, &Option<String>); 4],
) -> Result<(), ValidationError> {
    match fields
        .iter()
        .find(|(_, value)| value.as_deref().is_some_and(|v| v.trim().is_empty()))
    {
        Some((field, _)) => Err(ValidationError::new(*field, "must not be blank when given")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("pool.name", "residential-eu").is_ok());
        assert_eq!(
            validate_name("pool.name", "  ").unwrap_err().field,
            "pool.name"
        );
        assert!(validate_name("pool.name", &"x".repeat(128)).is_ok());
        assert!(validate_name("pool.name", &"x".repeat(129)).is_err());
        assert!(validate_name("consumer.name", "a\nb").is_err());
    }
}
