//! Everything that talks to ONNX Runtime: finding and loading the library ([`library`]), the execution
//! providers ([`ep`], CUDA's settings in [`cuda_opts`]), building sessions from a graph plus an
//! in-memory weights buffer or one staged on disk ([`session`], [`staged`]), stopping a run mid-way ([`run_guard`]), feeding and reading their tensors ([`tensor_io`]), the GPU's memory in use ([`device_mem`], NVML) and the process's host memory ([`host_mem`]).

pub mod cuda_libs;
pub mod cuda_opts;
pub mod device_mem;
pub mod ep;
pub mod host_mem;
pub mod library;
pub mod run_guard;
pub mod session;
pub mod staged;
pub mod tensor_io;

pub use cuda_opts::{ConvAlgoSearch, CudaArgs, CudaOptions, CudaOptionsError};
pub use ep::Device;
pub use library::{Runtime, RuntimeError};
pub use session::{build_session, build_session_staged, SessionError, SessionOptions};
