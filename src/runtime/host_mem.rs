//! The process's host memory as Linux reports it (`/proc/self/status`): resident anonymous and
//! file-backed (mapped weights) memory and the peak, for `stipple bench` and the load trace that
//! `STIPPLE_MEM_LOG=1` prints to stderr ([`trace`]). Elsewhere every reading is `None`.

/// One reading, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostMem {
    /// Resident anonymous memory (`RssAnon`): what the process itself allocated.
    pub anon_mb: f64,
    /// Resident file-backed memory (`RssFile`): mapped files (the checkpoint, libraries); the
    /// kernel can drop and re-read it.
    pub file_mb: f64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub peak_mb: f64,
}

/// The process's memory now.
pub fn now() -> Option<HostMem> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some(HostMem {
        anon_mb: field("RssAnon:")?,
        file_mb: field("RssFile:")?,
        peak_mb: field("VmHWM:")?,
    })
}

/// With `STIPPLE_MEM_LOG` set, prints one line to stderr: `stage`, the seconds since the first
/// traced stage (components build side by side, so the times say which phase of which one is
/// slow) and the memory now. Costs one environment lookup otherwise.
pub fn trace(stage: &str) {
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if std::env::var_os("STIPPLE_MEM_LOG").is_none() {
        return;
    }
    let t = FIRST.get_or_init(std::time::Instant::now).elapsed();
    if let Some(m) = now() {
        eprintln!(
            "mem: {stage} (+{:.2} s): anon {:.0} MiB, file {:.0} MiB, peak {:.0} MiB",
            t.as_secs_f64(),
            m.anon_mb,
            m.file_mb,
            m.peak_mb
        );
    }
}
