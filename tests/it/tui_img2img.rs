//! Img2img from the workstation: `i` on a gallery picture writes it to the inputs folder, pins it
//! by hash and makes the next jobs start from it (denoise and resize mode in Settings), exactly as
//! `--init-image FILE --denoise D` would; a denoise that runs no step is refused before submitting.

use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyModifiers};
use stipple::init_image::{InpaintArea, ResizeMode};
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

/// Sets the Settings field `name` by pressing Right (`dir` > 0) or Left `times` times.
pub(crate) fn set_field(app: &mut stipple::tui::app::App, name: &str, dir: i32, times: usize) {
    press(app, KeyCode::F(4));
    while app.settings.field_name() != name {
        let before = app.settings.field_name();
        press(app, KeyCode::Down);
        if app.settings.field_name() == before {
            while app.settings.field_name() != name {
                let before = app.settings.field_name();
                press(app, KeyCode::Up);
                assert_ne!(app.settings.field_name(), before, "no field {name}");
            }
        }
    }
    for _ in 0..times {
        press(
            app,
            if dir > 0 {
                KeyCode::Right
            } else {
                KeyCode::Left
            },
        );
    }
}

/// Inpaint area, padding, masked content and outpainting set in Settings reach the submitted job
/// exactly as `--mask-blur 4 --inpaint-area masked --inpaint-padding 24 --masked-content fill
/// --outpaint 16,0,0,0` build it (the same library calls the CLI makes), and its infotext carries
/// A1111's keys for them; the Settings view shows them, scrolled in a small terminal.
#[test]
fn inpaint_area_padding_content_and_outpaint_reach_the_job_as_the_flags_do() {
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
    // Img2img without a mask: the inpainting settings stay out of the job.
    let fx = press(&mut app, KeyCode::Char('i'));
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    set_field(&mut app, "inpaint area", 1, 1);
    set_field(&mut app, "masked content", 1, 1);
    let plain = app.build_job().unwrap().init.unwrap();
    let (file, _) = app.settings.init.clone().unwrap();
    assert_eq!(
        plain,
        stipple::image::init::pin(&file.path, 0.75, None).unwrap()
    );
    // Outpainting alone inpaints (the grown border is the mask), as --outpaint without --mask.
    set_field(&mut app, "outpaint", 1, 2);
    set_field(&mut app, "outpaint sides", 1, 3);
    let shown = render(&mut app, 100, 30);
    for line in [
        "inpaint area   only masked",
        "masked padding 32 px",
        "masked content fill",
        "outpaint       16 px",
        "outpaint sides left",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
    insta::assert_snapshot!("settings_inpaint_100x30", shown);
    // 80×24 has room for 20 of the 27 fields: the list scrolls to keep the selected one in view.
    let small = render(&mut app, 80, 24);
    assert!(
        small.contains("outpaint sides left") && !small.contains("│ sampler "),
        "{small}"
    );
    let job = app.build_job().unwrap();
    let mut want = stipple::image::init::pin(&file.path, 0.75, None).unwrap();
    want.mask_blur = 4;
    want.masked_content = "fill".parse().unwrap();
    want.outpaint = "16,0,0,0".parse().unwrap();
    stipple::init_image::set_area(&mut want, Some("masked".parse().unwrap()), None).unwrap();
    assert_eq!(job.init.as_ref(), Some(&want));
    press(&mut app, KeyCode::Esc);
    let summary = render(&mut app, 100, 30);
    assert!(summary.contains("inpaint 0.75"), "{summary}");

    // Now a drawn mask with padding 24 (two notches down), submitted with C-g.
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    press(&mut app, KeyCode::Char('m'));
    press(&mut app, KeyCode::Char(' '));
    for _ in 0..4 {
        key(&mut app, KeyCode::Right, KeyModifiers::SHIFT);
    }
    press(&mut app, KeyCode::Char(' '));
    let fx = press(&mut app, KeyCode::Enter);
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    set_field(&mut app, "masked padding", -1, 2);
    let fx = key(&mut app, KeyCode::Char('g'), KeyModifiers::CONTROL);
    let Some(Effect::Submit(job)) = fx.first() else {
        panic!("C-g submits: {fx:?} {:?}", app.status);
    };
    let (file, _) = app.settings.init.clone().unwrap();
    let mask = app.settings.mask.clone().expect("the drawn mask");
    let mut want = stipple::image::init::pin(&file.path, 0.75, Some(&mask.path)).unwrap();
    want.mask_blur = 4;
    want.masked_content = "fill".parse().unwrap();
    want.outpaint = "16,0,0,0".parse().unwrap();
    stipple::init_image::set_area(&mut want, Some("masked".parse().unwrap()), Some(24)).unwrap();
    assert_eq!(job.init.as_ref(), Some(&want));
    let infotext =
        stipple::image::format_infotext(job, job.seed, &stipple::image::Resources::default());
    assert!(
        infotext.contains(
            "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 24, \
             Masked content: fill, Outpaint: \"16,0,0,0\""
        ),
        "{infotext}"
    );
    // Back to the whole picture: the padding leaves the job, as without --inpaint-area masked.
    set_field(&mut app, "inpaint area", -1, 1);
    let init = app.build_job().unwrap().init.unwrap();
    assert_eq!(
        (init.inpaint_area, init.inpaint_padding),
        (InpaintArea::Whole, 0)
    );
    engine.shutdown();
}

/// The config's `[img2img]` is what the workstation's Settings start from.
#[test]
fn the_img2img_section_of_the_config_starts_the_settings() {
    let mut config = stipple::config::Config::default().with_model_size((512, 512));
    config.img2img.denoise = 0.4;
    config.img2img.mask_blur = 8;
    config.img2img.inpaint_area = InpaintArea::Masked;
    config.img2img.inpaint_padding = 16;
    config.img2img.masked_content = stipple::init_image::MaskedContent::LatentNothing;
    let app = stipple::tui::app::App::new(
        &config,
        stipple::tui::theme::Theme::load("dark", None).unwrap(),
        stipple::tui::keymap::Keymap::default(),
        None,
        42,
    );
    let s = &app.settings;
    assert_eq!(
        (
            s.denoise,
            s.mask_blur,
            s.inpaint_area,
            s.inpaint_padding,
            s.masked_content,
            s.outpaint
        ),
        (
            0.4,
            8,
            InpaintArea::Masked,
            16,
            stipple::init_image::MaskedContent::LatentNothing,
            0
        )
    );
}
