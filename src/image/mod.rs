//! Output images: PNG files with an A1111-compatible `parameters` chunk and a `stipple` JSON chunk
//! ([`png`]), written on a thread of their own ([`writer`]), the A1111 infotext format itself
//! ([`infotext`]), the pictures image-to-image starts from ([`init`]; "only masked" in
//! [`inpaint_area`], masked content fill in [`fill`], PIL's mask blur in [`blur`]), and resizing and upscaling them
//! ([`resample`], [`upscale`]).

pub mod blur;
pub mod fill;
pub mod infotext;
pub mod init;
pub mod inpaint_area;
pub mod png;
pub mod resample;
pub mod upscale;
pub mod writer;

pub use infotext::{format_infotext, parse_infotext, Infotext, InfotextError, Resources};
pub use png::{read_text_chunks, read_text_chunks_from, save_png, PngError, SavedImage};
