//! Stopping an ONNX Runtime run mid-way from another thread: a [`RunGuard`] holds run options shared
//! with the cancel path; [`RunGuard::install`] makes them the options of every run on the calling
//! thread ([`current`], read by `tensor_io`), and [`RunGuard::terminate`] ends the run in flight.

use ort::session::RunOptions;
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static CURRENT: RefCell<Option<Arc<RunOptions>>> = const { RefCell::new(None) };
}

/// Run options one thread runs its sessions with and another may terminate. Without them (ONNX
/// Runtime could not make them) runs are only stopped between steps.
#[derive(Clone)]
pub struct RunGuard(Option<Arc<RunOptions>>);

impl Default for RunGuard {
    fn default() -> Self {
        RunGuard(RunOptions::new().ok().map(Arc::new))
    }
}

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunGuard").field(&self.0.is_some()).finish()
    }
}

impl RunGuard {
    /// Makes these options the ones every later run on this thread uses.
    pub fn install(&self) {
        CURRENT.with(|c| *c.borrow_mut() = self.0.clone());
    }

    /// Ends the run in flight (it returns an error) and every run after it until [`Self::reset`].
    pub fn terminate(&self) {
        if let Some(o) = &self.0 {
            let _ = o.terminate();
        }
    }

    /// Lets runs go on again: ONNX Runtime keeps the terminate flag until it is unset.
    pub fn reset(&self) {
        if let Some(o) = &self.0 {
            let _ = o.unterminate();
        }
    }
}

/// The options installed on this thread, if any.
pub fn current() -> Option<Arc<RunOptions>> {
    CURRENT.with(|c| c.borrow().clone())
}
