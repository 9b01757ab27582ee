//! The workstation's hires fix and masks from files. The hires settings (F4) reach the submitted
//! job exactly as `generate --hires-scale … --hires-denoise … --hires-steps … --hires-upscaler …` /
//! `--upscaler FILE.onnx` build it (compared with the headless flag parser itself); `o` in the mask
//! editor loads a mask file as `--mask` does (the same reader, hash and size rule), and a bad file
//! leaves the mask as it was with the reader's error in the status line.

use crate::tui_img2img::set_field;
use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyModifiers};
use stipple::cli::hires_flags::{hires_fix, HiresFlags};
use stipple::cli::InitFlags;
use stipple::job::{Event, Job};
use stipple::tui::app::{App, Effect, Focus, Input};
use stipple::tui::components::settings::HiresUpscaler;
use stipple::tui::event_loop::perform;
use stipple::tui::overlays::mask::MaskEditor;
use stipple::tui::overlays::Overlay;
use stipple::tui::terminal::TestScreen;

const UPSCALER: &str = "tests/fixtures/upscaler/tiny-2x.onnx";
const MASK_64: &str = "tests/fixtures/img2img/mask.png";

/// What `generate` makes of `flags` for the workstation's job without its hires fix.
fn headless(flags: &HiresFlags, job: &Job) -> Option<Box<stipple::hires::HiresFix>> {
    let plain = Job {
        hires: None,
        ..job.clone()
    };
    hires_fix(flags, &InitFlags::default(), &plain).expect("the flags are valid")
}

fn submit(app: &mut App) -> Job {
    let fx = key(app, KeyCode::Char('g'), KeyModifiers::CONTROL);
    match fx.first() {
        Some(Effect::Submit(job)) => job.clone(),
        _ => panic!("C-g submits: {fx:?} {:?}", app.status),
    }
}

#[test]
fn hires_settings_reach_the_job_as_the_generate_flags_build_it() {
    let mut app = app();
    type_text(&mut app, "a red fox");
    assert!(app.build_job().unwrap().hires.is_none(), "off by default");

    // On, scale 2 → 1.5 (two notches of 0.25), hires denoise 0.7 → 0.55 (three notches of 0.05).
    set_field(&mut app, "hires fix", 1, 1);
    set_field(&mut app, "hires scale", -1, 2);
    set_field(&mut app, "hires denoise", -1, 3);
    let shown = render(&mut app, 100, 32);
    for line in [
        "hires fix      on: 512×512 → 768×768",
        "hires scale    1.5× (768×768)",
        "hires denoise  0.55",
        "hires steps    0 (= steps, 20)",
        "hires upscaler Latent ",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
    insta::assert_snapshot!("settings_hires_100x32", shown);
    press(&mut app, KeyCode::Esc);
    assert!(
        app.settings
            .summary(200)
            .contains("512×512 · hires 1.5× Latent 0.55 · seed"),
        "{}",
        app.settings.summary(200)
    );
    let summary = render(&mut app, 100, 30);
    assert!(summary.contains("hires 1.5×, 20 steps"), "{summary}");

    let job = submit(&mut app);
    let fix = job.hires.as_ref().expect("a hires fix");
    // 512 × 1.5 = 768: the second pass's size, as A1111 sizes it.
    assert_eq!(
        (fix.width, fix.height, fix.scale, fix.denoise, fix.steps),
        (768, 768, Some(1.5), 0.55, 0)
    );
    let flags = HiresFlags {
        hires_scale: Some(1.5),
        hires_denoise: Some(0.55),
        ..HiresFlags::default()
    };
    assert_eq!(job.hires, headless(&flags, &job));
    let infotext =
        stipple::image::format_infotext(&job, job.seed, &stipple::image::Resources::default());
    assert!(
        infotext.contains("Denoising strength: 0.55")
            && infotext.contains("Hires upscale: 1.5")
            && infotext.contains("Hires upscaler: Latent"),
        "{infotext}"
    );

    // Lanczos (after the six latent modes) and 6 hires steps: --hires-upscaler Lanczos --hires-steps 6.
    set_field(&mut app, "hires upscaler", 1, 6);
    set_field(&mut app, "hires steps", 1, 6);
    press(&mut app, KeyCode::Esc);
    let job = submit(&mut app);
    let flags = HiresFlags {
        hires_scale: Some(1.5),
        hires_denoise: Some(0.55),
        hires_upscaler: Some("Lanczos".into()),
        hires_steps: Some(6),
        ..HiresFlags::default()
    };
    assert_eq!(job.hires.as_ref().unwrap().upscaler, "Lanczos");
    assert_eq!(job.hires, headless(&flags, &job));

    // An ONNX upscaler given to the workstation (`stipple --upscaler FILE.onnx`) comes after
    // Lanczos: the job pins it as `generate --upscaler FILE.onnx` does, named by its file.
    app.settings.upscaler_models = vec![UPSCALER.into()];
    set_field(&mut app, "hires upscaler", 1, 1);
    let shown = render(&mut app, 100, 30);
    assert!(
        shown.contains("hires upscaler tiny-2x.onnx (model)"),
        "{shown}"
    );
    press(&mut app, KeyCode::Esc);
    let job = submit(&mut app);
    let flags = HiresFlags {
        hires_scale: Some(1.5),
        hires_denoise: Some(0.55),
        hires_steps: Some(6),
        upscaler: Some(UPSCALER.into()),
        ..HiresFlags::default()
    };
    let fix = job.hires.as_ref().unwrap();
    assert_eq!(fix.upscaler, "tiny-2x");
    assert_eq!(
        fix.model,
        Some(stipple::hires::pin_model(std::path::Path::new(UPSCALER)).unwrap())
    );
    assert_eq!(job.hires, headless(&flags, &job));
    // Right past the last upscaler comes back to the first.
    set_field(&mut app, "hires upscaler", 1, 1);
    assert_eq!(
        app.settings.hires_upscaler,
        HiresUpscaler::Named("Latent"),
        "cycles"
    );

    // A job sent back from the gallery brings its hires fix back to the settings.
    app.update(Input::Submitted {
        id: 1,
        job: job.clone(),
    });
    app.update(Input::Engine(Event::Image {
        id: 1,
        index: 0,
        seed: job.seed,
        image: gradient(64, 64, 3),
        infotext: String::new(),
    }));
    app.settings.hires = false;
    app.settings.hires_scale = 3.0;
    press(&mut app, KeyCode::Esc);
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    press(&mut app, KeyCode::Char('p'));
    let s = &app.settings;
    assert_eq!(
        (s.hires, s.hires_scale, s.hires_denoise, s.hires_steps),
        (true, 1.5, 0.55, 6)
    );
    assert_eq!(s.hires_upscaler, HiresUpscaler::Model(UPSCALER.into()));
    assert_eq!(app.build_job().unwrap().hires, job.hires);

    // The hires fix is for text-to-image, as `generate` says with --init-image.
    let init = stipple::image::init::pin(
        std::path::Path::new("tests/fixtures/img2img/init.png"),
        0.75,
        None,
    )
    .unwrap();
    app.settings.init = Some((init.image.clone(), "init.png".into()));
    let err = app.build_job().unwrap_err();
    assert!(err.contains("hires fix is for text-to-image"), "{err}");
    let with_init = Job {
        init: Some(init),
        ..job
    };
    assert!(hires_fix(&flags, &InitFlags::default(), &with_init).is_err());
}

/// The mask editor on top.
fn editor(app: &App) -> &MaskEditor {
    match app
        .overlays
        .iter()
        .rev()
        .find(|o| matches!(o, Overlay::Mask(_)))
    {
        Some(Overlay::Mask(m)) => m,
        _ => panic!("no mask editor: {:?}", app.overlays),
    }
}

/// Opens the mask editor on the gallery's picture and asks for `path` with `o`.
fn ask_for(app: &mut App, path: &str) -> Vec<Effect> {
    if !app.overlays.iter().any(|o| matches!(o, Overlay::Mask(_))) {
        while app.focus != Focus::Gallery {
            press(app, KeyCode::Tab);
        }
        press(app, KeyCode::Char('m'));
    }
    if !matches!(app.overlays.last(), Some(Overlay::Path(_))) {
        press(app, KeyCode::Char('o'));
    }
    let Some(Overlay::Path(p)) = app.overlays.last_mut() else {
        panic!("o asks for a path: {:?}", app.overlays);
    };
    p.text.clear();
    type_text(app, path);
    press(app, KeyCode::Enter)
}

/// Luma of an image file read by the `image` crate, one byte a pixel, with its size.
fn grey_of(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let g = image::open(path).unwrap().to_luma8();
    (g.width(), g.height(), g.into_raw())
}

#[test]
fn o_in_the_mask_editor_loads_a_mask_file_as_the_mask_flag_does() {
    let inputs = tempfile::tempdir().unwrap();
    let (engine, _events) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 40);
    let mut app = busy_app();
    app.inputs_dir = Some(inputs.path().to_path_buf());

    // A 64×64 mask over the 256×256 picture, whole-picture inpainting: fitted as the loader fits it.
    let fx = ask_for(&mut app, MASK_64);
    assert_eq!(fx, vec![Effect::LoadMask(MASK_64.into())]);
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    assert!(
        matches!(app.overlays.last(), Some(Overlay::Mask(_))),
        "the path prompt closes: {:?}",
        app.overlays
    );
    let shown = render(&mut app, 100, 40);
    assert!(shown.contains("mask.png"), "{shown}");
    insta::assert_snapshot!("mask_from_file_100x40", shown);
    let e = editor(&app);
    let cli = stipple::image::init::pin(
        std::path::Path::new("tests/fixtures/img2img/init.png"),
        0.75,
        Some(std::path::Path::new(MASK_64)),
    )
    .unwrap();
    assert_eq!(
        e.file_as_is(),
        cli.mask.as_ref(),
        "pinned as --mask pins it"
    );
    // The 64 dots across are the mask's 64 pixels: each dot shows its pixel, white or black.
    let (w, h, grey) = grey_of(std::path::Path::new(MASK_64));
    assert_eq!((w, h, e.size), (64, 64, (64, 64)));
    let wrong: Vec<usize> = (0..64 * 64)
        .filter(|&i| e.dots[i] != (grey[i] >= 128))
        .collect();
    assert!(wrong.is_empty(), "dots unlike the file at {wrong:?}");

    // Enter: the picture is pinned and the file itself becomes the job's mask.
    let fx = press(&mut app, KeyCode::Enter);
    assert!(
        matches!(
            fx.as_slice(),
            [Effect::PinInit { .. }, Effect::UseMask(f)] if Some(f) == cli.mask.as_ref()
        ),
        "{fx:?}"
    );
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let job = app.build_job().expect("an inpainting job");
    let init = job.init.expect("init");
    let (file, _) = app.settings.init.clone().unwrap();
    let mut want =
        stipple::image::init::pin(&file.path, 0.75, Some(std::path::Path::new(MASK_64))).unwrap();
    want.mask_blur = 4;
    stipple::init_image::set_area(&mut want, Some("whole".parse().unwrap()), None).unwrap();
    assert_eq!(init, want, "as --init-image PIC --mask FILE --mask-blur 4");

    // A mask the picture's size, then a rectangle drawn over it: the file's pixels stay where no
    // shape went, the rectangle repaints, and the job gets that combined mask.
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("exact.png");
    let file_mask = image::GrayImage::from_fn(256, 256, |x, y| {
        image::Luma([if (40..100).contains(&x) && (60..200).contains(&y) {
            255
        } else if x >= 240 {
            140
        } else {
            0
        }])
    });
    file_mask.save(&exact).unwrap();
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    press(&mut app, KeyCode::Char('m'));
    let fx = ask_for(&mut app, exact.to_str().unwrap());
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    assert!(editor(&app).file_as_is().is_some());
    assert!(
        app.status
            .as_ref()
            .is_some_and(|s| !s.error && s.text.contains("(256×256)")),
        "{:?}",
        app.status
    );
    // Dots (32, 32)..=(35, 35): pixels 128..=143 both ways.
    {
        let Some(Overlay::Mask(m)) = app.overlays.last_mut() else {
            panic!()
        };
        m.cursor = (32, 32);
        m.corner();
        m.cursor = (35, 35);
        m.corner();
        assert!(m.file_as_is().is_none(), "drawn over");
        let img = m.mask_image();
        let at = |x: u32, y: u32| img.pixels[((y * 256 + x) * 3) as usize];
        assert_eq!(
            [
                at(50, 70),
                at(250, 10),
                at(10, 10),
                at(128, 128),
                at(143, 143),
                at(144, 143)
            ],
            [255, 140, 0, 255, 255, 0]
        );
    }
    let fx = press(&mut app, KeyCode::Enter);
    assert!(
        matches!(
            fx.as_slice(),
            [Effect::PinInit { .. }, Effect::PinMask { .. }]
        ),
        "{fx:?}"
    );
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let mask = app.settings.mask.clone().expect("the combined mask");
    let (w, h, written) = grey_of(&mask.path);
    assert_eq!((w, h), (256, 256));
    let want: Vec<u8> = file_mask
        .enumerate_pixels()
        .map(|(x, y, p)| {
            if (128..144).contains(&x) && (128..144).contains(&y) {
                255
            } else {
                p.0[0]
            }
        })
        .collect();
    assert!(written == want, "the combined mask's pixels");
    engine.shutdown();
}

#[test]
fn a_bad_mask_file_leaves_the_mask_as_it_was_and_says_why() {
    let (engine, _events) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let mut screen = TestScreen::new(100, 40);
    let mut app = busy_app();
    while app.focus != Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    press(&mut app, KeyCode::Char('m'));
    // Something drawn first: a rectangle at dots (0, 0)..=(3, 3).
    {
        let Some(Overlay::Mask(m)) = app.overlays.last_mut() else {
            panic!()
        };
        m.cursor = (0, 0);
        m.corner();
        m.cursor = (3, 3);
        m.corner();
    }
    let before = editor(&app).dots.clone();
    let not_a_picture = tempfile::tempdir().unwrap();
    let text = not_a_picture.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let cases = [
        (
            text.display().to_string(),
            format!("{}: not a PNG, JPEG or WebP image", text.display()),
        ),
        (
            "no/such/mask.png".to_string(),
            "cannot read no/such/mask.png".to_string(),
        ),
    ];
    for (path, message) in cases {
        let fx = ask_for(&mut app, &path);
        assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
        let status = app.status.clone().expect("a message");
        assert!(
            status.error && status.text.contains(&message),
            "{message:?}: {status:?}"
        );
        let shown = render(&mut app, 100, 40);
        assert!(shown.contains(&message), "{shown}");
        let e = editor(&app);
        assert!(
            e.loaded.is_none() && e.dots == before,
            "the mask is unchanged"
        );
        // The prompt stays open with the path, to be corrected.
        let Some(Overlay::Path(p)) = app.overlays.last() else {
            panic!("{:?}", app.overlays)
        };
        assert_eq!(p.text, path);
    }
    insta::assert_snapshot!("mask_file_error_100x40", render(&mut app, 100, 40));

    // Only masked needs a mask the picture's size: the loader's error, nothing changed.
    press(&mut app, KeyCode::Esc);
    press(&mut app, KeyCode::Esc);
    set_field(&mut app, "inpaint area", 1, 1);
    press(&mut app, KeyCode::Esc);
    let fx = ask_for(&mut app, MASK_64);
    assert!(perform(&mut app, fx, &svc, &mut screen).unwrap());
    let status = app.status.clone().expect("a message");
    assert!(
        status.error
            && status.text.contains(
                "mask tests/fixtures/img2img/mask.png is 64x64, the picture 256x256: with \
                 --inpaint-area masked or --outpaint they must be the same size"
            ),
        "{status:?}"
    );
    assert!(editor(&app).loaded.is_none() && editor(&app).is_empty());
    // An empty path is not read; Esc closes the prompt and the editor is still there.
    key(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    let fx = press(&mut app, KeyCode::Enter);
    assert!(fx.is_empty() && app.status.as_ref().is_some_and(|s| s.error));
    press(&mut app, KeyCode::Esc);
    assert!(matches!(app.overlays.last(), Some(Overlay::Mask(_))));
    engine.shutdown();
}

/// `--upscaler` before a subcommand is the workstation's flag: refused there (exit 2), where
/// `generate` and `upscale` have their own.
#[test]
fn the_workstations_upscaler_flag_is_refused_before_a_subcommand() {
    let out = crate::cli::stipple()
        .args(["--upscaler", UPSCALER, "generate", "--prompt", "x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--upscaler before a subcommand is the workstation's"),
        "{stderr}"
    );
}
