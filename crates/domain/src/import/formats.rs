//! The text and JSON Lines parsers, and the JSON array parsers an HTTP API
//! uses.

use super::*;

/// Parses a JSON array of objects with the keys of [`IMPORT_COLUMNS`] (the
/// body an HTTP API takes). Each element's `line` is its 1-based position.
/// The error is for the whole input: invalid `defaults`, or a body that is
/// not a JSON array (field `json`).
pub fn parse_proxy_json(
    input: &str,
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    let values: Vec<Value> = serde_json::from_str(input).map_err(|e| {
        ValidationError::new(
            "json",
            format!(
                "must be a JSON array of objects ({} at line {} column {})",
                json_problem(&e),
                e.line(),
                e.column()
            ),
        )
    })?;
    parse_proxy_json_values(&values, defaults)
}

/// As [`parse_proxy_json`], for elements already decoded.
pub fn parse_proxy_json_values(
    values: &[Value],
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    defaults.validate()?;
    let mut list = ParsedList::default();
    for (i, value) in values.iter().enumerate() {
        list.push(i + 1, json_entry(value, defaults));
    }
    Ok(list)
}

pub(super) fn parse_text(input: &str, defaults: &ImportDefaults) -> ParsedList {
    let mut list = ParsedList::default();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        list.push(
            i + 1,
            text_address(line, defaults).and_then(|a| finish(a, &LineMeta::default(), defaults)),
        );
    }
    list
}

/// One text line: a URL, `user:pass@host:port`, `host:port` or
/// `host:port:user:pass` (IPv6 hosts in brackets).
fn text_address(line: &str, defaults: &ImportDefaults) -> Result<ProxyBuilder, ValidationError> {
    if line.contains("://") {
        return url_address(line);
    }
    // `user:pass@host:port` is a URL without its scheme, unless the line
    // is the providers' `host:port:user:pass` with an '@' in the password.
    let provider_form = line.starts_with('[')
        || line
            .split(':')
            .nth(1)
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if line.contains('@') && !provider_form {
        let protocol = defaults.protocol.ok_or_else(missing_protocol)?;
        return url_address(&format!("{protocol}://{line}")).map_err(unprefix_url);
    }
    let (host, rest) = if line.starts_with('[') {
        let close = line
            .find(']')
            .ok_or_else(|| ValidationError::new("host", "unclosed '[' in IPv6 address"))?;
        (&line[..=close], &line[close + 1..])
    } else {
        match line.find(':') {
            Some(colon) => (&line[..colon], &line[colon..]),
            None => (line, ""),
        }
    };
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| ValidationError::new("port", "is required"))?;
    let (port, credentials) = match rest.split_once(':') {
        None => (rest, None),
        Some((port, userpass)) => {
            let (user, password) = userpass.split_once(':').ok_or_else(|| {
                ValidationError::new("credentials", "must be host:port:user:password when given")
            })?;
            (port, Some((user, password)))
        }
    };
    if !host.starts_with('[') && line.contains("::") && !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::new(
            "host",
            "an IPv6 address must be in brackets, as [2001:db8::1]:8080",
        ));
    }
    parts_address(defaults.protocol, host, port, credentials)
}

pub(super) fn parse_jsonl(input: &str, defaults: &ImportDefaults) -> ParsedList {
    let mut list = ParsedList::default();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let entry = serde_json::from_str::<Value>(line)
            .map_err(|e| {
                ValidationError::new(
                    "json",
                    format!("{} at column {}", json_problem(&e), e.column()),
                )
            })
            .and_then(|value| json_entry(&value, defaults));
        list.push(i + 1, entry);
    }
    list
}

/// What kind of JSON error this is, without the input's text.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Data => "unexpected type",
        serde_json::error::Category::Io => "read error",
    }
}

fn json_entry(value: &Value, defaults: &ImportDefaults) -> Result<ProxyEntry, ValidationError> {
    let object = value
        .as_object()
        .ok_or_else(|| ValidationError::new("json", "must be an object"))?;
    let mut record = Record::default();
    for (key, value) in object {
        let column = Column::named(key).ok_or_else(|| {
            ValidationError::new(
                key.clone(),
                format!("is not a known key (known: {})", IMPORT_COLUMNS.join(", ")),
            )
        })?;
        match value {
            Value::Null => {}
            Value::String(s) => record.set(column, s),
            Value::Number(n) => record.set(column, &n.to_string()),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
                return Err(ValidationError::new(
                    column.name(),
                    "must be a string or a number",
                ));
            }
        }
    }
    record.entry(defaults)
}
