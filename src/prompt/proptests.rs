//! Property tests over the whole module: no panic on any text, spans on char boundaries, the
//! print/parse round trip, in-place tag rewriting, and chunking that loses no token.

use proptest::prelude::*;

use super::*;

/// Pieces that exercise every rule, glued in random order.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "cat",
        " ",
        "  ",
        "\n",
        "\t",
        ",",
        "(",
        ")",
        "[",
        "]",
        ":",
        ":1.3)",
        ":0.5",
        "1.2",
        "-",
        "\\",
        "\\(",
        "\\)",
        "\\\\",
        "\\<",
        "BREAK",
        " BREAK ",
        "B",
        "REAK",
        "é",
        "☕",
        "<",
        "<3",
        ">",
        "=",
        "@",
        "<lora:x>",
        "<lora:x:0.5>",
        "<lora:y:te=0.1@1,0.6@6>",
        "<lora:z:1:in=0:mid=1:out=0>",
        "<lora:w:te=0.5:unet=1.5:dyn=4>",
        "<lora:v:lbw=OUTALL>",
        "<lora:u:0@0,1@0.5;1@1>",
        "<lyco:t:-1>",
        "<lora:s:lbw=1,0,0,0,0,1,1,1,1,1,1,1>",
        "[a:b:2]",
        "[dog:0.5]",
        "[x::.25]",
        "[",
        ":3]",
        ":0.5]",
        "|",
        "[a|b]",
        "[fe|]",
        " AND ",
        "AND",
        " :1.5",
        "e1",
    ])
}

fn prompt_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..24).prop_map(|v| v.concat())
}

fn on_boundaries(text: &str, span: &std::ops::Range<usize>) -> bool {
    span.start <= span.end
        && span.end <= text.len()
        && text.is_char_boundary(span.start)
        && text.is_char_boundary(span.end)
}

fn fake_tokens(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .flat_map(|w| w.split_inclusive(','))
        .map(|w| {
            if w.ends_with(',') {
                CLIP_COMMA
            } else {
                1000 + w.len() as u32
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_never_panics_and_spans_are_char_boundaries(text in any::<String>()) {
        match parse_with_warnings(&text) {
            Ok((p, warnings)) => {
                for w in &warnings {
                    prop_assert!(on_boundaries(&text, &w.span));
                    let _ = w.render(&text);
                }
                for t in &p.loras {
                    prop_assert!(on_boundaries(&text, &t.span));
                    prop_assert!(on_boundaries(&text, &t.name_span));
                }
                let _ = print(&p);
            }
            Err(e) => {
                prop_assert!(on_boundaries(&text, &e.span), "{:?}", e);
                let _ = e.render(&text);
            }
        }
    }

    #[test]
    fn prompt_like_text_never_panics(text in prompt_text()) {
        if let Err(e) = parse(&text) {
            prop_assert!(on_boundaries(&text, &e.span), "{:?}", e);
            let _ = e.render(&text);
        }
    }

    #[test]
    fn print_round_trips(text in prompt_text()) {
        if let Ok(p) = parse(&text) {
            let printed = print(&p);
            let again = parse(&printed);
            prop_assert!(again.is_ok(), "{printed:?}: {again:?}");
            prop_assert_eq!(again.ok(), Some(p), "printed: {:?}", printed);
        }
    }

    #[test]
    fn schedules_cover_every_step_once(text in prompt_text(), steps in 1usize..30) {
        let Ok(p) = parse(&text) else { return Ok(()) };
        let Some(e) = &p.editing else { return Ok(()) };
        for (_, segments) in e.schedule(steps) {
            let ends: Vec<usize> = segments.iter().map(|s| s.until_step).collect();
            prop_assert_eq!(ends.last().copied(), Some(steps));
            prop_assert!(ends.windows(2).all(|w| w[0] < w[1]), "{:?}", ends);
            prop_assert!(ends[0] >= 1);
            for s in &segments {
                // Offsets point into the prompt, at the char they stand for.
                for &(o, c) in &s.chars {
                    prop_assert_eq!(text[o..].chars().next(), Some(c));
                }
            }
        }
    }

    #[test]
    fn rewriting_a_tag_keeps_every_other_byte(text in prompt_text(), pick in any::<prop::sample::Index>(), v in -3.0f32..3.0) {
        let Ok(p) = parse(&text) else { return Ok(()) };
        if p.loras.is_empty() { return Ok(()) }
        let mut tag = p.loras[pick.index(p.loras.len())].clone();
        tag.set(Component::Te, Strength::Const(v));
        let new = rewrite_tag(&text, &tag).unwrap();
        let (a, b) = (tag.span.start, tag.span.end);
        prop_assert_eq!(&new[..a], &text[..a]);
        prop_assert_eq!(&new[new.len() - (text.len() - b)..], &text[b..]);
        let again = parse(&new).unwrap();
        prop_assert_eq!(&again.fragments, &p.fragments);
        let idx = p.loras.iter().position(|t| t.span == tag.span).unwrap();
        prop_assert_eq!(&again.loras[idx], &tag);
    }

    #[test]
    fn chunking_keeps_every_token_in_order(text in prompt_text(), reps in 1usize..40) {
        let Ok(p) = parse(&text.repeat(reps)) else { return Ok(()) };
        // Past MAX_CHUNKS the chunker refuses (tested in chunk.rs); the property is about the rest.
        let Ok(chunks) = chunk(&p.fragments, fake_tokens, &ChunkConfig::default()) else { return Ok(()) };
        prop_assert!(!chunks.is_empty());
        let mut all = Vec::new();
        for c in &chunks {
            prop_assert!(c.tokens.len() <= CHUNK_LEN);
            prop_assert_eq!(c.tokens.len(), c.weights.len());
            all.extend_from_slice(&c.tokens);
        }
        let want: Vec<u32> = p.fragments.iter().flat_map(|f| match f {
            Fragment::Text { text, .. } => fake_tokens(text),
            Fragment::Break => Vec::new(),
        }).collect();
        prop_assert_eq!(all, want);
    }
}

/// Guards the properties above against passing vacuously: most generated prompts must parse.
#[test]
fn generated_prompts_mostly_parse() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prompt_text();
    let (mut ok, mut with_tags, mut with_editing, n) = (0, 0, 0, 400);
    for _ in 0..n {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        if let Ok(p) = parse(&tree.current()) {
            ok += 1;
            with_tags += usize::from(!p.loras.is_empty());
            with_editing += usize::from(p.editing.is_some());
        }
    }
    assert!(ok * 3 > n, "only {ok} of {n} parse");
    assert!(with_tags * 6 > n, "only {with_tags} of {n} have tags");
    assert!(
        with_editing * 6 > n,
        "only {with_editing} of {n} use editing or AND"
    );
}
