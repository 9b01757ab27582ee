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
                let into = staged::StagingFile::from(file.try_clone().unwrap());
                let staged = assemble_graph_to(c, GraphKind::Plain, &deltas, &into).unwrap();
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

/// One `stipple generate` on the CPU in its own process (the environment picks where staging goes
/// and the fault it meets), with `args` after the common ones: the picture and stderr.
fn generate_with(
    out_dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
    name: &str,
) -> ((u32, u32, Vec<u8>), String) {
    let out = out_dir.join(name);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .envs(env.iter().copied())
        .args(["generate", "--device", "cpu", "--seed", "3", "--steps", "2"])
        .args(["--no-preview", "--out"])
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{name}: {stderr}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let png = std::path::PathBuf::from(line["path"].as_str().unwrap());
    (read_rgb(&png), stderr)
}

/// What a staging folder holds after a run: the names under it (none once every session is built,
/// whether its staging succeeded or failed).
fn left_in(staging: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_disk_that_fills_up_while_staging_falls_back_to_memory_and_leaves_nothing_behind() {
    // STIPPLE_STAGING_FAIL_AFTER (runtime::staged's test hook) makes a staging file's writes fail
    // with ENOSPC after its byte budget, as a full disk does (RLIMIT_FSIZE could not stand in: the
    // sparse file's set_len fails first, with EFBIG, and the limit would stop the PNG too): 0 fails the first write, 3000 leaves
    // a partial write (the tiny model's first weights are larger). "@3" spares the load's three
    // stagings (text encoder, UNet, VAE decoder) and hits what comes after: the re-bake of an
    // adapter swap. Each case is compared with the in-memory build of the same command.
    let dir = tempfile::tempdir().unwrap();
    let lora_dir = root().join("tests/fixtures/lora");
    let lora_dir = lora_dir.to_str().unwrap();
    let plain: &[&str] = &["--prompt", "a red fox"];
    // The tiny graphs' resident sessions pin weights (stage some) only with static shapes: there
    // the text encoder's position ids feed a foldable node.
    let resident: &[&str] = &[
        "--prompt",
        "a red fox",
        "--resident-weights",
        "true",
        "--static-shapes",
    ];
    let swap: &[&str] = &[
        "--prompt",
        "a red fox <lora:lyco_locon:0.8>",
        "--lora-dir",
        lora_dir,
    ];
    // (name, arguments, fault, the session whose staging must have failed)
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("first-write", plain, "0", "unet"),
        ("partial-write", plain, "3000", "unet"),
        ("resident", resident, "0", "text_encoder"),
        ("swap", swap, "3000@3", "unet"),
        ("swap-first-write", swap, "0@3", "text_encoder"),
    ];
    for (name, args, fault, failed) in cases {
        let staging = dir.path().join(format!("staging-{name}"));
        let staging_env = staging.to_str().unwrap();
        let env = [
            ("STIPPLE_STAGING_DIR", staging_env),
            ("STIPPLE_STAGING_FAIL_AFTER", fault),
        ];
        let (full, warned) = generate_with(dir.path(), &env, args, name);
        let warning = format!("{failed}: staging the weights on disk failed (No space left");
        assert!(
            warned.contains(&warning) && warned.contains("from memory"),
            "{name}: the fallback names the full disk: {warned}"
        );
        assert_eq!(
            left_in(&staging),
            Vec::<String>::new(),
            "{name}: left behind"
        );
        let memory_env = [("STIPPLE_STAGE_WEIGHTS", "0")];
        let (memory, _) = generate_with(dir.path(), &memory_env, args, &format!("{name}-memory"));
        assert_eq!(full, memory, "{name}: the fallback made another picture");
    }
    // "@3" spares exactly the load: a generate without an adapter stages three times and meets no
    // fault, so the swap cases above failed in the swap's re-bake, not in the load.
    let staging = dir.path().join("staging-load");
    let env = [
        ("STIPPLE_STAGING_DIR", staging.to_str().unwrap()),
        ("STIPPLE_STAGING_FAIL_AFTER", "0@3"),
    ];
    let (_, quiet) = generate_with(dir.path(), &env, plain, "load");
    assert!(!quiet.contains("staging the weights"), "{quiet}");
    assert_eq!(left_in(&staging), Vec::<String>::new(), "load: left behind");
}
