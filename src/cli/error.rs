//! What a command's failure is, as a type: [`CliError::Usage`] (the command line, the config or
//! the environment is wrong: exit 2) or [`CliError::Failed`] (the work failed: exit 1).
//! [`CliError::exit_code`] is the mapping the README documents.

use std::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something the user typed or configured is wrong; nothing was run.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// Exit status of a command that finished.
pub const EXIT_DONE: u8 = 0;
/// Exit status of a command that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a bad command line, config or environment (clap's own usage errors use it too).
pub const EXIT_USAGE: u8 = 2;

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILED,
        }
    }

    /// A usage error from any error, with its causes.
    pub fn usage(e: impl Error) -> CliError {
        CliError::Usage(chain(&e))
    }

    /// A failure from any error, with its causes.
    pub fn failed(e: impl Error) -> CliError {
        CliError::Failed(chain(&e))
    }

    /// The same error with `what` in front: `cannot load the model in X: ...`.
    pub fn context(self, what: impl std::fmt::Display) -> CliError {
        match self {
            CliError::Usage(m) => CliError::Usage(format!("{what}: {m}")),
            CliError::Failed(m) => CliError::Failed(format!("{what}: {m}")),
        }
    }
}

/// `e` and its causes joined by `: `; a cause whose text the message already holds is not
/// repeated (many errors print their source inside their own message).
pub fn chain(e: &dyn Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// `.failed()?` / `.usage()?` on any result whose error is an [`Error`].
pub trait Classify<T> {
    fn failed(self) -> Result<T, CliError>;
    fn usage(self) -> Result<T, CliError>;
}

impl<T, E: Error> Classify<T> for Result<T, E> {
    fn failed(self) -> Result<T, CliError> {
        self.map_err(CliError::failed)
    }
    fn usage(self) -> Result<T, CliError> {
        self.map_err(CliError::usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn a_cause_is_shown_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(chain(&Repeats(io())), "cannot read x: no such file");
        assert_eq!(chain(&Hides(io())), "cannot read x: no such file");
        assert_eq!(CliError::usage(Hides(io())).exit_code(), EXIT_USAGE);
        assert_eq!(CliError::failed(Hides(io())).exit_code(), EXIT_FAILED);
    }
}
