//! The `--database-url` value: a DSN that may carry a password.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A PostgreSQL URL as given on the command line or in
/// `PHAROX_DATABASE_URL`.
///
/// `Debug` never shows it (a DSN carries the password, and a badly encoded
/// one can put the password anywhere in the string), and there is no
/// `Display`: the URL is only read through [`expose`](Self::expose), to
/// connect. Parsing never fails: clap would quote a rejected value in its
/// error message, so the URL is checked when connecting, where the error
/// names the part that is wrong without echoing it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, password included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl FromStr for DatabaseUrl {
    type Err = Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self(url.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_nothing_of_the_url() {
        let url: DatabaseUrl = "postgres://u:s3cret@db.example:5432/pharox"
            .parse()
            .unwrap();
        let debug = format!("{url:?} {:?}", Some(&url));
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!debug.contains("db.example"), "{debug}");
        assert_eq!(url.expose(), "postgres://u:s3cret@db.example:5432/pharox");
    }

    #[test]
    fn a_badly_encoded_password_does_not_leak_either() {
        // An unencoded `/` moves the password into the URL's path.
        let url = DatabaseUrl::from("postgres://u:12/s3cret@h/db".to_owned());
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
