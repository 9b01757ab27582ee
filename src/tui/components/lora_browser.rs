//! The LoRA browser: adapters from the catalog, filtered by typing, with their details; incompatible
//! ones are marked and cannot be inserted. Tags already in the prompt show their strength.

use crate::tui::catalog::{Compat, LoraEntry};
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
                    || e.family.as_deref().is_some_and(|x| x.contains(&f))
                    || e.triggers.iter().any(|t| t.to_lowercase().contains(&f))
            })
            .collect()
    }

    pub fn current(&self) -> Option<&LoraEntry> {
        self.visible().get(self.selected).copied()
    }

    pub fn select(&mut self, delta: isize) {
        let n = self.visible().len() as isize;
        if n > 0 {
            self.selected = (self.selected as isize + delta).rem_euclid(n) as usize;
        }
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
        let inner = block.inner(list_area);
        block.render(list_area, buf);
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
