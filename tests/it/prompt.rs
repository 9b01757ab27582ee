//! The prompt language through its public API: parse → resolve against LoRA folders → chunk, and the
//! TUI's edit loop (parse, change a strength, rewrite the tag in place).

use stipple::prompt::{
    chunk, parse, rewrite_tag, Catalog, ChunkConfig, Component, Fragment, LoraDirs, Position,
    Strength, CLIP_COMMA,
};

#[test]
fn parse_resolve_chunk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("styles")).unwrap();
    std::fs::write(dir.path().join("styles/Ink.safetensors"), b"12345").unwrap();
    std::fs::write(dir.path().join("bad.ckpt"), b"x").unwrap();

    let text = "a fox, (forest:1.2) <lora:ink:te=0.1@1,0.6@6> BREAK night";
    let p = parse(text).unwrap();
    let cat = Catalog::scan(&LoraDirs::new([dir.path()]));
    let resolved = cat.resolve_prompt(&p).unwrap();
    assert_eq!(resolved[0].1.rel_path, "styles/Ink.safetensors");
    assert_eq!(resolved[0].1.size, 5);
    // unet inherits te's schedule: 0.1 at step 1 → 0.6 at step 6.
    assert!((resolved[0].0.unet.at(3, 20) - 0.4).abs() < 1e-6);

    let bad = parse("<lora:bad>").unwrap();
    let e = cat.resolve_prompt(&bad).unwrap_err();
    assert!(e.render("<lora:bad>").contains("can run code"));

    // One token per word, commas separate.
    let tok = |s: &str| -> Vec<u32> {
        s.replace(',', " , ")
            .split_whitespace()
            .map(|w| if w == "," { CLIP_COMMA } else { 7 })
            .collect()
    };
    let chunks = chunk(&p.fragments, tok, &ChunkConfig::default()).unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].tokens, vec![7, 7, CLIP_COMMA, 7]);
    assert_eq!(chunks[0].weights, vec![1.0, 1.0, 1.0, 1.2]);
    assert_eq!(chunks[1].tokens, vec![7]);
    assert!(matches!(p.fragments[2], Fragment::Break));
}

#[test]
fn tui_edit_loop() {
    let text = "portrait, <lora:a:0.7>  <lora:b:1:out=0.5>   soft light";
    let p = parse(text).unwrap();
    let mut b = p.loras[1].clone();
    b.set(
        Component::Unet,
        Strength::schedule(vec![
            (1.0, Position::Fraction(0.0)),
            (0.0, Position::Fraction(1.0)),
        ])
        .unwrap(),
    );
    let new = rewrite_tag(text, &b).unwrap();
    assert_eq!(
        new,
        "portrait, <lora:a:0.7>  <lora:b:unet=1@0,0@1:out=0.5>   soft light"
    );
    let q = parse(&new).unwrap();
    assert_eq!(q.loras[1], b);
    assert!(q.loras[1].is_scheduled());
    assert_eq!(q.fragments, p.fragments);
}

/// Issue 18: `"BREAK " × 5000` ran for minutes (5,000 chunks). The binary refuses it at once, before
/// any model is loaded, naming the limit.
#[test]
fn a_break_flood_is_refused_by_the_binary_in_under_a_second() {
    let out_dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args([
            "generate",
            "--steps",
            "1",
            "--prompt",
            &"BREAK ".repeat(5000),
        ])
        .arg("--out")
        .arg(out_dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("prompt too long: 5001 chunks from 5000 BREAKs; the limit is 32 chunks"),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.chars().count() < 200),
        "a line of the message is too long:\n{err}"
    );
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

/// A prompt of more than 32 × 75 tokens without BREAK is refused by the engine's chunker.
#[test]
fn a_prompt_past_the_token_limit_is_refused_by_the_engine() {
    let p = parse(&"a ".repeat(32 * 75 + 1)).unwrap();
    let err = match crate::util::generator().encode_prompt_pooled(&p.fragments) {
        Ok(_) => panic!("a 2,401-token prompt was encoded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("prompt too long: more than 32 chunks"),
        "{err}"
    );
}
