//! Img2img from the workstation: `i` on a gallery picture writes it to the inputs folder, pins it
//! by hash and makes the next jobs start from it (denoise and resize mode in Settings), exactly as
//! `--init-image FILE --denoise D` would; a denoise that runs no step is refused before submitting.

use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyModifiers};
use stipple::init_image::ResizeMode;
use stipple::tui::app::{Effect, Focus};
use stipple::tui::event_loop::perform;
use stipple::tui::terminal::TestScreen;

#[test]
fn i_in_the_gallery_starts_the_next_jobs_from_that_picture() {
    let inputs = tempfile::tempdir().unwrap();
    let (runner, _gate) = ScriptedRunner::gated();
    let (engine, _events) = stipple::engine::Engine::spawn(runner);
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 30);
    let mut app = busy_app();
    app.inputs_dir = Some(inputs.path().join("inputs"));
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    let fx = press(&mut app, KeyCode::Char('i'));
    assert!(
        matches!(fx.as_slice(), [Effect::PinInit { caption, .. }] if caption == "#1.1 seed 1001"),
        "{fx:?}"
    );
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let (file, _) = app
        .settings
        .init
        .clone()
        .expect("the picture is the init image now");
    assert!(file.path.starts_with(inputs.path()), "{file:?}");
    // Pinned as the CLI pins a file: same path, same hash of the PNG's contents.
    let cli = stipple::image::init::pin(&file.path, 0.75, None).unwrap();
    assert_eq!(cli.image, file);
    let written = image::open(&file.path).unwrap().to_rgb8();
    let shown = app.gallery.selected().unwrap().image.clone();
    assert_eq!(
        (written.width(), written.height(), written.into_raw()),
        (shown.width, shown.height, shown.pixels),
        "the PNG holds the gallery picture exactly"
    );
    let summary = render(&mut app, 100, 30);
    assert!(summary.contains("img2img 0.75"), "{summary}");

    // Settings: denoise down a notch, resize mode crop; the job carries them.
    press(&mut app, KeyCode::F(4));
    while app.settings.field_name() != "denoise" {
        press(&mut app, KeyCode::Down);
    }
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Right);
    let job = app.build_job().expect("an img2img job");
    let init = job.init.expect("init");
    assert_eq!(
        (init.denoise, init.resize_mode, &init.image),
        (0.7, ResizeMode::Crop, &file)
    );

    // 1 step at denoise 0.7 runs no step (diffusers: int(1 × 0.7) = 0): refused, nothing submitted.
    app.settings.steps = 1;
    let fx = key(&mut app, KeyCode::Char('g'), KeyModifiers::CONTROL);
    assert!(fx.is_empty(), "{fx:?}");
    let status = app.status.clone().unwrap();
    assert!(
        status.error && status.text.contains("runs no step"),
        "{status:?}"
    );

    // Sending the same picture again reuses the file.
    app.settings.steps = 20;
    press(&mut app, KeyCode::Esc);
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    let fx = press(&mut app, KeyCode::Char('i'));
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let n = std::fs::read_dir(inputs.path().join("inputs"))
        .unwrap()
        .count();
    assert_eq!(n, 1);
    engine.shutdown();
}
