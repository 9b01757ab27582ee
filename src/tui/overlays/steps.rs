//! The prompt-steps overlay (F10 / M-s): which text the prompt, each of its `AND` parts and the
//! negative prompt give the model at each sampling step, picked as A1111's prompt editing and
//! alternation pick them, for the steps in the settings. [`PromptSteps::new`] reads the texts once.

use super::{centered, Scroll};
use crate::prompt::{parse, parse_negative, Prompt, PromptError};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

#[derive(Debug, Clone)]
pub struct PromptSteps {
    pub scroll: Scroll,
    /// Section titles (`None` row text) and `(steps, text)` rows, in order.
    rows: Vec<(String, Option<String>)>,
}

impl PromptSteps {
    pub fn new(prompt: &str, negative: &str, steps: usize) -> PromptSteps {
        let steps = steps.max(1);
        let mut rows = Vec::new();
        section(&mut rows, "Prompt", parse(prompt), steps);
        section(
            &mut rows,
            "Negative prompt",
            parse_negative(negative),
            steps,
        );
        PromptSteps {
            scroll: Scroll::default(),
            rows,
        }
    }

    /// The rows as plain text, one per line (what the overlay shows, without styles).
    pub fn text(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|(a, b)| match b {
                None => a.clone(),
                Some(text) => format!("  {a:<12} {text}"),
            })
            .collect()
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let rect = centered(area, 76, area.height.saturating_sub(2));
        let lines = self
            .rows
            .iter()
            .map(|(a, b)| match b {
                None => Line::styled(a.clone(), theme.get("help.section")),
                Some(text) => Line::from(vec![
                    Span::styled(format!("  {a:<12} "), theme.get("help.key")),
                    Span::raw(text.clone()),
                ]),
            })
            .collect();
        self.scroll.render(
            rect,
            buf,
            theme,
            " Text at each step — ↑/↓ scroll, Esc closes ",
            lines,
        );
    }
}

/// Appends `title`'s rows: one per run of steps with one text, per `AND` part.
fn section(
    rows: &mut Vec<(String, Option<String>)>,
    title: &str,
    parsed: Result<Prompt, PromptError>,
    steps: usize,
) {
    let prompt = match parsed {
        Ok(p) => p,
        Err(e) => {
            rows.push((format!("{title}: {e}"), None));
            return;
        }
    };
    let Some(editing) = &prompt.editing else {
        rows.push((format!("{title} (the same at every step)"), None));
        rows.push((range(1, steps), Some(shown(&prompt.plain_text()))));
        return;
    };
    let parts = editing.runs(steps);
    let several = parts.len() > 1;
    for (i, (weight, runs)) in parts.iter().enumerate() {
        rows.push(match several {
            true => (
                format!("{title}, AND part {} (weight {weight})", i + 1),
                None,
            ),
            false => (title.to_string(), None),
        });
        for r in runs {
            rows.push((range(r.from, r.until), Some(shown(&r.segment.text()))));
        }
    }
}

fn range(from: usize, until: usize) -> String {
    match from == until {
        true => format!("step {from}"),
        false => format!("steps {from}–{until}"),
    }
}

fn shown(text: &str) -> String {
    match text.trim() {
        "" => "(empty)".to_string(),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected runs follow A1111's documented prompt-editing rules: `[a:b:N]` switches after step N,
    // a fraction is of the step count, `[a|b]` alternates every step.
    #[test]
    fn editing_shows_each_run_of_steps() {
        let s = PromptSteps::new("a [cat:dog:5] on grass", "blurry", 20);
        assert_eq!(
            s.text(),
            [
                "Prompt",
                "  steps 1–5    a cat on grass",
                "  steps 6–20   a dog on grass",
                "Negative prompt (the same at every step)",
                "  steps 1–20   blurry",
            ]
        );
    }

    #[test]
    fn alternation_and_and_parts() {
        let s = PromptSteps::new("[red|blue] fox AND snow :0.5", "", 3);
        let t = s.text();
        assert_eq!(t[0], "Prompt, AND part 1 (weight 1)");
        assert_eq!(
            &t[1..4],
            [
                "  step 1       red fox",
                "  step 2       blue fox",
                "  step 3       red fox"
            ]
        );
        assert_eq!(t[4], "Prompt, AND part 2 (weight 0.5)");
        assert_eq!(t[5], "  steps 1–3    snow");
        assert!(t.contains(&"  steps 1–3    (empty)".to_string()), "{t:?}");
    }

    #[test]
    fn a_broken_prompt_says_why_instead_of_rows() {
        let s = PromptSteps::new(&"a ".repeat(20_000), "", 20);
        assert!(s.text()[0].starts_with("Prompt: "), "{:?}", s.text());
    }
}
