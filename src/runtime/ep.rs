//! Execution providers: `--device cpu|cuda:N|dml:N`, registered so that a failure is an error the user
//! sees, never a silent fall back to the CPU.
//!
//! [`Device`] parses the flag; [`Device::dispatch`] gives the provider list for a session (CUDA with
//! the [`CudaOptions`] of the config and flags); CUDA's libraries are preloaded from
//! `STIPPLE_CUDA_LIBS` (colon-separated folders) when set.

use super::cuda_opts::CudaOptions;
use ort::ep::ExecutionProvider;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(i32),
    DirectMl(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}; use cpu, cuda:N or dml:N")]
    Unknown(String),
    #[error("the {provider} execution provider is not in this ONNX Runtime ({library}); {hint}")]
    Unavailable {
        provider: &'static str,
        library: String,
        hint: &'static str,
    },
    #[error("cannot load the CUDA libraries: {0}")]
    CudaLibs(String),
}

impl FromStr for Device {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let (kind, idx) = match lower.split_once(':') {
            Some((k, i)) => (
                k.to_string(),
                i.parse::<i32>()
                    .ok()
                    .filter(|i| *i >= 0)
                    .ok_or_else(|| DeviceError::Unknown(s.to_string()))?,
            ),
            None => (lower.clone(), 0),
        };
        match kind.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(idx)),
            "dml" | "directml" => Ok(Device::DirectMl(idx)),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::DirectMl(i) => write!(f, "dml:{i}"),
        }
    }
}

/// Which providers the loaded library offers (name, available).
pub fn providers() -> Vec<(&'static str, bool)> {
    vec![
        (
            "CPUExecutionProvider",
            ort::ep::CPU::is_available().unwrap_or(false),
        ),
        (
            "CUDAExecutionProvider",
            ort::ep::CUDA::is_available().unwrap_or(false),
        ),
        ("DmlExecutionProvider", directml_available()),
    ]
}

#[cfg(windows)]
fn directml_available() -> bool {
    ort::ep::DirectML::is_available().unwrap_or(false)
}

#[cfg(not(windows))]
fn directml_available() -> bool {
    false
}

impl Device {
    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// Provider list for a session on this device; registration failures are errors. `cuda` is
    /// used on CUDA devices only.
    pub fn dispatch(
        self,
        library: &str,
        cuda: &CudaOptions,
    ) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, DeviceError> {
        match self {
            Device::Cpu => Ok(vec![ort::ep::CPU::default().build().error_on_failure()]),
            Device::Cuda(id) => {
                if !ort::ep::CUDA::is_available().unwrap_or(false) {
                    return Err(DeviceError::Unavailable {
                        provider: "CUDA",
                        library: library.to_string(),
                        hint: "install the GPU build with `scripts/setup --gpu` and run with STIPPLE_GPU=1",
                    });
                }
                preload_cuda()?;
                // The CPU provider (shape arithmetic) without its arena: session creation stages
                // every weight in CPU memory on its way to the GPU, and an arena would keep that
                // memory (the size of the model) for the life of the process.
                Ok(vec![
                    cuda.provider(id).build().error_on_failure(),
                    ort::ep::CPU::default()
                        .with_arena_allocator(false)
                        .build()
                        .error_on_failure(),
                ])
            }
            Device::DirectMl(id) => directml(id, library),
        }
    }
}

#[cfg(windows)]
fn directml(
    id: i32,
    _library: &str,
) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, DeviceError> {
    Ok(vec![ort::ep::DirectML::default()
        .with_device_id(id)
        .build()
        .error_on_failure()])
}

#[cfg(not(windows))]
fn directml(
    _id: i32,
    library: &str,
) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, DeviceError> {
    Err(DeviceError::Unavailable {
        provider: "DirectML",
        library: library.to_string(),
        hint: "DirectML exists only on Windows",
    })
}

/// Preloads the CUDA 13 / cuDNN 9 libraries found on the machine; a missing one is named.
fn preload_cuda() -> Result<(), DeviceError> {
    let libs = super::cuda_libs::find();
    if !libs.missing.is_empty() {
        return Err(DeviceError::CudaLibs(format!(
            "not found: {} (install the nvidia-*-cu13 / nvidia-cudnn-cu13 wheels, or set \
             STIPPLE_CUDA_LIBS or LD_LIBRARY_PATH to their folders)",
            libs.missing.join(", ")
        )));
    }
    super::cuda_libs::preload(&libs).map_err(DeviceError::CudaLibs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flags_parse() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("CUDA:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!("dml:2".parse::<Device>().unwrap(), Device::DirectMl(2));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("tpu"
            .parse::<Device>()
            .unwrap_err()
            .to_string()
            .contains("cuda:N"));
    }
}
