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

/// `m` opens the mask editor over the picture; a rectangle drawn between two corners becomes the
/// job's inpainting mask, which the engine's loader reads back as 1 exactly inside it.
#[test]
fn m_in_the_gallery_draws_a_mask_and_the_next_jobs_inpaint() {
    let inputs = tempfile::tempdir().unwrap();
    let (engine, _events) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 40);
    let mut app = busy_app();
    app.inputs_dir = Some(inputs.path().to_path_buf());
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    assert!(press(&mut app, KeyCode::Char('m')).is_empty());
    let Some(stipple::tui::overlays::Overlay::Mask(editor)) = app.overlays.last() else {
        panic!("m opens the mask editor: {:?}", app.overlays);
    };
    // The busy app's picture is 256×256: 64×64 mask dots, the cursor starts in the middle (32, 32).
    assert_eq!((editor.size, editor.cursor), ((64, 64), (32, 32)));
    let empty = press(&mut app, KeyCode::Enter);
    assert!(empty.is_empty() && app.status.as_ref().is_some_and(|s| s.error));
    press(&mut app, KeyCode::Char(' '));
    for _ in 0..4 {
        key(&mut app, KeyCode::Right, KeyModifiers::SHIFT);
    }
    for _ in 0..8 {
        press(&mut app, KeyCode::Down);
    }
    press(&mut app, KeyCode::Char(' '));
    let drawn = render(&mut app, 100, 40);
    assert!(drawn.contains("Mask #1.1 seed 1001"), "{drawn}");
    let fx = press(&mut app, KeyCode::Enter);
    assert!(app.overlays.is_empty());
    assert!(
        matches!(
            fx.as_slice(),
            [Effect::PinInit { .. }, Effect::PinMask { .. }]
        ),
        "{fx:?}"
    );
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let job = app.build_job().expect("an inpainting job");
    let init = job.init.expect("init");
    assert_eq!(init.mask_blur, 4, "A1111's default blur");
    assert!(init.mask.is_some());
    let summary = render(&mut app, 100, 30);
    assert!(summary.contains("inpaint 0.75"), "{summary}");
    // Dots x 32..=48, y 32..=40 of 64 are pixels x 128..=195, y 128..=163 of 256.
    let mut unblurred = init.clone();
    unblurred.mask_blur = 0;
    let loaded = stipple::image::init::load(&unblurred, 256, 256).expect("pictures load");
    let mask = loaded.mask.expect("a mask");
    let at = |x: usize, y: usize| mask[y * 256 + x];
    assert_eq!(
        [
            at(128, 128),
            at(195, 163),
            at(127, 128),
            at(196, 163),
            at(128, 164),
            at(10, 10)
        ],
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    );
    // Dropping the init image in Settings drops its mask too.
    press(&mut app, KeyCode::F(4));
    while app.settings.field_name() != "init image" {
        press(&mut app, KeyCode::Down);
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        (app.settings.init.is_none(), app.settings.mask.is_none()),
        (true, true)
    );
    engine.shutdown();
}
