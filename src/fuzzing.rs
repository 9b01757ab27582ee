//! The bodies of the `cargo fuzz` targets in `fuzz/fuzz_targets/`, one per reader of untrusted input:
//! [`prompt`], [`safetensors_header`], [`png_text`], [`job_lines`]. Each takes arbitrary bytes and
//! panics only on a bug (a panic inside the reader, or a broken invariant asserted here), so the
//! committed corpora also run in an ordinary `cargo test` (tests/it/fuzz_corpus.rs).

use std::io::Cursor;
use std::path::Path;

use crate::batch::jobfile::{entries, JobSpec};
use crate::batch::naming::OutName;
use crate::image::{parse_infotext, read_text_chunks_from};
use crate::lora::file::Adapter;
use crate::lora::header::modules;
use crate::prompt::{self, PromptError, PromptWarning};

/// The prompt parser, positive and negative: no panic, every span on char boundaries of the text,
/// and `print` → `parse` gives back an equal prompt.
pub fn prompt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_parse(&text, prompt::parse_with_warnings(&text), true);
    check_parse(&text, prompt::parse_negative_with_warnings(&text), false);
}

fn check_parse(
    text: &str,
    parsed: Result<(prompt::Prompt, Vec<PromptWarning>), PromptError>,
    positive: bool,
) {
    let on_boundaries = |span: &std::ops::Range<usize>| {
        span.start <= span.end
            && span.end <= text.len()
            && text.is_char_boundary(span.start)
            && text.is_char_boundary(span.end)
    };
    let (p, warnings) = match parsed {
        Ok(ok) => ok,
        Err(e) => {
            assert!(
                on_boundaries(&e.span),
                "error span {:?} in {text:?}",
                e.span
            );
            let _ = e.render(text);
            return;
        }
    };
    for w in &warnings {
        assert!(
            on_boundaries(&w.span),
            "warning span {:?} in {text:?}",
            w.span
        );
        let _ = w.render(text);
    }
    for t in &p.loras {
        assert!(on_boundaries(&t.span), "tag span {:?} in {text:?}", t.span);
        assert!(on_boundaries(&t.name_span), "name span in {text:?}");
    }
    if let Some(e) = &p.editing {
        for steps in [1, 2, 7] {
            let _ = e.schedule(steps);
        }
    }
    let printed = prompt::print(&p);
    let again = if positive {
        prompt::parse(&printed)
    } else {
        prompt::parse_negative(&printed)
    };
    match again {
        Ok(again) => assert_eq!(
            again, p,
            "{text:?} printed as {printed:?} reads back differently"
        ),
        Err(e) => panic!("{text:?} printed as {printed:?} does not parse: {e}"),
    }
}

/// The adapter `.safetensors` reader: header, offsets and shapes checked, then the header's modules
/// and every tensor decoded (the reader promised they fit the file).
pub fn safetensors_header(data: &[u8]) {
    let Ok(adapter) = Adapter::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    let found = modules(&adapter);
    let _ = (found.types(), found.ranks());
    for name in adapter.tensors().keys() {
        let t = adapter
            .tensor(name)
            .unwrap_or_else(|e| panic!("a listed tensor does not decode: {e}"));
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
    }
}

/// The PNG text-chunk reader and the infotext of a `parameters` chunk.
pub fn png_text(data: &[u8]) {
    let Ok(chunks) = read_text_chunks_from(Cursor::new(data), Path::new("fuzz.png")) else {
        return;
    };
    if let Some(text) = chunks.get("parameters") {
        let _ = parse_infotext(text);
    }
}

/// The job-file reader: lines, sweeps, fields, the output name, and the checks of the `init_image`
/// and `hires` settings that need no file (lines naming a file would read it).
pub fn job_lines(data: &[u8]) {
    for entry in entries("fuzz.jsonl", data, &[]) {
        let Ok(expanded) = entry.body else { continue };
        let Ok(spec) = JobSpec::from_fields(&expanded.fields) else {
            continue;
        };
        let _ = OutName::parse(spec.out.as_deref(), spec.batch.unwrap_or(1));
        if spec.init_image.is_none() {
            let _ = spec.init();
            if spec.hires.as_ref().is_some_and(|h| h.model.is_none()) {
                let w = spec.width.unwrap_or(512);
                let h = spec.height.unwrap_or(512);
                let _ = spec.hires(w, h);
            }
        }
    }
}
