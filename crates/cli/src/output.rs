//! What the commands print. Stdout goes through [`Stdout`], so that a
//! closed stdout (`pharox ... | head`) is a typed error the commands can
//! tell from a failure, instead of the panic `println!` raises; stderr goes
//! through [`stderr_line`], which never fails.

use std::fmt;
use std::io::{self, BufWriter, StdoutLock, Write};

/// Why writing to stdout failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away (EPIPE). Not a failure of the command: `main`
    /// ends quietly on it.
    #[error("stdout is closed")]
    Closed,
    /// Any other write error (a full disk, a revoked terminal).
    #[error("cannot write to stdout: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe => Self::Closed,
            _ => Self::Io(e),
        }
    }
}

/// Stdout, locked and buffered for one command's output: nothing else
/// interleaves with it, and a long table costs few writes. Not `Send`, so
/// hold it only in code that does not await.
pub struct Stdout {
    out: BufWriter<StdoutLock<'static>>,
}

impl Stdout {
    /// Locks stdout until [`finish`](Self::finish) (or drop).
    pub fn lock() -> Self {
        Self {
            out: BufWriter::new(io::stdout().lock()),
        }
    }

    /// Writes one line (`args` and a newline).
    pub fn line(&mut self, args: fmt::Arguments<'_>) -> Result<(), OutputError> {
        self.out.write_fmt(args)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Flushes what is buffered: the last chance for a closed stdout to show.
    pub fn finish(mut self) -> Result<(), OutputError> {
        self.out.flush()?;
        Ok(())
    }
}

/// Writes everything `print` writes to a locked stdout, then flushes it.
pub fn print(
    print: impl FnOnce(&mut Stdout) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let mut out = Stdout::lock();
    print(&mut out)?;
    out.finish()
}

/// Writes a line to stderr. A closed stderr is ignored: there is nowhere
/// left to say anything, and it must not turn into a panic either.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `outln!(out, "format", args...)`: one line to a [`Stdout`], `?` on its
/// error.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))?
    };
}

/// `errln!("format", args...)`: one line to stderr (see [`stderr_line`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_a_closed_stdout_and_other_errors_are_not() {
        let closed = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(closed, OutputError::Closed), "{closed:?}");
        let full = OutputError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(full, OutputError::Io(_)), "{full:?}");
        assert!(full.to_string().starts_with("cannot write to stdout: "));
    }
}
