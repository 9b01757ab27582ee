//! Embeds the architecture templates (graphs, weight maps, configs) so the binary alone opens a
//! checkpoint: every folder under `templates/` (the CLIP vocabulary in `templates/clip/`), and the
//! tiny test architectures from `tests/fixtures/tiny-*` (graphs only, never their weights).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(root: &Path, rel: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let child = rel.join(e.file_name());
        if e.path().is_dir() {
            if e.file_name() != "reference" {
                files(root, &child, keep, out);
            }
        } else if keep(&child) {
            out.push(child);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    let templates = manifest.join("templates");
    println!("cargo:rerun-if-changed={}", templates.display());
    if let Ok(rd) = std::fs::read_dir(&templates) {
        let mut dirs: Vec<_> = rd
            .flatten()
            .filter(|e| e.path().join("model_index.json").is_file())
            .collect();
        dirs.sort_by_key(|e| e.file_name());
        for d in dirs {
            sources.push((d.file_name().to_string_lossy().into_owned(), d.path()));
        }
    }
    for tiny in ["tiny-sd15", "tiny-sdxl", "tiny-sd2", "tiny-sd15-inpaint"] {
        let dir = manifest.join("tests/fixtures").join(tiny);
        // Watched even when missing (a checkout without fixtures): when it comes back, the tiny
        // templates are embedded again.
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("model_index.json").display()
        );
        if dir.join("model_index.json").is_file() {
            sources.push((tiny.to_string(), dir));
        }
    }
    // A template is graphs, weight maps and configs: weights and tokenizers of the fixture
    // folders stay out (the CLIP vocabulary is embedded once, from templates/clip).
    let keep = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with("weights.")
            && !p.starts_with("tokenizer")
            && !p.starts_with("tokenizer_2")
    };
    let mut code = String::from("/// (relative path, bytes)\npub type Files = &'static [(&'static str, &'static [u8])];\n/// (template name, files)\npub static EMBEDDED: &[(&str, Files)] = &[\n");
    for (name, dir) in &sources {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut list = Vec::new();
        files(dir, Path::new(""), &keep, &mut list);
        let _ = writeln!(code, "    ({name:?}, &[");
        for rel in list {
            let abs = dir.join(&rel);
            let rel = rel.to_string_lossy().replace('\\', "/");
            let _ = writeln!(
                code,
                "        ({rel:?}, include_bytes!({:?})),",
                abs.display().to_string()
            );
        }
        code.push_str("    ]),\n");
    }
    code.push_str("];\n");
    // The vocabulary: templates/clip when it exists, else the tiny fixture's (the same file).
    let vocab = if templates.join("clip/vocab.json.gz").is_file() {
        (
            templates.join("clip/vocab.json.gz"),
            templates.join("clip/merges.txt.gz"),
        )
    } else {
        let t = manifest.join("tests/fixtures/tiny-sd15/tokenizer");
        (t.join("vocab.json"), t.join("merges.txt"))
    };
    let _ = writeln!(
        code,
        "/// The CLIP BPE vocabulary (vocab.json, merges.txt; gzip when the name ends in .gz)\npub static CLIP_VOCAB: [(&str, &[u8]); 2] = [({:?}, include_bytes!({:?})), ({:?}, include_bytes!({:?}))];",
        vocab.0.file_name().unwrap_or_default().to_string_lossy(),
        vocab.0.display().to_string(),
        vocab.1.file_name().unwrap_or_default().to_string_lossy(),
        vocab.1.display().to_string(),
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("templates.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
