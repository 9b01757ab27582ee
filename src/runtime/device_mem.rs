//! Memory in use on an NVIDIA GPU, read through NVML (`libnvidia-ml.so.1`, installed with the
//! driver) that is loaded only when asked for, so stipple neither links it nor needs it elsewhere.
//! [`Sampler`] polls it on a thread and keeps the peak: `stipple bench`'s device memory on CUDA.

use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// NVML's library: part of the NVIDIA driver.
#[cfg(windows)]
pub const NVML_LIBRARY: &str = "nvml.dll";
#[cfg(not(windows))]
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// How often [`Sampler::for_cuda`] reads the memory in use.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

type NvmlReturn = c_int;
type NvmlDevice = *mut c_void;
const NVML_SUCCESS: NvmlReturn = 0;

/// `nvmlMemory_t` (bytes); only `used` is read, the others give the layout.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceMemError {
    #[error("NVML is not available ({library}: {reason}); it comes with the NVIDIA driver")]
    Unavailable { library: String, reason: String },
    #[error("NVML {call} failed: {message}")]
    Call { call: &'static str, message: String },
    #[error("CUDA_VISIBLE_DEVICES={visible:?} has no device {index}")]
    NotVisible { visible: String, index: u32 },
}

/// Which GPU NVML should read: NVML numbers every GPU of the machine, CUDA only the visible ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Index(u32),
    /// `GPU-…` or `MIG-…`, as CUDA_VISIBLE_DEVICES may name a device.
    Uuid(String),
}

impl Target {
    /// NVML's name for CUDA's device `index`, through `CUDA_VISIBLE_DEVICES` when it is set. NVML
    /// counts in PCI bus order; CUDA does too with `CUDA_DEVICE_ORDER=PCI_BUS_ID` (on machines with
    /// mixed GPUs its default order may differ).
    pub fn for_cuda(index: u32, visible: Option<&str>) -> Result<Target, DeviceMemError> {
        let Some(visible) = visible.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Target::Index(index));
        };
        let entry = visible
            .split(',')
            .map(str::trim)
            .nth(index as usize)
            .ok_or_else(|| DeviceMemError::NotVisible {
                visible: visible.to_string(),
                index,
            })?;
        Ok(match entry.parse::<u32>() {
            Ok(i) => Target::Index(i),
            Err(_) => Target::Uuid(entry.to_string()),
        })
    }
}

type InitFn = unsafe extern "C" fn() -> NvmlReturn;
type ByIndexFn = unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn;
type ByUuidFn = unsafe extern "C" fn(*const c_char, *mut NvmlDevice) -> NvmlReturn;
type MemoryFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> NvmlReturn;
type ErrorStringFn = unsafe extern "C" fn(NvmlReturn) -> *const c_char;

/// NVML, initialised, with the handle of one device; shut down when dropped.
pub struct Nvml {
    get_memory: MemoryFn,
    shutdown: InitFn,
    error_string: Option<ErrorStringFn>,
    device: NvmlDevice,
    // Last: the function pointers above point into it.
    _lib: Library,
}

// SAFETY: NVML's calls are thread-safe (NVML API reference, "Multi-threaded usage"); the device
// handle is an opaque pointer that stays valid until nvmlShutdown, which only `Drop` calls.
unsafe impl Send for Nvml {}

impl Nvml {
    /// Loads NVML and finds `target`.
    pub fn open(target: &Target) -> Result<Nvml, DeviceMemError> {
        Self::open_library(NVML_LIBRARY, target)
    }

    /// [`Nvml::open`] from a given library file or name.
    pub fn open_library(library: &str, target: &Target) -> Result<Nvml, DeviceMemError> {
        let unavailable = |reason: String| DeviceMemError::Unavailable {
            library: library.to_string(),
            reason,
        };
        // SAFETY: loading NVML runs no initialisers beyond the driver library's own.
        let lib = unsafe { Library::new(library) }.map_err(|e| unavailable(e.to_string()))?;
        // SAFETY: the types are NVML's C signatures (nvml.h) for these names.
        let (init, shutdown, get_memory, error_string) = unsafe {
            let sym = |name: &str| unavailable(format!("no symbol {name}"));
            (
                *lib.get::<InitFn>("nvmlInit_v2")
                    .map_err(|_| sym("nvmlInit_v2"))?,
                *lib.get::<InitFn>("nvmlShutdown")
                    .map_err(|_| sym("nvmlShutdown"))?,
                *lib.get::<MemoryFn>("nvmlDeviceGetMemoryInfo")
                    .map_err(|_| sym("nvmlDeviceGetMemoryInfo"))?,
                lib.get::<ErrorStringFn>("nvmlErrorString").ok().map(|f| *f),
            )
        };
        let message = |code: NvmlReturn| error_message(error_string, code);
        // SAFETY: nvmlInit_v2 takes no arguments; each successful init is paired with the
        // nvmlShutdown in Drop (or below, when finding the device fails).
        let code = unsafe { init() };
        if code != NVML_SUCCESS {
            return Err(DeviceMemError::Call {
                call: "nvmlInit_v2",
                message: message(code),
            });
        }
        let mut device: NvmlDevice = std::ptr::null_mut();
        let found = match target {
            Target::Index(i) => {
                // SAFETY: as above; `device` is a valid out-pointer.
                unsafe { lib.get::<ByIndexFn>("nvmlDeviceGetHandleByIndex_v2") }.map(|f| {
                    ("nvmlDeviceGetHandleByIndex_v2", unsafe {
                        f(*i, &mut device)
                    })
                })
            }
            Target::Uuid(u) => {
                let uuid = CString::new(u.as_str()).unwrap_or_default();
                // SAFETY: as above; `uuid` outlives the call.
                unsafe { lib.get::<ByUuidFn>("nvmlDeviceGetHandleByUUID") }.map(|f| {
                    ("nvmlDeviceGetHandleByUUID", unsafe {
                        f(uuid.as_ptr(), &mut device)
                    })
                })
            }
        };
        let failed = match found {
            Ok((_, NVML_SUCCESS)) => None,
            Ok((call, code)) => Some(DeviceMemError::Call {
                call,
                message: format!("{} ({target:?})", message(code)),
            }),
            Err(e) => Some(unavailable(e.to_string())),
        };
        if let Some(e) = failed {
            // SAFETY: balances the successful init above.
            unsafe { shutdown() };
            return Err(e);
        }
        Ok(Nvml {
            get_memory,
            shutdown,
            error_string,
            device,
            _lib: lib,
        })
    }

    /// Bytes in use on the device, by every process (NVML's `used`).
    pub fn used_bytes(&self) -> Result<u64, DeviceMemError> {
        self.memory().map(|m| m.used)
    }

    /// Bytes free on the device (NVML's `free`).
    pub fn free_bytes(&self) -> Result<u64, DeviceMemError> {
        self.memory().map(|m| m.free)
    }

    fn memory(&self) -> Result<NvmlMemory, DeviceMemError> {
        let mut m = NvmlMemory::default();
        // SAFETY: `device` came from NVML and NVML is initialised; `m` is a valid nvmlMemory_t.
        let code = unsafe { (self.get_memory)(self.device, &mut m) };
        if code != NVML_SUCCESS {
            return Err(DeviceMemError::Call {
                call: "nvmlDeviceGetMemoryInfo",
                message: error_message(self.error_string, code),
            });
        }
        Ok(m)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: pairs with the nvmlInit_v2 of `open_library`.
        unsafe { (self.shutdown)() };
    }
}

fn error_message(error_string: Option<ErrorStringFn>, code: NvmlReturn) -> String {
    let text = error_string.and_then(|f| {
        // SAFETY: nvmlErrorString returns a static NUL-terminated string, or null.
        let p = unsafe { f(code) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    });
    match text {
        Some(t) => format!("{t} (NVML error {code})"),
        None => format!("NVML error {code}"),
    }
}

/// Device memory over a measurement, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPeak {
    /// In use when the sampler started (other processes, and this one before loading a model).
    pub baseline: u64,
    /// The most seen in use at once.
    pub peak: u64,
}

impl MemoryPeak {
    /// What the measured work added over the baseline.
    pub fn added(&self) -> u64 {
        self.peak.saturating_sub(self.baseline)
    }
}

/// Reads the memory in use on a thread every `every` and keeps the peak. Polling can miss a spike
/// shorter than the interval; the reading at [`Sampler::finish`] is counted too.
pub struct Sampler {
    baseline: u64,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<u64>>,
}

impl Sampler {
    /// Samples CUDA's device `index` through NVML every [`SAMPLE_EVERY`].
    pub fn for_cuda(index: i32) -> Result<Sampler, DeviceMemError> {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let target = Target::for_cuda(index.max(0) as u32, visible.as_deref())?;
        let nvml = Nvml::open(&target)?;
        Self::start(move || nvml.used_bytes(), SAMPLE_EVERY)
    }

    /// Reads the baseline now (its error is returned), then polls `read` until [`Sampler::finish`];
    /// a failed poll is skipped.
    pub fn start<F>(mut read: F, every: Duration) -> Result<Sampler, DeviceMemError>
    where
        F: FnMut() -> Result<u64, DeviceMemError> + Send + 'static,
    {
        let baseline = read()?;
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("device-mem".into())
            .spawn(move || {
                let mut peak = baseline;
                loop {
                    let stop =
                        !matches!(rx.recv_timeout(every), Err(mpsc::RecvTimeoutError::Timeout));
                    if let Ok(used) = read() {
                        peak = peak.max(used);
                    }
                    if stop {
                        return peak;
                    }
                }
            })
            .map_err(|e| DeviceMemError::Call {
                call: "sampler thread",
                message: e.to_string(),
            })?;
        Ok(Sampler {
            baseline,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops sampling (with one last reading) and returns the baseline and the peak.
    pub fn finish(mut self) -> MemoryPeak {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let peak = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(self.baseline);
        MemoryPeak {
            baseline: self.baseline,
            peak: peak.max(self.baseline),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Dropping the sender ends the thread's wait at once (an early return of the measured work).
        self.stop.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn missing_nvml_is_an_error_not_a_panic() {
        let e = Nvml::open_library("libnvidia-ml-not-here.so.1", &Target::Index(0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("NVML is not available"), "{e}");
        assert!(e.contains("libnvidia-ml-not-here.so.1"), "{e}");
    }

    #[test]
    fn visible_devices_map_cuda_indices_to_nvml() {
        assert_eq!(Target::for_cuda(1, None).unwrap(), Target::Index(1));
        assert_eq!(Target::for_cuda(0, Some("")).unwrap(), Target::Index(0));
        assert_eq!(Target::for_cuda(1, Some("3, 5")).unwrap(), Target::Index(5));
        assert_eq!(
            Target::for_cuda(0, Some("GPU-8f6c2b1e")).unwrap(),
            Target::Uuid("GPU-8f6c2b1e".into())
        );
        let e = Target::for_cuda(2, Some("0,1")).unwrap_err().to_string();
        assert!(e.contains("no device 2"), "{e}");
    }

    #[test]
    fn the_sampler_keeps_the_peak_and_the_baseline() {
        let used = Arc::new(AtomicU64::new(100));
        let reads = Arc::new(AtomicU64::new(0));
        let (reader, counter) = (used.clone(), reads.clone());
        let s = Sampler::start(
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(reader.load(Ordering::SeqCst))
            },
            Duration::from_millis(5),
        )
        .unwrap();
        used.store(900, Ordering::SeqCst);
        // Wait for two polls after the change (not a fixed sleep: a loaded machine is slow).
        let seen = reads.load(Ordering::SeqCst);
        let t = std::time::Instant::now();
        while reads.load(Ordering::SeqCst) < seen + 2 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        used.store(300, Ordering::SeqCst);
        let m = s.finish();
        assert_eq!(m.baseline, 100);
        assert_eq!(m.peak, 900);
        assert_eq!(m.added(), 800);
    }

    #[test]
    fn a_failed_baseline_is_returned_and_failed_polls_are_skipped() {
        let e = Sampler::start(
            || {
                Err(DeviceMemError::Call {
                    call: "test",
                    message: "no".into(),
                })
            },
            SAMPLE_EVERY,
        );
        assert!(e.is_err());
        let mut n = 0;
        let s = Sampler::start(
            move || {
                n += 1;
                if n == 1 {
                    Ok(7)
                } else {
                    Err(DeviceMemError::Call {
                        call: "test",
                        message: "gone".into(),
                    })
                }
            },
            Duration::from_millis(1),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(
            s.finish(),
            MemoryPeak {
                baseline: 7,
                peak: 7
            }
        );
    }
}
