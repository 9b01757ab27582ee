//! Textual-inversion embeddings: files in embedding folders, used by name in prompts as A1111 does
//! (the file stem as a word, emphasis applying to its vectors) or as ComfyUI's `embedding:name`.
//!
//! [`Library`] finds the files in the folders and reads them when first used ([`Embedding::read`]);
//! [`Prompter`] turns a prompt fragment into tokens and embedding vectors for one text encoder,
//! collecting the vectors in [`Rows`] (fed to the text encoder's `extra_token_rows` input, see
//! `model/extra_tokens.rs`); ids at or past the vocabulary size refer to those rows.

mod file;
mod library;
pub mod listing;
mod matching;
mod rows;

pub use file::{Embedding, Vectors, MAX_VECTORS};
pub use library::Library;
pub use matching::{split_named, NameIndex, Piece};
pub use rows::{Prompter, Rows};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    #[error("embedding {path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "embedding {path}: this is a pickle-based file ({what}); loading it can run arbitrary code, so stipple refuses it. \
         Convert it to .safetensors first (e.g. with a trusted Python: torch.load + safetensors.torch.save_file)"
    )]
    Pickle { path: PathBuf, what: String },
    #[error("embedding {path}: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error(
        "embedding `{name}` ({path}) is {kind}, but the model is {family} (text encoder widths {widths}): \
         use an embedding made for {family}"
    )]
    WrongFamily {
        name: String,
        path: PathBuf,
        kind: String,
        family: String,
        widths: String,
    },
    #[error("no embedding called `{name}` in {searched}{}", hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    NotFound {
        name: String,
        searched: String,
        hint: Option<String>,
    },
    #[error("the text encoder's graph has no token-embedding lookup that embeddings can extend, so `{name}` cannot be used")]
    NoLookup { name: String },
}
