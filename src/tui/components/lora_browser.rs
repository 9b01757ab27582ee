//! The LoRA browser: adapters from the LoRA catalog (`lora::entry`), filtered by typing, with their
//! details and family evidence; incompatible ones are marked and cannot be inserted. Tags already in
//! the prompt show their strength. [`insertion`] says what inserting an adapter adds to the prompt.

use crate::lora::entry::{Compat, Listing, LoraEntry};
use crate::tui::components::preview::Preview;
use crate::tui::graphics::Graphics;
use crate::tui::lang::{fmt_strength, LoraTag};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct LoraBrowser {
    pub entries: Vec<LoraEntry>,
    /// Why some adapters may be missing (a LoRA folder that does not exist), shown above the list.
    pub problems: Vec<String>,
    pub filter: String,
    /// Index into [`visible`](Self::visible).
    pub selected: usize,
    /// The sidecar picture of the selected adapter, loaded by the event loop on request.
    pub preview: Preview,
    /// Which sidecar was last asked for, so each is loaded once per selection.
    pub preview_path: Option<PathBuf>,
}

impl LoraBrowser {
    pub fn set_entries(&mut self, entries: Vec<LoraEntry>) {
        self.entries = entries;
        self.clamp();
    }

    /// A fresh scan: its adapters and its problems.
    pub fn set_listing(&mut self, listing: Listing) {
        self.problems = listing.problems;
        self.set_entries(listing.entries);
    }

    /// Names for `<lora:` completion: insertable adapters only.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.insertable())
            .map(|e| e.name.clone())
            .collect()
    }

    /// Entries matching the filter (case-insensitive substring of name, family or trigger words).
    pub fn visible(&self) -> Vec<&LoraEntry> {
        let f = self.filter.to_lowercase();
        self.entries
            .iter()
            .filter(|e| {
                f.is_empty()
                    || e.name.to_lowercase().contains(&f)
                    || e.family
                        .as_deref()
                        .is_some_and(|x| x.to_lowercase().contains(&f))
                    || e.triggers.iter().any(|t| t.to_lowercase().contains(&f))
            })
            .collect()
    }

    pub fn current(&self) -> Option<&LoraEntry> {
        self.visible().get(self.selected).copied()
    }

    pub fn select(&mut self, delta: isize) {
        self.selected = super::wrap_select(self.selected, delta, self.visible().len());
    }

    pub fn type_char(&mut self, c: char) {
        self.filter.push(c);
        self.selected = 0;
    }

    pub fn backspace(&mut self) {
        self.filter.pop();
        self.clamp();
    }

    fn clamp(&mut self) {
        let n = self.visible().len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    /// The sidecar picture the selection wants, if it is not the one asked for last.
    pub fn wanted_preview(&mut self) -> Option<PathBuf> {
        let want = self.current().and_then(|e| e.preview.clone());
        if want == self.preview_path {
            return None;
        }
        self.preview_path = want.clone();
        self.preview = Preview::default();
        want
    }

    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        tags: &[LoraTag],
        picker: Option<&Graphics>,
        covered: bool,
    ) {
        let [list_area, detail_area] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(area);
        let title = format!(" LoRAs — filter: {}▏ ", self.filter);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.border.focused"))
            .title(Span::styled(title, theme.get("ui.title.focused")));
        let mut inner = block.inner(list_area);
        block.render(list_area, buf);
        for p in self.problems.iter().take(usize::from(inner.height / 2)) {
            buf.set_stringn(
                inner.x,
                inner.y,
                format!("! {p}"),
                usize::from(inner.width),
                theme.get("lora.incompatible"),
            );
            inner.y += 1;
            inner.height -= 1;
        }
        let visible = self.visible();
        if visible.is_empty() {
            let msg = if self.entries.is_empty() {
                "no adapters found; add folders to lora_folders in the config (F4 shows them)"
            } else {
                "nothing matches the filter"
            };
            Paragraph::new(msg)
                .wrap(Wrap { trim: true })
                .style(theme.get("ui.text.muted"))
                .render(inner, buf);
        }
        let h = usize::from(inner.height);
        let first = (self.selected + 1).saturating_sub(h);
        for (row, (i, e)) in visible.iter().enumerate().skip(first).take(h).enumerate() {
            let in_prompt = tags.iter().find(|t| t.name == e.name);
            let (mark, style) = match (&e.compat, in_prompt) {
                (Compat::No(_), _) => ('✗', theme.get("lora.incompatible")),
                (_, Some(_)) => ('●', theme.get("lora.in_prompt")),
                _ => (' ', theme.get("ui")),
            };
            let strength = in_prompt.map(|t| fmt_strength(&t.unet)).unwrap_or_default();
            let kind = e.kind.as_deref().unwrap_or("?");
            let text = format!(
                "{mark} {:<w$} {:>5} {:>6}",
                e.name,
                kind,
                strength,
                w = usize::from(inner.width).saturating_sub(16).max(4)
            );
            let style = if i == self.selected {
                theme.get("ui.selection")
            } else {
                style
            };
            buf.set_stringn(
                inner.x,
                inner.y + row as u16,
                text,
                usize::from(inner.width),
                style,
            );
        }
        let rows = self.render_detail(detail_area, buf, theme);
        let pic = Rect {
            y: detail_area.y + rows + 1,
            height: detail_area.height.saturating_sub(rows + 2),
            ..detail_area
        };
        if pic.height >= 4 && self.preview.image().is_some() {
            self.preview.render(pic, buf, theme, picker, covered);
        }
    }

    /// Draws the facts of the selected adapter; returns how many rows they took.
    fn render_detail(&self, area: Rect, buf: &mut Buffer, theme: &Theme) -> u16 {
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.border"))
            .title(Span::styled(" Adapter ", theme.get("ui.title")));
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(e) = self.current() else { return 0 };
        let muted = theme.get("ui.text.muted");
        let field = |k: &'static str, v: String| {
            Line::from(vec![Span::styled(format!("{k:<9}"), muted), Span::raw(v)])
        };
        let unknown = || "unknown".to_string();
        let mut lines = vec![
            field("name", e.name.clone()),
            field("type", e.kind.clone().unwrap_or_else(unknown)),
            field("family", e.family.clone().unwrap_or_else(unknown)),
            field("rank", e.rank.map_or_else(unknown, |r| r.to_string())),
            field("size", human_size(e.size)),
            field(
                "triggers",
                if e.triggers.is_empty() {
                    "none".into()
                } else {
                    e.triggers.join(", ")
                },
            ),
            field(
                "preview",
                e.preview
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map_or("none".into(), |n| n.to_string_lossy().into_owned()),
            ),
        ];
        if !e.evidence.is_empty() {
            lines.insert(3, field("evidence", e.evidence.join("; ")));
        }
        match &e.compat {
            Compat::No(why) => lines.push(Line::styled(
                format!("✗ not insertable: {why}"),
                theme.get("lora.incompatible"),
            )),
            Compat::Unknown => lines.push(Line::styled("? compatibility not known", muted)),
            Compat::Yes => lines.push(Line::styled(
                "✓ compatible with the model",
                theme.get("lora.in_prompt"),
            )),
        }
        let w = usize::from(inner.width.max(1));
        let rows: usize = lines.iter().map(|l| l.width().div_ceil(w).max(1)).sum();
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .render(inner, buf);
        (rows as u16).min(inner.height)
    }
}

/// What inserting `entry` at byte `cursor` of the prompt `text` does: the range to replace and
/// its new text. The tag comes with the trigger words the prompt lacks (when `with_triggers`),
/// and those words are set off by commas from the prompt text before them.
pub fn insertion(
    entry: &LoraEntry,
    text: &str,
    cursor: usize,
    with_triggers: bool,
) -> (std::ops::Range<usize>, String) {
    let cursor = cursor.min(text.len());
    let tag = format!("<lora:{}:1>", entry.name);
    let missing: Vec<&str> = entry
        .triggers
        .iter()
        .map(String::as_str)
        .filter(|t| with_triggers && !text.contains(t))
        .collect();
    let before = &text[..cursor];
    let after_is_word = text[cursor..]
        .chars()
        .next()
        .is_some_and(|c| !c.is_whitespace());
    let (start, mut new) = if missing.is_empty() {
        let space = before
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_whitespace());
        (cursor, format!("{}{tag}", if space { " " } else { "" }))
    } else {
        // Words join the prompt's words: after a comma, in place of the blanks before the cursor.
        let trimmed = before.trim_end();
        let sep = match trimmed.chars().next_back() {
            None => "",
            Some(',') => " ",
            Some(_) => ", ",
        };
        (trimmed.len(), format!("{sep}{}, {tag}", missing.join(", ")))
    };
    if after_is_word {
        new.push(' ');
    }
    (start..cursor, new)
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink() -> LoraEntry {
        LoraEntry {
            name: "ink".into(),
            triggers: vec!["ink wash".into(), "lineart".into()],
            ..LoraEntry::default()
        }
    }

    fn insert(text: &str, cursor: usize, triggers: bool) -> String {
        let (range, new) = insertion(&ink(), text, cursor, triggers);
        let mut out = text.to_string();
        out.replace_range(range, &new);
        out
    }

    #[test]
    fn trigger_words_are_set_off_by_commas() {
        assert_eq!(
            insert("portrait", 8, true),
            "portrait, ink wash, lineart, <lora:ink:1>"
        );
        assert_eq!(
            insert("portrait  ", 10, true),
            "portrait, ink wash, lineart, <lora:ink:1>"
        );
        assert_eq!(
            insert("portrait,", 9, true),
            "portrait, ink wash, lineart, <lora:ink:1>"
        );
        assert_eq!(insert("", 0, true), "ink wash, lineart, <lora:ink:1>");
        assert_eq!(
            insert("portrait", 0, true),
            "ink wash, lineart, <lora:ink:1> portrait"
        );
        // Words already in the prompt are not repeated.
        assert_eq!(
            insert("lineart portrait", 16, true),
            "lineart portrait, ink wash, <lora:ink:1>"
        );
    }

    #[test]
    fn a_tag_alone_is_set_off_by_a_space() {
        assert_eq!(insert("portrait", 8, false), "portrait <lora:ink:1>");
        assert_eq!(insert("portrait ", 9, false), "portrait <lora:ink:1>");
        assert_eq!(
            insert("ink wash, lineart", 17, true),
            "ink wash, lineart <lora:ink:1>"
        );
    }
}
