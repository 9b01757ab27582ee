//! Ctrl-C and SIGTERM for a running batch: the first sets the stop flag (running jobs end after
//! their current step, nothing half-written is left), a second one exits at once with status 130.
//! [`install`] returns the flag.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Registers the handlers. A failure to register is not fatal: the batch still runs, and files
/// stay whole without it because every image is renamed into place complete.
pub fn install() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal set it.
        let exit_on_second =
            signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
        let set = signal_hook::flag::register(sig, stop.clone());
        if let Err(e) = exit_on_second.and(set) {
            tracing::warn!("cannot handle signal {sig}: {e}");
        }
    }
    #[cfg(not(unix))]
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone()) {
        tracing::warn!("cannot handle Ctrl-C: {e}");
    }
    stop
}
