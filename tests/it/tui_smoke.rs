//! The real binary in tmux with the tiny models: start, type a prompt, generate, see the picture
//! fill, open help, quit, and the shell gets its terminal back; with the default picture protocol,
//! keys typed right after start arrive; after a resize, quitting leaves nothing behind; the hires fix
//! set in Settings runs with an `--upscaler` given to the workstation.
//! Without tmux these tests are skipped with a note, or fail when `CI=true`.

use crate::util::root;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether tmux can run here; under `CI=true` a missing tmux is a failure, not a skip.
fn have_tmux(test: &str) -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: tmux is not installed, and CI=true requires this test to run"
        );
        eprintln!("tmux is not installed: {test} skipped");
    }
    found
}

/// One detached tmux server with the binary in its only pane; killed on drop.
struct Tmux {
    _dir: tempfile::TempDir,
    socket: String,
    session: String,
    out: std::path::PathBuf,
}

impl Tmux {
    /// Starts `stipple FLAGS` in a `w`×`h` window; the pane prints `EXITED <code>` when it ends.
    fn start(flags: &str, (w, h): (u16, u16)) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock").to_str().unwrap().to_string();
        let session = format!("stipple-smoke-{}", std::process::id());
        let out = dir.path().join("out");
        let cmd = format!(
            "STIPPLE_CONFIG_HOME={cfg} {bin} {flags} --out {out}; echo EXITED $?; sleep 60",
            cfg = dir.path().join("config").display(),
            bin = env!("CARGO_BIN_EXE_stipple"),
            out = out.display(),
        );
        let status = Command::new("tmux")
            .args(["-S", &socket, "new-session", "-d", "-s", &session])
            .args(["-x", &w.to_string(), "-y", &h.to_string(), "-c"])
            .arg(root())
            .arg(&cmd)
            .status()
            .expect("tmux starts");
        assert!(status.success(), "tmux new-session failed");
        Tmux {
            _dir: dir,
            socket,
            session,
            out,
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-S", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-t", &self.session, "-p"])
    }

    /// The screen once it contains `needle`, or as it is after `secs`.
    fn wait_for(&self, needle: &str, secs: u64) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(needle) || start.elapsed() > Duration::from_secs(secs) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `needle` is gone from the screen.
    fn wait_gone(&self, needle: &str, secs: u64) {
        let start = Instant::now();
        while self.screen().contains(needle) && start.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn workstation_generates_in_tmux_and_restores_the_terminal() {
    smoke(None);
}

/// The same flow on the tiny SDXL folder: two text encoders and the added conditioning, unchanged UI.
#[test]
fn workstation_runs_an_sdxl_model_unchanged() {
    smoke(Some(&crate::sdxl::tiny_sdxl()));
}

fn smoke(model: Option<&Path>) {
    if !have_tmux("the tmux smoke test") {
        return;
    }
    let model = model
        .map(|m| format!(" --model {}", m.display()))
        .unwrap_or_default();
    let t = Tmux::start(&format!("--image-protocol halfblocks{model}"), (100, 30));
    let screen = t.wait_for("Prompt", 20);
    assert!(screen.contains("Prompt"), "{screen}");
    t.keys(&["a red fox in the snow"]);
    t.keys(&["F5"]);
    let screen = t.wait_for("done, 1 image", 60);
    assert!(screen.contains("done, 1 image"), "{screen}");
    assert!(
        screen.contains('▀') || screen.contains('▄'),
        "the picture area shows the image:\n{screen}"
    );
    t.keys(&["F1"]);
    // Waits for the popup's text, not just its title: a capture can land mid-redraw.
    let help = t.wait_for("submit the prompt", 10);
    assert!(
        help.contains("Keys") && help.contains("submit the prompt"),
        "{help}"
    );
    t.keys(&["Escape"]);
    // An Escape read together with the next key is that key with Alt (how terminals send Meta), so
    // C-q waits for the popup to close: under load the two could arrive as one M-C-q.
    t.wait_gone("submit the prompt", 10);
    t.keys(&["C-q"]);
    let end = t.wait_for("EXITED", 20);
    assert!(end.contains("EXITED 0"), "{end}");
    // The alternate screen is gone: only the shell's line remains.
    assert!(!end.contains("Prompt"), "{end}");
    let saved: Vec<_> = std::fs::read_dir(&t.out).unwrap().collect();
    assert_eq!(saved.len(), 1, "one PNG saved");
}

/// The default `--image-protocol auto` queries the terminal at start; keys typed while that
/// happens (and right after) reach the prompt, and `C-q` quits at once.
#[test]
fn keys_typed_right_after_start_arrive_with_the_default_protocol() {
    if !have_tmux("the tmux key test") {
        return;
    }
    let t = Tmux::start("", (100, 30));
    // No waiting for the screen: the keys go in while the binary loads and queries.
    t.keys(&["-l", "early bird"]);
    let screen = t.wait_for("Prompt", 20);
    assert!(screen.contains("Prompt"), "{screen}");
    let started = Instant::now();
    t.keys(&["-l", " gets the worm"]);
    let screen = t.wait_for("early bird gets the worm", 5);
    assert!(
        screen.contains("│early bird gets the worm"),
        "typed text is in the prompt:\n{screen}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "keys took {:?} to show",
        started.elapsed()
    );
    t.keys(&["C-q"]);
    let end = t.wait_for("EXITED", 5);
    assert!(end.contains("EXITED 0"), "C-q quits:\n{end}");
}

/// Resizing the terminal and then quitting leaves no line of the workstation on the shell screen.
#[test]
fn quitting_after_a_resize_leaves_the_shell_screen_clean() {
    if !have_tmux("the tmux resize test") {
        return;
    }
    let t = Tmux::start("--image-protocol halfblocks", (160, 48));
    let screen = t.wait_for("Prompt", 20);
    assert!(screen.contains("Prompt"), "{screen}");
    // Growing taller is what carried 12 lines over in tmux 3.3a (48 → 60 rows).
    for (w, h) in [(120, 40), (160, 48), (200, 60)] {
        t.run(&[
            "resize-window",
            "-t",
            &t.session,
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(300));
    }
    t.wait_for("Prompt", 5);
    t.keys(&["C-q"]);
    let end = t.wait_for("EXITED", 10);
    assert!(end.contains("EXITED 0"), "{end}");
    for word in ["Prompt", "Queue", "Negative", "Gallery", "│", "└"] {
        assert!(
            !end.contains(word),
            "{word:?} left on the shell screen:\n{end}"
        );
    }
}

/// The hires fix set in Settings runs on the real engine with an ONNX upscaler given to the
/// workstation (`--upscaler`): the saved picture is twice the first pass's size and its infotext
/// names the upscaler, as `generate --upscaler FILE.onnx` writes it.
#[test]
fn workstation_runs_the_hires_fix_with_an_onnx_upscaler() {
    if !have_tmux("the tmux hires test") {
        return;
    }
    let t = Tmux::start(
        "--image-protocol halfblocks --upscaler tests/fixtures/upscaler/tiny-2x.onnx",
        (100, 34),
    );
    let screen = t.wait_for("Prompt", 20);
    assert!(screen.contains("Prompt"), "{screen}");
    t.keys(&["-l", "a red fox in the snow"]);
    t.keys(&["F4"]);
    t.wait_for("hires upscaler", 10);
    // "hires fix" is the 23rd field; Enter turns it on; Left on the upscaler comes round to the
    // last one, the model.
    for _ in 0..22 {
        t.keys(&["Down"]);
    }
    t.keys(&["Enter"]);
    let screen = t.wait_for("hires fix      on", 10);
    assert!(screen.contains("hires fix      on"), "{screen}");
    for _ in 0..4 {
        t.keys(&["Down"]);
    }
    t.keys(&["Left"]);
    let screen = t.wait_for("tiny-2x.onnx (model)", 10);
    assert!(
        screen.contains("hires upscaler tiny-2x.onnx (model)"),
        "{screen}"
    );
    t.keys(&["Escape"]);
    t.wait_gone("hires upscaler", 10);
    t.keys(&["F5"]);
    let screen = t.wait_for("done, 1 image", 120);
    assert!(screen.contains("done, 1 image"), "{screen}");
    t.keys(&["C-q"]);
    let end = t.wait_for("EXITED", 20);
    assert!(end.contains("EXITED 0"), "{end}");
    let saved: Vec<_> = std::fs::read_dir(&t.out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "one PNG saved: {saved:?}");
    let chunks = stipple::image::read_text_chunks(&saved[0]).unwrap();
    let info = stipple::image::parse_infotext(&chunks["parameters"]).unwrap();
    assert_eq!(info.get("Hires upscaler"), Some("tiny-2x"), "{info:?}");
    assert_eq!(info.get("Hires upscale"), Some("2"), "{info:?}");
    let (w, h) = info
        .get("Size")
        .and_then(|s| s.split_once('x'))
        .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
        .expect("a Size");
    assert_eq!(image::image_dimensions(&saved[0]).unwrap(), (2 * w, 2 * h));
}
