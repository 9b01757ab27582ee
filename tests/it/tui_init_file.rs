//! An init image from a file in the workstation: `M-o` asks for a path and reads the picture as
//! `--init-image FILE` does (the same reader, hash and pin, compared with the CLI's own
//! constructor); the next jobs start from it as after "send to img2img". A file that cannot be read
//! leaves the init image as it was (or none), the reader's error in the status line.

use crate::tui_img2img::set_field;
use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyModifiers};
use stipple::job::Job;
use stipple::tui::app::{App, Effect};
use stipple::tui::event_loop::perform;
use stipple::tui::overlays::path::PathFor;
use stipple::tui::overlays::Overlay;
use stipple::tui::terminal::TestScreen;

const INIT: &str = "tests/fixtures/img2img/init.png";

fn submit(app: &mut App) -> Job {
    let fx = key(app, KeyCode::Char('g'), KeyModifiers::CONTROL);
    match fx.first() {
        Some(Effect::Submit(job)) => job.clone(),
        _ => panic!("C-g submits: {fx:?} {:?}", app.status),
    }
}

/// `M-o` from the main view (unless the prompt is already open), `path` typed, Enter.
fn ask_for(app: &mut App, path: &str) -> Vec<Effect> {
    if !matches!(app.overlays.last(), Some(Overlay::Path(_))) {
        assert!(key(app, KeyCode::Char('o'), KeyModifiers::ALT).is_empty());
    }
    let Some(Overlay::Path(p)) = app.overlays.last_mut() else {
        panic!("M-o asks for a path: {:?}", app.overlays);
    };
    assert_eq!(p.purpose, PathFor::Init);
    p.text.clear();
    type_text(app, path);
    press(app, KeyCode::Enter)
}

#[test]
fn m_o_loads_an_init_image_file_as_the_init_image_flag_does() {
    let (engine, _events) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 30);
    // No inputs folder: a file is used where it is, as `--init-image` uses it.
    let mut app = busy_app();
    assert!(app.inputs_dir.is_none() && app.settings.init.is_none());
    assert_eq!(app.settings.denoise, 0.75);

    let fx = ask_for(&mut app, INIT);
    assert_eq!(fx, vec![Effect::LoadInit(INIT.into())]);
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    assert!(
        app.overlays.is_empty(),
        "the prompt closes: {:?}",
        app.overlays
    );
    let status = app.status.clone().expect("a message");
    assert!(
        !status.error
            && status
                .text
                .contains("img2img from init.png at denoise 0.75"),
        "{status:?}"
    );
    // The picture is shown, pixel for pixel the file's.
    let file_rgb = image::open(INIT).unwrap().to_rgb8();
    let shown = app.preview.image().expect("the init image is shown");
    assert_eq!(
        (shown.width, shown.height, &shown.pixels),
        (file_rgb.width(), file_rgb.height(), file_rgb.as_raw()),
    );
    let screen_text = render(&mut app, 100, 30);
    assert!(
        screen_text.contains("init image init.png") && screen_text.contains("img2img 0.75"),
        "{screen_text}"
    );
    insta::assert_snapshot!("init_from_file_100x30", screen_text);

    // The submitted job starts from the file exactly as `--init-image FILE` records it.
    let cli = stipple::image::init::pin(std::path::Path::new(INIT), 0.75, None).unwrap();
    let job = submit(&mut app);
    assert_eq!(job.init.as_ref(), Some(&cli), "as --init-image {INIT}");

    // Denoise applies as after "send to img2img": one notch down, 0.70.
    set_field(&mut app, "denoise", -1, 1);
    press(&mut app, KeyCode::Esc);
    let job = submit(&mut app);
    let cli = stipple::image::init::pin(std::path::Path::new(INIT), 0.7, None).unwrap();
    assert_eq!(
        job.init.as_ref(),
        Some(&cli),
        "as --init-image --denoise 0.7"
    );
    engine.shutdown();
}

#[test]
fn a_bad_init_image_file_leaves_the_init_image_as_it_was_and_says_why() {
    let (engine, _events) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 30);
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let missing = "no/such/init.png".to_string();

    // Without an init image, then with one: each bad file changes nothing.
    for start in [None, Some(INIT)] {
        let mut app = busy_app();
        if let Some(path) = start {
            let fx = ask_for(&mut app, path);
            assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
        }
        let before = app.settings.init.clone();
        assert_eq!(before.is_some(), start.is_some());
        let preview_before = app.preview.image().cloned();
        for path in [text.display().to_string(), missing.clone()] {
            let fx = ask_for(&mut app, &path);
            assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
            // The error `--init-image` gives for the same file.
            let cli = stipple::image::init::pin(std::path::Path::new(&path), 0.75, None)
                .unwrap_err()
                .to_string();
            let status = app.status.clone().expect("a message");
            assert!(status.error && status.text == cli, "{cli:?}: {status:?}");
            let shown = render(&mut app, 100, 30);
            assert!(
                shown.contains(&cli[..cli.len().min(60)])
                    && shown.contains("Init image from a file"),
                "{shown}"
            );
            assert_eq!(app.settings.init, before, "the init image is unchanged");
            assert_eq!(app.preview.image().cloned(), preview_before);
            // The prompt stays open with the path, to be corrected.
            let Some(Overlay::Path(p)) = app.overlays.last() else {
                panic!("{:?}", app.overlays)
            };
            assert_eq!(p.text, path);
        }
        // Esc closes the prompt; the next job is what it was before.
        press(&mut app, KeyCode::Esc);
        assert!(app.overlays.is_empty());
        let job = submit(&mut app);
        assert_eq!(
            job.init.map(|i| i.image),
            before.map(|(file, _)| file),
            "the job starts from the earlier init image (or none)"
        );
    }
    engine.shutdown();
}
