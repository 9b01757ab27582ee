//! Key-driven flows against the real engine queue running the scripted fake runner: type a prompt
//! with a tag, adjust its strength, edit a schedule point, submit, watch progress, interrupt,
//! cancel a queued job, see a failure popup while the queue goes on; and the async loop end to end.

use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::time::{Duration, Instant};
use stipple::engine::{Engine, EngineHandle};
use stipple::job::Event;
use stipple::lora::entry::LoraSource;
use stipple::tui::app::{App, Effect, Input, View};
use stipple::tui::components::queue::JobState;
use stipple::tui::event_loop::{perform, Services};
use stipple::tui::terminal::TestScreen;
use tokio::sync::mpsc::UnboundedReceiver;

fn run_effects(app: &mut App, effects: Vec<Effect>, engine: &EngineHandle) -> bool {
    let cat = catalog();
    let svc = Services {
        engine,
        catalog: &cat as &dyn LoraSource,
        history_file: None,
        models: None,
    };
    let mut screen = TestScreen::new(80, 24);
    perform(app, effects, &svc, &mut screen).expect("perform")
}

/// Feeds engine events to the app until `done` holds (or fails after 10 s).
fn pump_until(app: &mut App, rx: &mut UnboundedReceiver<Event>, done: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(app) {
        match rx.try_recv() {
            Ok(ev) => {
                app.update(Input::Engine(ev));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => panic!(
                "timed out; queue: {:?}",
                app.queue
                    .entries
                    .iter()
                    .map(|e| &e.state)
                    .collect::<Vec<_>>()
            ),
        }
    }
}

fn state(app: &App, id: u64) -> JobState {
    app.queue
        .get(id)
        .map(|e| e.state.clone())
        .expect("job in queue")
}

#[test]
fn type_tag_adjust_schedule_submit_progress_interrupt() {
    let (runner, gate) = ScriptedRunner::gated();
    let (engine, mut rx) = Engine::spawn(runner);
    let mut app = app();

    // Completion from the catalog: typing the start of a name and Tab finishes the tag.
    type_text(&mut app, "a fox, <lora:ink");
    assert_eq!(
        app.prompt.completion.as_ref().map(|c| c.items.clone()),
        Some(vec!["ink-style".to_string()])
    );
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.prompt.text(), "a fox, <lora:ink-style:1>");

    // Strength keys rewrite the tag under the cursor in place.
    key(&mut app, KeyCode::Up, KeyModifiers::ALT);
    key(&mut app, KeyCode::Up, KeyModifiers::ALT);
    assert_eq!(app.prompt.text(), "a fox, <lora:ink-style:1.1>");
    key(&mut app, KeyCode::Char('z'), KeyModifiers::ALT);
    assert_eq!(
        app.prompt.text(),
        "a fox, <lora:ink-style:1.05>",
        "undo steps back one rewrite"
    );

    // Schedule editor: add a point after the first, lower it, move it later.
    press(&mut app, KeyCode::F(3));
    assert_eq!(app.view, View::Schedule);
    press(&mut app, KeyCode::Char('a'));
    for _ in 0..4 {
        press(&mut app, KeyCode::Down);
    }
    press(&mut app, KeyCode::Char('>'));
    assert_eq!(
        app.prompt.text(),
        "a fox, <lora:ink-style:1.05:unet=1.05@0,0.85@0.55,1.05@1>"
    );
    // The te curve is separate; the browser keys refuse a scheduled unet but te stays editable here.
    press(&mut app, KeyCode::BackTab);
    press(&mut app, KeyCode::Char('c'));
    assert!(app.prompt.analysis.error.is_none());
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.view, View::Generate);

    // Submit with F5; the job runs step by step as the gate opens.
    let effects = press(&mut app, KeyCode::F(5));
    assert!(matches!(effects.first(), Some(Effect::Submit(j)) if j.prompt.contains("0.85@0.55")));
    assert!(run_effects(&mut app, effects, &engine));
    assert_eq!(app.queue.entries.len(), 1);
    let id = app.queue.entries[0].id;
    for _ in 0..3 {
        gate.send(()).unwrap();
    }
    pump_until(&mut app, &mut rx, |a| {
        matches!(
            a.queue.get(id).map(|e| &e.state),
            Some(JobState::Running { step: 3, .. })
        )
    });
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("step 3/20"), "{screen}");
    assert!(
        screen.contains("4.0 it/s") && screen.contains("ETA 4s"),
        "{screen}"
    );

    // Ctrl-C interrupts; the runner sees it at its next step.
    let effects = key(&mut app, KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(effects, vec![Effect::Interrupt]);
    run_effects(&mut app, effects, &engine);
    gate.send(()).unwrap();
    pump_until(&mut app, &mut rx, |a| {
        a.queue
            .get(id)
            .is_some_and(|e| e.state == JobState::Cancelled)
    });
    assert_eq!(
        app.prompt.history(),
        ["a fox, <lora:ink-style:1.05:unet=1.05@0,0.85@0.55,1.05@1>"]
    );
    engine.shutdown();
}

#[test]
fn lora_browser_inserts_and_adjusts_strength() {
    let mut app = app();
    type_text(&mut app, "portrait");
    press(&mut app, KeyCode::F(2));
    type_text(&mut app, "ink");
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.prompt.text(),
        "portrait, ink wash, <lora:ink-style:1>",
        "trigger words come with the tag, set off by a comma"
    );
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Left);
    assert_eq!(
        app.prompt.text(),
        "portrait, ink wash, <lora:ink-style:0.9>"
    );
    assert!(render(&mut app, 100, 30).contains("0.9"));
}

#[test]
fn lora_browser_right_adds_an_adapter_not_yet_in_the_prompt_then_raises_it() {
    let mut app = app();
    type_text(&mut app, "portrait");
    press(&mut app, KeyCode::F(2));
    type_text(&mut app, "pixel");
    press(&mut app, KeyCode::Right);
    assert_eq!(app.prompt.text(), "portrait <lora:pixel-art:1>");
    press(&mut app, KeyCode::Right);
    assert_eq!(app.prompt.text(), "portrait <lora:pixel-art:1.05>");
    // ← on an adapter that is not in the prompt changes nothing.
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    type_text(&mut app, "ink");
    press(&mut app, KeyCode::Left);
    assert_eq!(app.prompt.text(), "portrait <lora:pixel-art:1.05>");
}

#[test]
fn cancel_queued_and_failures_do_not_stop_the_queue() {
    let (runner, gate) = ScriptedRunner::gated();
    let (engine, mut rx) = Engine::spawn(runner);
    let mut app = app();
    type_text(&mut app, "FAIL please");
    let e = press(&mut app, KeyCode::F(5));
    run_effects(&mut app, e, &engine);
    key(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    type_text(&mut app, "second");
    let e = key(&mut app, KeyCode::Char('g'), KeyModifiers::CONTROL);
    run_effects(&mut app, e, &engine);
    type_text(&mut app, " third");
    let e = press(&mut app, KeyCode::F(5));
    run_effects(&mut app, e, &engine);
    let ids: Vec<u64> = app.queue.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3);

    // Cancel the third while it waits: focus the queue, select it, press x.
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    let e = press(&mut app, KeyCode::Char('x'));
    assert_eq!(e, vec![Effect::Cancel(ids[2])]);
    run_effects(&mut app, e, &engine);
    pump_until(&mut app, &mut rx, |a| {
        state(a, ids[2]) == JobState::Cancelled
    });

    // The first fails: a popup, and the second still runs to the end.
    gate.send(()).unwrap();
    pump_until(&mut app, &mut rx, |a| {
        matches!(state(a, ids[0]), JobState::Failed(_))
    });
    assert!(render(&mut app, 80, 24).contains("the UNet exploded"));
    for _ in 0..20 {
        gate.send(()).unwrap();
    }
    pump_until(&mut app, &mut rx, |a| state(a, ids[1]) == JobState::Done);
    assert_eq!(app.gallery.items.len(), 1);
    assert!(app.preview.image().is_some());
    press(&mut app, KeyCode::Esc);

    // Send the image's prompt and seed back to the editor from the gallery.
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(app.prompt.text(), "second");
    assert_eq!(app.settings.seed, app.gallery.items[0].seed);
    engine.shutdown();
}

#[test]
fn history_and_undo_in_the_editor() {
    let mut app = app();
    type_text(&mut app, "first");
    app.prompt.push_history("first", 10);
    key(&mut app, KeyCode::Char('u'), KeyModifiers::CONTROL);
    type_text(&mut app, "draft");
    press(&mut app, KeyCode::Up);
    assert_eq!(app.prompt.text(), "first");
    press(&mut app, KeyCode::Down);
    assert_eq!(app.prompt.text(), "draft");
    app.update(Input::Paste("a\r\nb".into()));
    assert_eq!(app.prompt.text(), "drafta\nb");
    key(&mut app, KeyCode::Char('z'), KeyModifiers::ALT);
    assert_eq!(app.prompt.text(), "draft");
    // Submitting with an error is refused with a message.
    type_text(&mut app, " <lora:x:1");
    assert!(press(&mut app, KeyCode::F(5)).is_empty());
    assert!(app
        .status
        .as_ref()
        .is_some_and(|s| s.error && s.text.contains("unterminated")));
}

#[test]
fn quitting_with_jobs_running_asks_first() {
    let mut app = busy_app();
    let e = key(&mut app, KeyCode::Char('q'), KeyModifiers::CONTROL);
    assert!(e.is_empty());
    assert!(render(&mut app, 80, 24).contains("Quit anyway?"));
    assert_eq!(press(&mut app, KeyCode::Char('y')), vec![Effect::Quit]);
}

#[test]
fn event_loop_end_to_end() {
    let (engine, mut rx) = Engine::spawn(ScriptedRunner::free());
    let mut app = app();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    let cat = catalog();
    let svc = Services {
        engine: &engine,
        catalog: &cat as &dyn LoraSource,
        history_file: Some(history.clone()),
        models: None,
    };
    let mut screen = TestScreen::new(80, 24);
    let (tx, mut input) = tokio::sync::mpsc::unbounded_channel();
    let send = |code: KeyCode, mods: KeyModifiers| {
        tx.send(Ok(crossterm::event::Event::Key(KeyEvent::new(code, mods))))
            .unwrap();
    };
    for c in "a red fox".chars() {
        send(KeyCode::Char(c), KeyModifiers::NONE);
    }
    send(KeyCode::F(5), KeyModifiers::NONE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = futures_util::stream::poll_fn(move |cx| input.poll_recv(cx));
        let main = stipple::tui::event_loop::run(&mut app, &mut screen, stream, &svc, &mut rx);
        let driver = async {
            // Let the job finish, then quit.
            tokio::time::sleep(Duration::from_millis(300)).await;
            send(KeyCode::Char('q'), KeyModifiers::CONTROL);
        };
        let (r, ()) = tokio::join!(main, driver);
        r.unwrap();
    });
    assert_eq!(app.queue.entries[0].state, JobState::Done);
    assert_eq!(app.gallery.items.len(), 1);
    let saved = std::fs::read_to_string(&history).unwrap();
    assert_eq!(saved.trim(), "\"a red fox\"");
    let shown = format!("{}", screen.terminal.backend());
    assert!(shown.contains("a red fox"), "{shown}");
    engine.shutdown();
}

#[test]
fn command_palette_runs_actions_by_description() {
    let mut app = app();
    key(&mut app, KeyCode::Char('p'), KeyModifiers::CONTROL);
    type_text(&mut app, "settings");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Settings);
    assert!(app.overlays.is_empty());
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Right);
    assert_eq!(app.settings.steps, 21);
    let job = app.build_job().unwrap_err();
    assert!(job.contains("empty"));
}

#[test]
fn lora_browser_shows_the_sidecar_picture() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lora/lyco_locon.safetensors"),
        dir.path().join("watercolor.safetensors"),
    )
    .unwrap();
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    })
    .save(dir.path().join("watercolor.png"))
    .unwrap();
    let cat = stipple::lora::entry::FolderSource {
        dirs: stipple::lora::catalog::LoraDirs::new([dir.path()]),
        model: None,
    };
    let mut app = app();
    app.update(Input::Catalog(cat.scan()));
    let effects = press(&mut app, KeyCode::F(2));
    assert!(
        matches!(effects.as_slice(), [Effect::LoadPreview(p)] if p.ends_with("watercolor.png")),
        "{effects:?}"
    );
    let (engine, _rx) = Engine::spawn(ScriptedRunner::free());
    let svc = Services {
        engine: &engine,
        catalog: &cat,
        history_file: None,
        models: None,
    };
    let mut screen = TestScreen::new(100, 30);
    perform(&mut app, effects, &svc, &mut screen).unwrap();
    assert!(app.loras.preview.image().is_some());
    let shown = render(&mut app, 100, 30);
    assert!(
        shown.contains("rank     4") && shown.contains('▄'),
        "{shown}"
    );
    // Moving the selection to the same adapter does not reload it.
    assert!(press(&mut app, KeyCode::Down).is_empty());
    engine.shutdown();
}

/// C-p, "sett", Enter opens Settings: the word match ranks above "submit", which "sett" also
/// matches as a subsequence.
#[test]
fn palette_ranks_a_word_match_above_a_scattered_one() {
    let mut app = app();
    type_text(&mut app, "a fox");
    key(&mut app, KeyCode::Char('p'), KeyModifiers::CONTROL);
    type_text(&mut app, "sett");
    let effects = press(&mut app, KeyCode::Enter);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Submit(_))),
        "nothing is submitted: {effects:?}"
    );
    assert_eq!(app.view, View::Settings);
    assert!(app.overlays.is_empty());
}

/// At 80 columns the settings line keeps a ten-digit seed whole; when even the shortest form
/// does not fit, the cut is marked with "…".
#[test]
fn the_seed_is_never_cut_silently() {
    let mut app = busy_app();
    app.settings.seed = 1_654_944_266;
    app.settings.seed_mode = stipple::tui::components::settings::SeedMode::Fixed;
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("seed 1654944266"), "{screen}");
    let s = app.settings.summary(20);
    assert!(s.chars().count() <= 20 && s.ends_with('…'), "{s}");
}

/// A wide settings line names zero terminal SNR and A1111's σ when they are on, and only then.
#[test]
fn the_settings_line_names_the_noise_schedule() {
    let mut app = busy_app();
    assert!(!app.settings.summary(200).contains("SNR"));
    app.settings.zero_snr = true;
    app.settings.sigmas = stipple::job::SigmaStyle::A1111;
    let s = app.settings.summary(200);
    assert!(s.contains("(zero SNR, A1111 σ) · "), "{s}");
}

/// F1 help stops scrolling at its last line instead of scrolling into an empty box.
#[test]
fn help_scrolls_no_further_than_its_end() {
    let mut app = app();
    press(&mut app, KeyCode::F(1));
    render(&mut app, 100, 30);
    for _ in 0..500 {
        press(&mut app, KeyCode::PageDown);
        render(&mut app, 100, 30);
    }
    let screen = render(&mut app, 100, 30);
    let last = stipple::tui::keymap::Keymap::default()
        .in_context(stipple::tui::keymap::Context::Picture)
        .last()
        .map(|b| b.desc)
        .unwrap();
    // The last context's last binding is on screen, on the box's last filled row or so.
    assert!(screen.contains(last), "{screen}");
    let rows: Vec<&str> = screen.lines().collect();
    let at = rows.iter().position(|r| r.contains(last)).unwrap();
    let bottom = rows.iter().rposition(|r| r.contains('└')).unwrap();
    assert!(bottom - at <= 3, "blank space after the end:\n{screen}");
    // One step up moves at once (the scroll did not run on past the end).
    press(&mut app, KeyCode::Up);
    let up = render(&mut app, 100, 30);
    assert_ne!(up, screen);
}

/// Job `done` finishes and job `next` starts.
fn next_job(app: &mut App, done: u64, next: u64) {
    app.update(Input::Engine(Event::Finished { id: done }));
    app.update(Input::Engine(Event::Started {
        id: next,
        images: 1,
        steps: 20,
    }));
}

/// When the next job starts, the queue's selection moves to it, unless it rests on a queued job.
#[test]
fn the_queue_follows_the_running_job() {
    let mut app = busy_app();
    // busy_app: #1 done, #2 running, #3 queued; the selection was left on #1.
    app.queue.selected = 0;
    next_job(&mut app, 2, 3);
    assert_eq!(app.queue.selected_id(), Some(3));
    // A selection on a queued job stays put.
    let job = app.build_job().unwrap();
    app.update(Input::Submitted {
        id: 4,
        job: job.clone(),
    });
    app.update(Input::Submitted { id: 5, job });
    app.queue.selected = 4;
    next_job(&mut app, 3, 4);
    assert_eq!(app.queue.selected_id(), Some(5));
    // Focused on the queue, the running job is on screen with the one before it.
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Up);
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("#4") && screen.contains("#3"), "{screen}");
}

/// Below one step a second the queue and header show seconds per step, not "0.0 it/s".
#[test]
fn slow_steps_show_seconds_per_step() {
    let mut app = busy_app();
    app.update(Input::Engine(Event::Step(stipple::job::Progress {
        id: 2,
        image: 0,
        step: 8,
        steps: 20,
        it_per_s: 0.04,
    })));
    let screen = render(&mut app, 120, 30);
    assert!(screen.contains("25.0 s/it"), "{screen}");
    assert!(!screen.contains("0.0 it/s"), "{screen}");
}

/// `q` in the queue and gallery is not a quit (C-q is), and is not listed as one.
#[test]
fn q_does_not_quit_from_the_queue_or_gallery() {
    let mut app = busy_app();
    for _ in 0..2 {
        press(&mut app, KeyCode::Tab);
    }
    for pane in ["queue", "gallery"] {
        let effects = press(&mut app, KeyCode::Char('q'));
        assert!(!effects.contains(&Effect::Quit), "{pane}: {effects:?}");
        assert!(app.overlays.is_empty(), "{pane}: no quit question");
        press(&mut app, KeyCode::Tab);
    }
    let map = stipple::tui::keymap::Keymap::default();
    let quits: Vec<String> = map
        .bindings
        .iter()
        .filter(|b| b.action == stipple::tui::keymap::Action::Quit)
        .map(|b| format!("{}:{:?}", b.ctx.name(), b.keys))
        .collect();
    assert_eq!(quits.len(), 1, "quit is one global binding: {quits:?}");
    assert!(quits[0].starts_with("global"), "{quits:?}");
}
