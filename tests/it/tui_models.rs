//! The workstation's model picker: F9 lists the model folders (real checkpoints scanned from
//! disk), Enter switches, the engine loads the picked model with the next job and the images say
//! so; unusable files cannot be picked; the LoRA browser is rechecked against the new model.

use crate::tui_support::*;
use crate::util::{root, runtime, small_job};
use crossterm::event::KeyCode;
use std::path::{Path, PathBuf};
use stipple::cli::workstation::FollowMethod;
use stipple::engine::runners::{LazyGenerator, SavingRunner};
use stipple::engine::Engine;
use stipple::job::Event;
use stipple::lora::entry::{Compat, FolderSource};
use stipple::pipeline::EngineSpec;
use stipple::tui::app::{Effect, Input, ModelChoice, ModelInUse};
use stipple::tui::event_loop::perform;
use stipple::tui::model_folders::{ModelEntry, ModelListing};
use stipple::tui::overlays::Overlay;
use stipple::tui::terminal::TestScreen;
use stipple::tui::Models;

fn single(name: &str) -> PathBuf {
    root().join("tests/fixtures/single-file").join(name)
}

/// A models folder: two real checkpoints, a pickle and a LoRA.
fn models_folder() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        single("tiny-sd15.safetensors"),
        tmp.path().join("dreamy-sd15.safetensors"),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("xl")).unwrap();
    std::fs::copy(
        single("tiny-sdxl.safetensors"),
        tmp.path().join("xl/pony-like.safetensors"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("legacy.ckpt"), b"\x80\x02}q\x00.").unwrap();
    std::fs::copy(
        root().join("tests/fixtures/lora/kohya_ldm.safetensors"),
        tmp.path().join("not-a-model.safetensors"),
    )
    .unwrap();
    tmp
}

fn lora_source() -> FolderSource {
    FolderSource {
        dirs: stipple::lora::catalog::LoraDirs::new(vec![root().join("tests/fixtures/lora")]),
        model: None,
    }
}

#[test]
fn f9_lists_the_folder_and_enter_switches_the_model_for_the_next_job() {
    let folder = models_folder();
    let models = Models {
        folders: vec![folder.path().to_path_buf()],
        ..Models::default()
    };
    let (runner, _gate) = ScriptedRunner::gated();
    let (engine, _events) = Engine::spawn(runner);
    let cat = lora_source();
    let svc = services(&engine, &cat, Some(&models));
    let mut app = app();
    app.model = ModelInUse {
        name: "dreamy-sd15".into(),
        path: folder.path().join("dreamy-sd15.safetensors"),
        family: Some("SD1.x"),
        start_family: Some("SD1.x"),
        loading: false,
    };
    let mut screen = TestScreen::new(100, 30);
    let fx = press(&mut app, KeyCode::F(9));
    assert_eq!(fx, vec![Effect::ScanModels]);
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let Some(Overlay::Models(picker)) = app.overlays.last() else {
        panic!("F9 opens the model picker: {:?}", app.overlays);
    };
    let names: Vec<&str> = picker
        .listing
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["dreamy-sd15", "legacy", "not-a-model", "pony-like"]);
    assert_eq!(
        picker.current_entry().map(|e| e.name.as_str()),
        Some("dreamy-sd15"),
        "the model in use is selected first"
    );
    let shown = render(&mut app, 100, 30);
    assert!(shown.contains("● dreamy-sd15"), "{shown}");
    assert!(shown.contains("SDXL"), "{shown}");

    // A file that is not a model cannot be picked, and says why.
    type_text(&mut app, "not-a");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(
        app.status.as_ref().is_some_and(|s| s.error),
        "{:?}",
        app.status
    );
    assert!(matches!(app.overlays.last(), Some(Overlay::Models(_))));

    for _ in 0.."not-a".len() {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "sdxl");
    let fx = press(&mut app, KeyCode::Enter);
    let xl = folder.path().join("xl/pony-like.safetensors");
    assert_eq!(
        fx,
        vec![
            Effect::SwitchModel(ModelChoice {
                path: xl.canonicalize().unwrap(),
                keep_vae: false,
            }),
            Effect::RescanLoras
        ]
    );
    assert!(app.overlays.is_empty());
    assert!(app.model.loading);
    let header = render(&mut app, 100, 30);
    assert!(
        header.contains("pony-like (loads with the next job)"),
        "{header}"
    );
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let sent = models.sink.lock().unwrap().clone();
    assert_eq!(sent.map(|c| c.path), Some(xl.canonicalize().unwrap()));
    // The adapters are rechecked against SDXL: an SD1 LoRA cannot be inserted now.
    let sd1 = app
        .loras
        .entries
        .iter()
        .find(|e| e.name == "kohya_ldm")
        .expect("the SD1 LoRA fixture is listed");
    assert!(
        matches!(&sd1.compat, Compat::No(why) if why.contains("sdxl") || why.contains("SDXL")),
        "{sd1:#?}"
    );
    app.update(Input::Engine(Event::Started {
        id: 1,
        images: 1,
        steps: 3,
    }));
    assert!(!app.model.loading);
    engine.shutdown();
}

#[test]
fn the_picker_draws_families_precisions_sizes_and_reasons() {
    let entry =
        |name: &str, family: Option<&'static str>, dtype: &str, problem: Option<&str>| ModelEntry {
            name: name.into(),
            path: format!("/models/{name}.safetensors").into(),
            kind: "checkpoint",
            size: 2_132_000_000,
            family,
            dtype: (!dtype.is_empty()).then(|| dtype.to_string()),
            fused_cuda: family == Some("SD1.x"),
            widths: None,
            problem: problem.map(String::from),
        };
    let listing = ModelListing {
        entries: vec![
            entry("dreamshaper-8", Some("SD1.x"), "F16", None),
            entry("old-merge", None, "", Some("a pickle file is never loaded")),
            entry("pony-v6", Some("SDXL"), "F16", None),
        ],
        problems: vec!["model folder /gone: No such file or directory".into()],
    };
    let mut app = busy_app();
    app.model = ModelInUse {
        name: "dreamshaper-8".into(),
        path: "/models/dreamshaper-8.safetensors".into(),
        family: Some("SD1.x"),
        start_family: Some("SD1.x"),
        loading: false,
    };
    app.update(Input::Models(listing));
    press(&mut app, KeyCode::Down);
    insta::assert_snapshot!("model_picker", render(&mut app, 100, 30));
}

/// The runner the workstation uses, on real sessions: the first job runs on the start model; after
/// a pick, the next job's image comes from the picked checkpoint (its infotext names it and its
/// size is the job's), and a pick of a broken file fails that job alone with the reason.
#[test]
fn the_engine_loads_the_picked_model_with_the_next_job() {
    let out = tempfile::tempdir().unwrap();
    let sink = stipple::tui::ModelSink::default();
    let spec = EngineSpec::new(single("tiny-sd15.safetensors"));
    let runner = FollowMethod {
        inner: SavingRunner::new(LazyGenerator::new(spec, runtime()), out.path().into()),
        method: Default::default(),
        model: Some(sink.clone()),
    };
    let (engine, mut events) = Engine::spawn(runner);
    let mut run = |pick: Option<&Path>| {
        if let Some(p) = pick {
            *sink.lock().unwrap() = Some(ModelChoice {
                path: p.into(),
                keep_vae: false,
            });
        }
        engine.submit(small_job("a red fox", 7));
        let mut info = None;
        loop {
            match events.blocking_recv().expect("engine alive") {
                Event::Image { infotext, .. } => info = Some(infotext),
                Event::Finished { .. } => return Ok(info.expect("an image")),
                Event::Failed { message, .. } => return Err(message),
                _ => {}
            }
        }
    };
    let first = run(None).expect("start model");
    assert!(first.contains("Model: tiny-sd15"), "{first}");
    let second = run(Some(&single("tiny-sdxl.safetensors"))).expect("picked model");
    assert!(second.contains("Model: tiny-sdxl"), "{second}");
    let broken = single("bad/truncated.safetensors");
    if broken.exists() {
        let err = run(Some(&broken)).expect_err("a broken file fails the job");
        assert!(err.contains("truncated.safetensors"), "{err}");
        // The next pick works again.
        let again = run(Some(&single("tiny-sd15.safetensors"))).expect("back to SD1");
        assert!(again.contains("Model: tiny-sd15"), "{again}");
    }
    engine.shutdown_and_wait();
}
