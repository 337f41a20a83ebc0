//! The import columns (CSV headers and JSON keys) and their records, and
//! the CSV reader.

use super::*;

/// A CSV column or JSON key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Column {
    Url,
    Host,
    Port,
    Protocol,
    Username,
    Password,
    Country,
    City,
    Source,
    Isp,
    Asn,
    Latitude,
    Longitude,
    MaxConcurrency,
}

impl Column {
    pub(super) const ALL: [Self; 14] = [
        Self::Url,
        Self::Host,
        Self::Port,
        Self::Protocol,
        Self::Username,
        Self::Password,
        Self::Country,
        Self::City,
        Self::Source,
        Self::Isp,
        Self::Asn,
        Self::Latitude,
        Self::Longitude,
        Self::MaxConcurrency,
    ];

    pub(super) fn named(name: &str) -> Option<Self> {
        IMPORT_COLUMNS
            .iter()
            .position(|c| *c == name)
            .map(|i| Self::ALL[i])
    }

    pub(super) fn name(self) -> &'static str {
        IMPORT_COLUMNS[self as usize]
    }
}

/// The values of one CSV row or JSON object, by column; `None` when absent
/// or empty.
#[derive(Debug, Default)]
pub(super) struct Record {
    values: [Option<String>; 14],
}

impl Record {
    /// Stores a value; every value but the password is trimmed, and an empty
    /// one is absent.
    pub(super) fn set(&mut self, column: Column, value: &str) {
        let value = if column == Column::Password {
            value
        } else {
            value.trim()
        };
        self.values[column as usize] = (!value.is_empty()).then(|| value.to_owned());
    }

    pub(super) fn get(&self, column: Column) -> Option<&str> {
        self.values[column as usize].as_deref()
    }

    pub(super) fn parsed<T>(
        &self,
        column: Column,
        parse: impl FnOnce(&str) -> Result<T, ValidationError>,
    ) -> Result<Option<T>, ValidationError> {
        self.get(column).map(parse).transpose()
    }

    pub(super) fn coordinate(&self, column: Column) -> Result<Option<f64>, ValidationError> {
        self.parsed(column, |v| {
            v.parse::<f64>()
                .map_err(|_| ValidationError::new(column.name(), "must be a number of degrees"))
        })
    }

    pub(super) fn entry(&self, defaults: &ImportDefaults) -> Result<ProxyEntry, ValidationError> {
        let address = match self.get(Column::Url) {
            Some(url) => {
                if let Some(other) = [
                    Column::Host,
                    Column::Port,
                    Column::Protocol,
                    Column::Username,
                    Column::Password,
                ]
                .into_iter()
                .find(|c| self.get(*c).is_some())
                {
                    return Err(ValidationError::new(
                        other.name(),
                        "must be empty when url is given (the url holds it)",
                    ));
                }
                url_address(url)?
            }
            None => {
                let host = self
                    .get(Column::Host)
                    .ok_or_else(|| ValidationError::new("host", "is required (or give url)"))?;
                let port = self.get(Column::Port).unwrap_or("");
                let protocol = self
                    .parsed(Column::Protocol, ProxyProtocol::from_str)?
                    .or(defaults.protocol);
                let credentials = match (self.get(Column::Username), self.get(Column::Password)) {
                    (None, None) => None,
                    (Some(user), Some(password)) => Some((user, password)),
                    (None, Some(_)) => {
                        return Err(ValidationError::new(
                            "username",
                            "is required when a password is given",
                        ));
                    }
                    (Some(_), None) => {
                        return Err(ValidationError::new(
                            "password",
                            "is required when a username is given",
                        ));
                    }
                };
                parts_address(protocol, host, port, credentials)?
            }
        };
        let text = |c: Column| self.get(c).map(str::to_owned);
        let meta = LineMeta {
            country: text(Column::Country),
            city: text(Column::City),
            source: text(Column::Source),
            isp: text(Column::Isp),
            asn: self.parsed(Column::Asn, parse_asn)?,
            latitude: self.coordinate(Column::Latitude)?,
            longitude: self.coordinate(Column::Longitude)?,
            max_concurrency: self.parsed(Column::MaxConcurrency, MaxConcurrency::from_str)?,
        };
        finish(address, &meta, defaults)
    }
}

pub(super) fn parse_csv(
    input: &str,
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::Headers)
        .comment(Some(b'#'))
        .from_reader(input.as_bytes());
    // The input is a &str, so reading cannot fail on I/O or UTF-8.
    let header = reader
        .headers()
        .map_err(|_| ValidationError::new("csv.header", "cannot be read"))?
        .clone();
    let mut list = ParsedList::default();
    if header.is_empty() {
        return Ok(list);
    }
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        // Name the column by position, not by its text: a list without a
        // header would put a proxy (and its password) there.
        let column = Column::named(&name.to_ascii_lowercase()).ok_or_else(|| {
            ValidationError::new(
                "csv.header",
                format!(
                    "column {} is not one of {} (is the header row missing?)",
                    i + 1,
                    IMPORT_COLUMNS.join(", ")
                ),
            )
        })?;
        if columns.contains(&column) {
            return Err(ValidationError::new(
                "csv.header",
                format!("names the column {:?} twice", column.name()),
            ));
        }
        columns.push(column);
    }
    if !columns.contains(&Column::Url) && !columns.contains(&Column::Host) {
        return Err(ValidationError::new(
            "csv.header",
            "must name a url or a host column",
        ));
    }
    // csv numbers a record from where its read began, which is before any
    // blank or comment lines it skipped: find the record's first line in
    // the bytes it consumed instead.
    let mut start = reader.position().clone();
    let mut row = csv::StringRecord::new();
    loop {
        let read = reader.read_record(&mut row);
        let end = reader.position().clone();
        let line = first_record_line(input, &start, &end);
        let progressed = end.byte() > start.byte();
        start = end;
        let entry = match read {
            Ok(false) => break,
            // Reading a &str cannot fail; never loop on a reader that is stuck.
            Err(_) if !progressed => break,
            // A whitespace-only or indented comment line is no record.
            Ok(true) if row.get(0).is_some_and(|f| f.trim_start().starts_with('#')) => continue,
            Ok(true) if row.len() == 1 && row.get(0).is_some_and(|f| f.trim().is_empty()) => {
                continue;
            }
            Ok(true) if row.len() != columns.len() => Err(ValidationError::new(
                "csv",
                format!(
                    "the row has {} fields and the header {}",
                    row.len(),
                    columns.len()
                ),
            )),
            Ok(true) => {
                let mut record = Record::default();
                for (column, value) in columns.iter().zip(&row) {
                    record.set(*column, value);
                }
                record.entry(defaults)
            }
            Err(_) => Err(ValidationError::new("csv", "the row cannot be read")),
        };
        list.push(line, entry);
    }
    Ok(list)
}

/// The 1-based line of the record read between `start` and `end`: the
/// first line there that is neither empty nor a `#` comment.
pub(super) fn first_record_line(input: &str, start: &csv::Position, end: &csv::Position) -> usize {
    let line = usize::try_from(start.line()).unwrap_or(usize::MAX);
    let span = usize::try_from(start.byte())
        .ok()
        .zip(usize::try_from(end.byte()).ok())
        .and_then(|(from, to)| input.get(from..to))
        .unwrap_or("");
    let skipped = span
        .split_inclusive('\n')
        .take_while(|l| {
            let content = l.trim_end_matches(['\n', '\r']);
            content.is_empty() || content.starts_with('#')
        })
        .count();
    line.saturating_add(skipped)
}
