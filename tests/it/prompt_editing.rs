//! Prompt editing, alternation and `AND` against A1111's own `prompt_parser`: the per-step prompt
//! schedules of its documented examples and of generated prompts, recorded by
//! `scripts/a1111_prompt_schedules.py` in tests/fixtures/prompt/a1111_schedules.json.

use crate::util::root;
use serde_json::Value;
use stipple::prompt::parse;

/// `(weight, [(until_step, text)])` per part.
type Schedule = Vec<(f64, Vec<(usize, String)>)>;

/// The schedule as stipple computes it.
fn stipple_schedule(prompt: &str, steps: usize) -> Result<Schedule, String> {
    let p = parse(prompt).map_err(|e| e.render(prompt))?;
    Ok(match &p.editing {
        None => vec![(1.0, vec![(steps, prompt.to_string())])],
        Some(e) => e
            .schedule(steps)
            .into_iter()
            .map(|(w, segs)| (w, segs.iter().map(|s| (s.until_step, s.text())).collect()))
            .collect(),
    })
}

fn a1111_schedule(case: &Value) -> Schedule {
    case["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let segs = p["schedule"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s[0].as_u64().unwrap() as usize,
                        s[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (p["weight"].as_f64().unwrap(), segs)
        })
        .collect()
}

/// Every `(` and `[` closed by its own kind and no `:` outside brackets (escapes skipped): what
/// the generator's prompts are, part by part, unless it put a stray bracket or colon between their
/// pieces.
fn well_formed(part: &str) -> bool {
    let mut open = Vec::new();
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' | '[' => open.push(c),
            ')' if open.pop() != Some('(') => return false,
            ']' if open.pop() != Some('[') => return false,
            ':' if open.is_empty() => return false,
            _ => {}
        }
    }
    open.is_empty()
}

/// The prompt's `AND` parts without their weights are all [`well_formed`].
fn clean(prompt: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in prompt.match_indices("AND") {
        if !word(prompt[..i].chars().next_back()) && !word(prompt[i + 3..].chars().next()) {
            parts.push(&prompt[start..i]);
            start = i + 3;
        }
    }
    parts.push(&prompt[start..]);
    parts.iter().all(|p| {
        let p = p.trim_end();
        let p = match p.rsplit_once(':') {
            Some((text, w)) if w.trim().parse::<f64>().is_ok() && !w.contains(['e', 'E']) => text,
            _ => p,
        };
        well_formed(p)
    })
}

/// A1111's documented examples come first in the fixture.
const DOCUMENTED: usize = 19;

#[test]
fn schedules_are_identical_to_a1111s() {
    let path = root().join("tests/fixtures/prompt/a1111_schedules.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = all["cases"].as_array().unwrap();
    assert!(cases.len() > 2000, "{} cases", cases.len());
    let (mut edited, mut with_and, mut failures) = (0, 0, Vec::new());
    let (mut stray, mut stray_differ) = (0, 0);
    for (k, case) in cases.iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let want = a1111_schedule(case);
        edited += usize::from(want.iter().any(|(_, s)| s.len() > 1));
        with_and += usize::from(want.len() > 1);
        let got = stipple_schedule(prompt, steps);
        let same = got.as_ref().is_ok_and(|g| *g == want);
        // With a stray bracket, A1111's Earley parser may read a well-formed `[a:b:N]` next to
        // it as literal text (its ambiguity resolution); stipple always reads it as an edit.
        if k >= DOCUMENTED && !clean(prompt) {
            stray += 1;
            stray_differ += usize::from(!same);
            continue;
        }
        if !same {
            failures.push(format!(
                "{prompt:?} ({steps} steps):\n  A1111:   {want:?}\n  stipple: {got:?}"
            ));
        }
    }
    eprintln!(
        "{} cases: {} identical; {stray} with stray brackets, {stray_differ} of those differ",
        cases.len(),
        cases.len() - failures.len() - stray_differ
    );
    // The fixture exercises what it is for.
    assert!(edited * 3 > cases.len(), "only {edited} cases change text");
    assert!(with_and * 8 > cases.len(), "only {with_and} cases use AND");
    assert!(
        failures.is_empty(),
        "{} of {} differ; the first ones:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(8)].join("\n")
    );
    assert!(
        stray_differ * 10 < stray,
        "{stray_differ} of {stray} with stray brackets differ"
    );
}
