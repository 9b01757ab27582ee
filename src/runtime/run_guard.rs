//! Stopping an ONNX Runtime run mid-way from another thread: a [`RunGuard`] holds run options shared
//! with the cancel path; [`RunGuard::install`] makes them the options of every run on the calling
//! thread ([`current`], read by `tensor_io`), and [`RunGuard::terminate`] ends the run in flight.

use ort::session::RunOptions;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

thread_local! {
    static CURRENT: RefCell<Option<RunGuard>> = const { RefCell::new(None) };
}

/// Run options one thread runs its sessions with and another may terminate. They are made at the
/// first run (front ends with a fake engine never load ONNX Runtime); without them (ONNX Runtime
/// could not make them) runs are only stopped between steps.
#[derive(Clone, Default)]
pub struct RunGuard(Arc<OnceLock<Option<RunOptions>>>);

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunGuard")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl RunGuard {
    /// Makes these options the ones every later run on this thread uses.
    pub fn install(&self) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
    }

    /// Ends the run in flight (it returns an error) and every run after it until [`Self::reset`].
    pub fn terminate(&self) {
        if let Some(Some(o)) = self.0.get() {
            let _ = o.terminate();
        }
    }

    /// Lets runs go on again: ONNX Runtime keeps the terminate flag until it is unset.
    pub fn reset(&self) {
        if let Some(Some(o)) = self.0.get() {
            let _ = o.unterminate();
        }
    }

    /// The options, made now if this is the first run (ONNX Runtime is loaded by then).
    pub fn options(&self) -> Option<&RunOptions> {
        self.0.get_or_init(|| RunOptions::new().ok()).as_ref()
    }
}

/// The guard installed on this thread, if any.
pub fn current() -> Option<RunGuard> {
    CURRENT.with(|c| c.borrow().clone())
}
