//! The cargo fuzz corpora (fuzz/corpus/<target>/, seeds from scripts/fuzz_seeds.py plus inputs the
//! fuzzer kept) run through the functions the fuzz targets call, so a regression shows on stable
//! without cargo-fuzz. The PNG seeds also check the reader against the chunks Python wrote.

use std::path::{Path, PathBuf};

use stipple::fuzzing;
use stipple::image::read_text_chunks_from;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = crate::util::root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Every file of the target's corpus through `run`; at least the seeds must be there.
fn run_corpus(target: &str, min: usize, run: fn(&[u8])) {
    let files = corpus(target);
    assert!(files.len() >= min, "{target}: {} files", files.len());
    for f in files {
        let data = std::fs::read(&f).unwrap();
        let caught = std::panic::catch_unwind(|| run(&data));
        assert!(caught.is_ok(), "{}: the fuzz target panics", f.display());
    }
}

#[test]
fn fuzz_corpus_prompt() {
    run_corpus("prompt", 17, fuzzing::prompt);
}

#[test]
fn fuzz_corpus_safetensors_header() {
    run_corpus("safetensors_header", 10, fuzzing::safetensors_header);
}

#[test]
fn fuzz_corpus_png_text() {
    run_corpus("png_text", 5, fuzzing::png_text);
}

#[test]
fn fuzz_corpus_job_lines() {
    run_corpus("job_lines", 6, fuzzing::job_lines);
}

fn chunks(name: &str) -> std::collections::BTreeMap<String, String> {
    let p = crate::util::root().join("fuzz/corpus/png_text").join(name);
    let bytes = std::fs::read(&p).unwrap();
    read_text_chunks_from(std::io::Cursor::new(bytes), Path::new(name)).unwrap()
}

#[test]
fn png_text_seeds_read_every_chunk_kind() {
    // The texts scripts/fuzz_seeds.py wrote, in tEXt, zTXt and iTXt (compressed and not), before
    // and after the image data.
    let params =
        "a fox, (snow:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, \
                  Seed: 1, Size: 512x512, Lora hashes: \"ink: abc, x: def\"";
    let stipple = "{\"prompt\":\"a fox\",\"seed\":1}";
    let text = chunks("seed-text.png");
    assert_eq!(text["parameters"], params);
    assert_eq!(text["stipple"], stipple);
    assert_eq!(chunks("seed-ztxt.png")["parameters"], params);
    let itxt = chunks("seed-itxt.png");
    assert_eq!(itxt["parameters"], "日本語 fox\nSteps: 4");
    assert_eq!(itxt["stipple"], stipple);
    assert!(chunks("seed-none.png").is_empty());
    let info = stipple::image::parse_infotext(&text["parameters"]).unwrap();
    assert_eq!(info.negative, "blurry");
    assert_eq!(info.get("Lora hashes"), Some("ink: abc, x: def"));
}
