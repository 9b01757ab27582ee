//! How a front end stops a running job ([`Stop`], polled once per sampling step) and how sampling
//! ended ([`Ended`]). The engine re-exports [`Stop`]; it maps [`Ended`] to its own outcome.

/// What the running job should do at its next check point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    No,
    /// Abandon the current image (every image sharing its UNet calls), go on with the next ones.
    SkipImage,
    /// Abandon the whole job.
    Interrupt,
}

/// How [`crate::pipeline::Generator::generate`] ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every image of the job was made (or skipped on request).
    Done,
    /// Interrupted: the rest of the job was abandoned.
    Cancelled,
}
