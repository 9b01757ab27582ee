//! The real binary in tmux with the tiny models (half-blocks forced): start, type a prompt, generate,
//! see the picture fill, open help, quit, and the shell gets its terminal back. Skipped without tmux.

use crate::util::root;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed: smoke test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let session = format!("stipple-smoke-{}", std::process::id());
    let socket = tmp.path().join("tmux.sock");
    let sock = socket.to_str().unwrap();
    let cmd = format!(
        "STIPPLE_CONFIG_HOME={cfg} {bin} --image-protocol halfblocks --out {out}{model}; echo EXITED $?; sleep 60",
        cfg = tmp.path().join("config").display(),
        bin = env!("CARGO_BIN_EXE_stipple"),
        out = tmp.path().join("out").display(),
        model = model
            .map(|m| format!(" --model {}", m.display()))
            .unwrap_or_default(),
    );
    let run = |args: &[&str]| {
        let mut full = vec!["-S", sock];
        full.extend_from_slice(args);
        tmux(&full)
    };
    let _ = Command::new("tmux")
        .args([
            "-S",
            sock,
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "100",
            "-y",
            "30",
            "-c",
        ])
        .arg(root())
        .arg(&cmd)
        .status();
    let capture = |needle: &str, secs: u64| {
        let start = Instant::now();
        loop {
            let screen = run(&["capture-pane", "-t", &session, "-p"]);
            if screen.contains(needle) || start.elapsed() > Duration::from_secs(secs) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let screen = capture("Prompt", 20);
    assert!(screen.contains("Prompt"), "{screen}");
    run(&["send-keys", "-t", &session, "a red fox in the snow"]);
    run(&["send-keys", "-t", &session, "F5"]);
    let screen = capture("done, 1 image", 60);
    assert!(screen.contains("done, 1 image"), "{screen}");
    assert!(
        screen.contains('▀') || screen.contains('▄'),
        "the picture area shows the image:\n{screen}"
    );
    run(&["send-keys", "-t", &session, "F1"]);
    // Waits for the popup's text, not just its title: a capture can land mid-redraw.
    let help = capture("submit the prompt", 10);
    assert!(
        help.contains("Keys") && help.contains("submit the prompt"),
        "{help}"
    );
    run(&["send-keys", "-t", &session, "Escape"]);
    // An Escape read together with the next key is that key with Alt (how terminals send Meta), so
    // C-q waits for the popup to close: under load the two could arrive as one M-C-q.
    let start = Instant::now();
    while run(&["capture-pane", "-t", &session, "-p"]).contains("submit the prompt")
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    run(&["send-keys", "-t", &session, "C-q"]);
    let end = capture("EXITED", 20);
    assert!(end.contains("EXITED 0"), "{end}");
    // The alternate screen is gone: only the shell's line remains.
    assert!(!end.contains("Prompt"), "{end}");
    let _ = run(&["kill-server"]);
    let saved: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().collect();
    assert_eq!(saved.len(), 1, "one PNG saved");
}
