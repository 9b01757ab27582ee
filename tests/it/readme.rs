//! Every `stipple …` and `scripts/run …` command in the README's shell code blocks (```sh, ```bash)
//! is accepted by the real binary's command line: each is run (scripts/run is the binary with the same
//! arguments) in an empty folder with HOME pointing there, stdin closed, and killed after a few
//! seconds. The binary parses its command line before doing anything else, so a command still
//! running when killed was accepted, and one that ends may fail for any reason but its usage: exit 2
//! is the usage failure (clap's, and stipple's documented exit code for a command line, config or
//! prompt it refuses), and clap prints `Usage:`. Placeholders such as `DIR` or `~/models/x` only make
//! the command fail later (exit 1). `[--flag]` in a command line means optional and is passed as
//! `--flag`. The binary, not its parser types, is driven, so the test does not depend on how the
//! command line is implemented.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a command may run before it is taken as accepted and killed.
const ACCEPTED_AFTER: Duration = Duration::from_secs(8);

/// One command: its line in the README, environment assignments and arguments (after the program).
#[derive(Debug, PartialEq)]
struct Example {
    line: usize,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// Splits one shell command line into words: quotes ('…', "…" with `\` escapes), a `#` comment at a
/// word start, `~` at a word start as `home`. Stops at `|`, `&&`, `;` or `>` outside quotes.
fn words(line: &str, home: &Path) -> Vec<String> {
    let (mut out, mut cur, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&q| q != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            '#' if !in_word => break,
            '|' | ';' | '>' | '&' if !in_word => break,
            '~' if !in_word => {
                in_word = true;
                cur.push_str(&home.to_string_lossy());
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The commands of the shell blocks of `readme`, continuation lines (`\` at the end) joined.
fn examples(readme: &str, home: &Path) -> Vec<Example> {
    let mut out = Vec::new();
    let mut shell = None::<bool>;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in readme.lines().enumerate() {
        if let Some(lang) = raw.strip_prefix("```") {
            shell = match shell {
                Some(_) => None,
                None => Some(matches!(lang.trim(), "sh" | "bash" | "shell" | "console")),
            };
            continue;
        }
        if shell != Some(true) {
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((i + 1, String::new()));
        text.push_str(raw);
        if let Some(cont) = text.strip_suffix('\\') {
            pending = Some((start, format!("{cont} ")));
            continue;
        }
        let mut w = words(&text, home);
        let mut env = Vec::new();
        while let Some((k, v)) = w.first().and_then(|s| s.split_once('=')) {
            if !k.chars().all(|c| c.is_ascii_uppercase() || c == '_') || k.is_empty() {
                break;
            }
            env.push((k.to_string(), v.to_string()));
            w.remove(0);
        }
        if !matches!(
            w.first().map(String::as_str),
            Some("stipple" | "scripts/run")
        ) {
            continue;
        }
        let args = w[1..]
            .iter()
            .map(
                |a| match a.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
                    Some(opt) if opt.starts_with('-') => opt.to_string(),
                    _ => a.clone(),
                },
            )
            .collect();
        out.push(Example {
            line: start,
            env,
            args,
        });
    }
    out
}

/// Runs the binary on `ex` in `dir`: `None` when accepted, else why not. The workstation refuses
/// to start without a terminal (after its command line is parsed), so such a line runs again
/// under `script`, which gives it one, and its flags are checked there too.
fn refusal(ex: &Example, dir: &Path) -> Option<String> {
    let (status, err) = run(ex, dir, false)?;
    let (status, err) = if err.contains("the workstation needs a terminal") {
        run(ex, dir, true)?
    } else {
        (status, err)
    };
    let usage = status.code() == Some(2) || err.contains("Usage:");
    usage.then(|| {
        format!(
            "README line {}: stipple {:?}: {status}\n{err}",
            ex.line, ex.args
        )
    })
}

/// Single quotes for `sh`.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The exit status and what was printed (stderr; the terminal's output under `script`), or `None`
/// when the command was still running after [`ACCEPTED_AFTER`] (then it is killed).
fn run(ex: &Example, dir: &Path, in_terminal: bool) -> Option<(std::process::ExitStatus, String)> {
    let bin = env!("CARGO_BIN_EXE_stipple");
    let mut cmd = if in_terminal {
        let line: Vec<String> = std::iter::once(bin.to_string())
            .chain(ex.args.iter().cloned())
            .map(|w| quoted(&w))
            .collect();
        let mut c = Command::new("script");
        c.args(["-qec", &line.join(" "), "/dev/null"]);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(&ex.args);
        c
    };
    cmd.envs(ex.env.iter().map(|(k, v)| (k, v)))
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .env("XDG_DATA_HOME", dir.join(".local/share"))
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .stdin(Stdio::null());
    if in_terminal {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("the stipple binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for stipple") {
            break Some(s);
        }
        if started.elapsed() > ACCEPTED_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let pipe: Option<Box<dyn std::io::Read>> = if in_terminal {
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>)
    } else {
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>)
    };
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut err);
    }
    Some((status?, err))
}

#[test]
fn every_readme_command_is_accepted_by_the_binary() {
    let root = crate::util::root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let dir = tempfile::tempdir().expect("temp dir");
    let found = examples(&readme, dir.path());
    assert!(
        found.len() >= 10,
        "only {} commands found in the README",
        found.len()
    );
    let refused: Vec<String> = found
        .iter()
        .filter_map(|ex| refusal(ex, dir.path()))
        .collect();
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

#[test]
fn a_command_the_parser_refuses_is_caught() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readme = "```sh\nstipple generate --stesp 4   # a typo\nscripts/run generate --steps 1 \\\n    --no-such-flag\n```\n";
    let found = examples(readme, dir.path());
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[1].line, 3);
    assert_eq!(
        found[1].args,
        ["generate", "--steps", "1", "--no-such-flag"]
    );
    for ex in &found {
        let why = refusal(ex, dir.path()).expect("refused");
        assert!(why.contains("Usage:"), "{why}");
    }
}

#[test]
fn shell_words_quotes_comments_env_and_optional_flags() {
    let home = Path::new("/h");
    let readme = "```\nstipple not-shell\n```\n```bash\nSTIPPLE_GPU=1 stipple generate --prompt \"a \\\"fox\\\"\" 'x y' ~/m [--json] # note\n~/venv/bin/python x.py\n```\n";
    let found = examples(readme, home);
    assert_eq!(
        found,
        [Example {
            line: 5,
            env: vec![("STIPPLE_GPU".into(), "1".into())],
            args: vec![
                "generate".into(),
                "--prompt".into(),
                "a \"fox\"".into(),
                "x y".into(),
                "/h/m".into(),
                "--json".into()
            ],
        }]
    );
}
