//! Questions on a terminal before a command destroys something.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::CliError;

/// Asks `question` on a terminal and goes on only on yes; without a
/// terminal, refuses (the command needs `--yes` then).
pub fn confirm(question: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage {
            flag: "yes",
            reason: "is required when stdin is not a terminal".to_owned(),
        });
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "{question} [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Other(e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Other("cancelled".to_owned()))
    }
}
