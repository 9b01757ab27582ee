//! Weights staged on disk for CPU sessions (`stipple::runtime::staged`): the staging file must
//! hold exactly the bytes of the in-memory buffer it replaces (which the reference-image tests
//! check against diffusers), with and without an adapter delta, for a model folder and for a
//! single file whose fp16 weights the CPU graph reads as fp32; and a CPU load must take that path.

use crate::util::*;
use std::collections::HashMap;
use stipple::model::layout::{GraphKind, OpenOptions};
use stipple::model::Model;
use stipple::patch::{assemble_graph, assemble_graph_to};
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::staged;

#[test]
fn the_staging_file_holds_the_in_memory_buffer_byte_for_byte() {
    let single = root().join("tests/fixtures/single-file/tiny-sd15.safetensors");
    for path in [tiny_model(), single] {
        let model = Model::open_with(&path, OpenOptions::default()).unwrap();
        assert!(!model.components.is_empty());
        for (kind, c) in &model.components {
            let (_, wm) = c.graph_of(GraphKind::Plain).expect("a plain graph");
            // A delta on the first parameter: the file must hold base + ΔW as the buffer does.
            let float = wm
                .initializers
                .iter()
                .find(|e| e.dtype == "float32" || e.dtype == "float16")
                .expect("a float weight");
            let first = float.sources()[0].to_string();
            let numel: usize = c.weights.tensor(&first).expect("its weight").numel();
            let delta: HashMap<String, Vec<f32>> =
                HashMap::from([(first.clone(), vec![0.25; numel])]);
            for deltas in [HashMap::new(), delta] {
                let (buf, stats) = assemble_graph(c, GraphKind::Plain, &deltas).unwrap();
                let file = tempfile::tempfile().unwrap();
                let staged = assemble_graph_to(c, GraphKind::Plain, &deltas, &file).unwrap();
                assert_eq!(staged, stats, "{} {kind}", path.display());
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
                assert_eq!(bytes.len(), buf.len(), "{} {kind}", path.display());
                assert!(
                    bytes == *buf,
                    "{} {kind} (delta on {}): the staging file differs from the buffer",
                    path.display(),
                    if deltas.is_empty() { "nothing" } else { &first }
                );
                assert_eq!(stats.patched, deltas.len(), "{} {kind}", path.display());
            }
        }
    }
}

#[test]
fn a_cpu_load_builds_its_sessions_from_staging_files() {
    // Other tests load models beside this one and may only add to the count, never take it back:
    // a build that went back to the in-memory buffer leaves it at zero.
    let g = Generator::load(EngineSpec::new(tiny_model()), runtime()).unwrap();
    drop(g);
    assert!(
        staged::baked_sessions() >= 3,
        "the text encoder, UNet and VAE decoder of a CPU load come from staging files: {} did",
        staged::baked_sessions()
    );
}

#[test]
fn a_staging_folder_that_cannot_be_made_falls_back_to_memory_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Each run in its own process: the environment picks where staging goes (or whether it does).
    let generate = |env: (&str, &str), name: &str| {
        let out = dir.path().join(name);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .env(env.0, env.1)
            .args(["generate", "--device", "cpu", "--prompt", "a red fox"])
            .args(["--seed", "3", "--steps", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{name}: {stderr}");
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap())
                .unwrap();
        let png = std::path::PathBuf::from(line["path"].as_str().unwrap());
        (read_rgb(&png), stderr)
    };
    // Nothing can make a folder under /dev/null: the staging file cannot be written.
    let (fallback, warned) = generate(("STIPPLE_STAGING_DIR", "/dev/null/staging"), "fallback");
    assert!(
        warned.contains("staging the weights on disk failed") && warned.contains("from memory"),
        "{warned}"
    );
    let (memory, _) = generate(("STIPPLE_STAGE_WEIGHTS", "0"), "memory");
    assert_eq!(fallback, memory, "the in-memory build made another picture");
}
