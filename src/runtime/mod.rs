//! Everything that talks to ONNX Runtime: finding and loading the library ([`library`]), the execution
//! providers ([`ep`], CUDA's settings in [`cuda_opts`]), building sessions from a graph plus an
//! in-memory weights buffer ([`session`]), stopping a run mid-way ([`run_guard`]), feeding and reading their tensors ([`tensor_io`]), and the GPU's memory in use ([`device_mem`], NVML).

pub mod cuda_libs;
pub mod cuda_opts;
pub mod device_mem;
pub mod ep;
pub mod library;
pub mod run_guard;
pub mod session;
pub mod tensor_io;

pub use cuda_opts::{ConvAlgoSearch, CudaArgs, CudaOptions, CudaOptionsError};
pub use ep::Device;
pub use library::{Runtime, RuntimeError};
pub use session::{build_session, SessionError, SessionOptions};
