//! A sampling profile of the calling thread, for `STIPPLE_PROFILE=1 stipple bench` (Linux only): a
//! per-thread timer interrupts the thread every 0.2 ms of wall time and its handler records the
//! stack ([`Sampler::start`]); [`Sampler::stop`] returns a [`Profile`] whose `Display` counts the
//! samples by library, by the stipple function they were in, and by library entry point.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Whether `STIPPLE_PROFILE` asks for profiles (a measuring aid, not a setting).
pub fn wanted() -> bool {
    std::env::var_os("STIPPLE_PROFILE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Frames kept per sample, and samples per profile (40 000 samples: 8 s at 0.2 ms).
const DEPTH: usize = 24;
const CAPACITY: usize = 40_000;
const PERIOD_NS: i64 = 200_000;

/// What one profile found: each sample's return addresses, innermost first, without the
/// handler's own frames.
pub struct Profile {
    label: String,
    wall: Duration,
    samples: Vec<Vec<usize>>,
    /// Samples the buffer had no room for.
    dropped: usize,
}

/// A running sampler; only one runs at a time in a process.
#[cfg(target_os = "linux")]
pub struct Sampler {
    timer: libc::timer_t,
    label: String,
    started: Instant,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{CAPACITY, DEPTH};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// The samples: written only by the signal handler while a sampler runs, read after it stops.
    pub(super) static FRAMES: [[AtomicUsize; DEPTH]; CAPACITY] =
        [const { [const { AtomicUsize::new(0) }; DEPTH] }; CAPACITY];
    pub(super) static NEXT: AtomicUsize = AtomicUsize::new(0);
    pub(super) static RUNNING: AtomicBool = AtomicBool::new(false);

    pub(super) extern "C" fn on_signal(
        _sig: libc::c_int,
        _info: *mut libc::siginfo_t,
        _ctx: *mut libc::c_void,
    ) {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        if i >= CAPACITY {
            return;
        }
        let mut buf = [std::ptr::null_mut::<libc::c_void>(); DEPTH];
        // SAFETY: `buf` holds DEPTH pointers. glibc's backtrace is not formally async-signal-safe
        // (its first call loads the unwinder), which is why `start` calls it once beforehand.
        let n = unsafe { libc::backtrace(buf.as_mut_ptr(), DEPTH as libc::c_int) };
        for (slot, frame) in FRAMES[i].iter().zip(&buf[..n.max(0) as usize]) {
            slot.store(*frame as usize, Ordering::Relaxed);
        }
    }
}

#[cfg(target_os = "linux")]
impl Sampler {
    /// Starts sampling the calling thread; None (with a warning) when another sampler runs or the
    /// timer cannot be made.
    pub fn start(label: &str) -> Option<Sampler> {
        use std::sync::atomic::Ordering;
        if imp::RUNNING.swap(true, Ordering::AcqRel) {
            tracing::warn!("profile {label}: another profile is running");
            return None;
        }
        // Only the samples the last profile wrote hold frames.
        let used = imp::NEXT.swap(0, Ordering::Relaxed).min(CAPACITY);
        for sample in &imp::FRAMES[..used] {
            for slot in sample {
                slot.store(0, Ordering::Relaxed);
            }
        }
        // SAFETY: plain libc calls on zero-initialised structs; the handler only touches atomics
        // and its own stack.
        unsafe {
            let mut warm = [std::ptr::null_mut::<libc::c_void>(); 2];
            libc::backtrace(warm.as_mut_ptr(), 2);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = imp::on_signal as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut()) != 0 {
                imp::RUNNING.store(false, Ordering::Release);
                tracing::warn!("profile {label}: no SIGPROF handler");
                return None;
            }
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = libc::SIGPROF;
            event.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::c_int;
            let mut timer: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
                imp::RUNNING.store(false, Ordering::Release);
                tracing::warn!("profile {label}: no timer");
                return None;
            }
            let period = libc::timespec {
                tv_sec: 0,
                tv_nsec: PERIOD_NS,
            };
            let spec = libc::itimerspec {
                it_interval: period,
                it_value: period,
            };
            libc::timer_settime(timer, 0, &spec, std::ptr::null_mut());
            Some(Sampler {
                timer,
                label: label.to_string(),
                started: Instant::now(),
            })
        }
    }

    /// Stops sampling and returns what was recorded.
    pub fn stop(self) -> Profile {
        use std::sync::atomic::Ordering;
        let wall = self.started.elapsed();
        // SAFETY: the timer is this sampler's; disarming before deleting leaves no signal behind.
        unsafe {
            let off: libc::itimerspec = std::mem::zeroed();
            libc::timer_settime(self.timer, 0, &off, std::ptr::null_mut());
            libc::timer_delete(self.timer);
        }
        let taken = imp::NEXT.load(Ordering::Relaxed);
        let samples = imp::FRAMES[..taken.min(CAPACITY)]
            .iter()
            .map(|sample| {
                let frames: Vec<usize> = sample
                    .iter()
                    .map(|a| a.load(Ordering::Relaxed))
                    .take_while(|&a| a != 0)
                    .collect();
                // The handler and the kernel's signal trampoline.
                frames.into_iter().skip(2).collect()
            })
            .collect();
        imp::RUNNING.store(false, Ordering::Release);
        Profile {
            label: self.label,
            wall,
            samples,
            dropped: taken.saturating_sub(CAPACITY),
        }
    }
}

/// Elsewhere there is no sampler: `start` says so once and gives nothing.
#[cfg(not(target_os = "linux"))]
pub struct Sampler;

#[cfg(not(target_os = "linux"))]
impl Sampler {
    pub fn start(label: &str) -> Option<Sampler> {
        tracing::warn!("profile {label}: sampling profiles exist on Linux only");
        None
    }

    pub fn stop(self) -> Profile {
        Profile {
            label: String::new(),
            wall: Duration::ZERO,
            samples: Vec::new(),
            dropped: 0,
        }
    }
}

/// The library holding `addr` (file name) and its offset there.
fn locate(addr: usize) -> (String, usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: dladdr only reads the loader's tables; a zeroed Dl_info is a valid out-param.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(addr as *const libc::c_void, &mut info) != 0
                && !info.dli_fname.is_null()
            {
                let path = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
                let name = path.rsplit('/').next().unwrap_or("?").to_string();
                return (name, addr.wrapping_sub(info.dli_fbase as usize));
            }
        }
    }
    ("?".to_string(), addr)
}

impl Profile {
    /// How many samples were taken.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples with a frame within `[start, end)` (the code of one function) anywhere on the stack.
    pub fn through(&self, start: usize, end: usize) -> usize {
        self.samples
            .iter()
            .filter(|s| s.iter().any(|&a| (start..end).contains(&a)))
            .count()
    }
}

/// The functions at `offsets` (hex) of this executable, through binutils' `addr2line` and the
/// release build's line tables: the function the address is in (its first line of output names
/// the function the code was compiled into, inlined callees included). Empty names when
/// `addr2line` is not there (then `addr2line -f -C -i -e BINARY OFFSET` by hand says more).
fn names_of(offsets: &[&str]) -> Vec<String> {
    let blank = vec![String::new(); offsets.len()];
    let Ok(exe) = std::env::current_exe() else {
        return blank;
    };
    let out = std::process::Command::new("addr2line")
        .args(["-f", "-C", "-i", "-a", "-e"])
        .arg(&exe)
        .args(offsets)
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return blank;
    };
    // With -a each address comes first, then (function, location) pairs, innermost first.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = Vec::new();
    let mut chain: Vec<String> = Vec::new();
    let mut lines = text.lines();
    let flush = |chain: &mut Vec<String>, names: &mut Vec<String>| {
        names.push(chain.first().cloned().unwrap_or_default());
        chain.clear();
    };
    let mut started = false;
    while let Some(line) = lines.next() {
        if line.starts_with("0x") {
            if started {
                flush(&mut chain, &mut names);
            }
            started = true;
        } else {
            chain.push(line.to_string());
            lines.next();
        }
    }
    if started {
        flush(&mut chain, &mut names);
    }
    if names.len() == offsets.len() {
        names
    } else {
        blank
    }
}

/// The top `n` of `counts`, most first.
fn top(counts: HashMap<String, usize>, n: usize) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.samples.len().max(1);
        writeln!(
            f,
            "profile {}: {:.3} s, {} samples of the calling thread every {:.1} ms{}",
            self.label,
            self.wall.as_secs_f64(),
            self.samples.len(),
            PERIOD_NS as f64 / 1e6,
            if self.dropped > 0 {
                format!(" ({} past the buffer not kept)", self.dropped)
            } else {
                String::new()
            }
        )?;
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let (mut libs, mut own, mut entries) = (HashMap::new(), HashMap::new(), HashMap::new());
        for s in &self.samples {
            let frames: Vec<(String, usize)> = s.iter().map(|&a| locate(a)).collect();
            let Some(leaf) = frames.first() else { continue };
            *libs.entry(leaf.0.clone()).or_default() += 1;
            // The innermost frame in stipple itself: which of its functions the time is under.
            if let Some((_, off)) = frames.iter().find(|(l, _)| *l == exe) {
                *own.entry(format!("{off:#x}")).or_default() += 1;
            }
            // Where stipple called into a library: the outermost library frame below stipple's.
            if let Some(k) = frames.iter().position(|(l, _)| *l == exe) {
                if k > 0 {
                    let (lib, off) = &frames[k - 1];
                    *entries
                        .entry(format!("{lib}+{:#x}", off & !0xfff))
                        .or_default() += 1;
                }
            }
        }
        let pct = |c: usize| 100.0 * c as f64 / n as f64;
        writeln!(f, "  innermost frame by library:")?;
        for (lib, c) in top(libs, 8) {
            writeln!(f, "    {:>5.1} %  {lib}", pct(c))?;
        }
        let own = top(own, 12);
        let names = names_of(&own.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>());
        writeln!(f, "  innermost stipple frame (offset in {exe}, function):")?;
        for ((off, c), name) in own.iter().zip(names) {
            writeln!(f, "    {:>5.1} %  {off}  {name}", pct(*c))?;
        }
        writeln!(
            f,
            "  library entered from stipple (4 KiB page of the entry):"
        )?;
        for (e, c) in top(entries, 8) {
            writeln!(f, "    {:>5.1} %  {e}", pct(c))?;
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[inline(never)]
    fn spin(until: Instant) -> u64 {
        let mut x = 1u64;
        while Instant::now() < until {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        x
    }

    /// A thread that spins in one function for 200 ms is sampled about every 0.2 ms, and most
    /// samples have that function on their stack.
    #[test]
    fn a_busy_function_takes_most_samples() {
        let Some(s) = Sampler::start("spin") else {
            panic!("no sampler on Linux");
        };
        spin(Instant::now() + Duration::from_millis(200));
        let p = s.stop();
        assert!(p.len() > 200, "{} samples in 200 ms", p.len());
        let start = spin as fn(Instant) -> u64 as usize;
        // The function is far smaller than 4 KiB; its frame (a return address inside it, or the
        // innermost one while it runs) lies within.
        let inside = p.through(start, start + 4096);
        assert!(
            inside * 10 > p.len() * 8,
            "{inside} of {} samples in the spinning function\n{p}",
            p.len()
        );
        let text = p.to_string();
        assert!(text.contains("innermost frame by library"), "{text}");
        // A second sampler can start once the first has stopped.
        let again = Sampler::start("again").map(Sampler::stop);
        assert!(again.is_some());
    }
}
