//! Everything that talks to ONNX Runtime: finding and loading the library ([`library`]), the execution
//! providers ([`ep`]) and building sessions from a graph plus an in-memory weights buffer ([`session`]).

pub mod cuda_libs;
pub mod ep;
pub mod library;
pub mod session;

pub use ep::Device;
pub use library::{Runtime, RuntimeError};
pub use session::{build_session, SessionError, SessionOptions};
