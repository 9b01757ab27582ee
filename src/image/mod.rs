//! Output images: PNG files with an A1111-compatible `parameters` chunk and a `stipple` JSON chunk
//! ([`png`]), and the A1111 infotext format itself ([`infotext`]).

pub mod infotext;
pub mod png;

pub use infotext::{format_infotext, parse_infotext, Infotext, InfotextError, Resources};
pub use png::{read_text_chunks, save_png, PngError, SavedImage};
