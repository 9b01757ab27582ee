//! The pipeline's pure-Rust numerics against references computed by torch, transformers and
//! diffusers (`scripts/reference_{rng,tokenizer,schedulers}.py` write `tests/fixtures/reference/`).

use serde_json::Value;
use std::path::PathBuf;
use stipple::pipeline::rng::TorchRng;
use stipple::pipeline::tokenizer::{ClipTokenizer, CONTEXT_LEN};

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn load(name: &str) -> Value {
    let path = reference_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every call of every sequence on one generator, as torch drew them (1e-6 abs).
#[test]
fn torch_rng_matches_torch_randn() {
    let reference = load("rng.json");
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let mut rng = TorchRng::new(seed);
        for (k, call) in case["calls"].as_array().unwrap().iter().enumerate() {
            let n = call["numel"].as_u64().unwrap() as usize;
            let got = rng.randn(n);
            assert_eq!(got.len(), n);
            let want = f64s(&call["values"]);
            let idx: Vec<usize> = match &call["indices"] {
                Value::Null => (0..n).collect(),
                v => u32s(v).into_iter().map(|i| i as usize).collect(),
            };
            for (&i, &w) in idx.iter().zip(&want) {
                let err = (f64::from(got[i]) - w).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-6,
                    "seed {seed} call {k} (n={n}) [{i}]: {} vs {w}",
                    got[i]
                );
            }
            let sum: f64 = got.iter().map(|&x| f64::from(x)).sum();
            let want_sum = call["sum"].as_f64().unwrap();
            assert!(
                (sum - want_sum).abs() <= 1e-6 * n as f64,
                "seed {seed} call {k}: sum"
            );
        }
    }
    eprintln!("torch rng: max abs error {worst:e}");
}

fn mini_tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_dir(&reference_dir().join("clip_tokenizer_mini")).unwrap()
}

/// Ids (plain and padded to 77) as `transformers.CLIPTokenizer` gives them, exactly.
#[test]
fn clip_tokenizer_matches_transformers() {
    let reference = load("tokenizer.json");
    let pad = reference["meta"]["pad_id"].as_u64().unwrap() as u32;
    check_tokenizer(&mini_tokenizer(), &reference, pad);
}

/// The same prompts against a full SD1.x tokenizer folder, when one is named by
/// `STIPPLE_CLIP_TOKENIZER` (e.g. the output of `scripts/clip_vocab.py`).
#[test]
fn clip_tokenizer_matches_transformers_with_full_vocab() {
    let Some(dir) = std::env::var_os("STIPPLE_CLIP_TOKENIZER") else {
        eprintln!("STIPPLE_CLIP_TOKENIZER not set; full-vocabulary check skipped");
        return;
    };
    let tok = ClipTokenizer::from_dir(&PathBuf::from(dir)).unwrap();
    assert_eq!(
        tok.encode_padded("a photo of a cat", 49407)[..7],
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
    check_tokenizer(&tok, &load("tokenizer.json"), 49407);
}

fn check_tokenizer(tok: &ClipTokenizer, reference: &Value, pad: u32) {
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt), u32s(&case["ids"]), "prompt {prompt:?}");
        let padded = tok.encode_padded(prompt, pad);
        assert_eq!(padded.len(), CONTEXT_LEN);
        assert_eq!(padded, u32s(&case["padded"]), "padded prompt {prompt:?}");
    }
}

#[test]
fn clip_tokenizer_reports_a_broken_folder() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(dir.path().join("vocab.json"), "{not json").unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\n").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("JSON"), "{err}");
}
