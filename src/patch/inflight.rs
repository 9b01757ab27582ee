//! A byte budget for work in flight across threads: `InFlight::take(n)` blocks until `n` more
//! bytes fit under the cap and returns a permit that gives them back when dropped. One piece larger
//! than the cap runs alone rather than never.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

pub struct InFlight {
    cap: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Bytes taken from an [`InFlight`] budget, returned on drop.
pub struct Permit<'a> {
    budget: &'a InFlight,
    bytes: usize,
}

impl InFlight {
    pub fn new(cap: usize) -> Self {
        InFlight {
            cap,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    pub fn take(&self, bytes: usize) -> Permit<'_> {
        let bytes = bytes.min(self.cap);
        let mut used = self.lock();
        // Nothing a thread holds while it waits here can be what another holder waits for (the
        // holders only compute), so waiting cannot deadlock.
        while *used > 0 && *used + bytes > self.cap {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += bytes;
        Permit {
            budget: self,
            bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.budget.lock() -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn work_in_flight_stays_under_the_cap_and_oversized_work_runs_alone() {
        let budget = InFlight::new(100);
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let sizes = [40, 40, 40, 30, 250, 10, 60, 60, 5, 95];
        std::thread::scope(|s| {
            for &n in &sizes {
                let (budget, now, peak) = (&budget, &now, &peak);
                s.spawn(move || {
                    let _permit = budget.take(n);
                    let at = now.fetch_add(n.min(100), Ordering::SeqCst) + n.min(100);
                    peak.fetch_max(at, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now.fetch_sub(n.min(100), Ordering::SeqCst);
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 100);
        assert_eq!(now.load(Ordering::SeqCst), 0);
        assert_eq!(*budget.lock(), 0, "every permit was given back");
    }
}
