//! The step-schedule editor: one curve per component (te, unet, in, mid, out) of the selected tag,
//! drawn over the steps. Editing a point produces a new tag; the app prints it back into the prompt,
//! so the curve and the text never disagree.

use crate::prompt::Position;
use crate::tui::lang::{
    component_key, explicit, fmt_num, fraction, points, print, Component, LoraTag, Strength,
    COMPONENTS,
};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edit {
    PrevPoint,
    NextPoint,
    Value(f32),
    Move(f32),
    Add,
    Delete,
    Constant,
}

#[derive(Debug, Clone)]
pub struct ScheduleEditor {
    /// Which tag of the prompt (by order).
    pub tag: usize,
    pub component: Component,
    pub point: usize,
}

impl Default for ScheduleEditor {
    fn default() -> Self {
        ScheduleEditor {
            tag: 0,
            component: Component::Unet,
            point: 0,
        }
    }
}

fn round2(v: f32) -> f32 {
    (v * 100.0).round() / 100.0
}

/// A position moved by `d` notches (0.05 of the run, or one step) within `lo..=hi`.
fn shift(p: Position, d: f32, lo: Position, hi: Position) -> Position {
    match (p, lo, hi) {
        (Position::Step(s), Position::Step(a), Position::Step(b)) => {
            let n = (i64::from(s) + if d > 0.0 { 1 } else { -1 })
                .clamp(i64::from(a).max(1), i64::from(b));
            Position::Step(n as u32)
        }
        (Position::Fraction(f), lo, hi) => {
            let (a, b) = (as_frac(lo), as_frac(hi));
            Position::Fraction(round2((f + d).clamp(a, b)))
        }
        (other, ..) => other,
    }
}

fn as_frac(p: Position) -> f32 {
    match p {
        Position::Fraction(f) => f,
        Position::Step(_) => 1.0,
    }
}

/// Halfway between two positions of the same kind.
fn between(a: Position, b: Position) -> Position {
    match (a, b) {
        (Position::Step(x), Position::Step(y)) => Position::Step((x + y) / 2),
        _ => Position::Fraction(round2((as_frac(a) + as_frac(b)) / 2.0)),
    }
}

impl ScheduleEditor {
    pub fn cycle_component(&mut self, delta: isize) {
        let i = COMPONENTS
            .iter()
            .position(|c| *c == self.component)
            .unwrap_or(0) as isize;
        self.component = COMPONENTS[(i + delta).rem_euclid(5) as usize];
        self.point = 0;
    }

    /// Applies `edit` to `tag`: the changed tag, `None` if only the selection moved, or why the
    /// curve cannot be built.
    pub fn edit(
        &mut self,
        tag: &LoraTag,
        edit: Edit,
        steps: u32,
    ) -> Result<Option<LoraTag>, String> {
        let mut pts = points(tag.get(self.component));
        let n = pts.len();
        self.point = self.point.min(n.saturating_sub(1));
        let p = self.point;
        let last_pos = |pts: &[(f32, Position)]| match pts.first().map(|x| x.1) {
            Some(Position::Step(_)) => Position::Step(steps.max(2)),
            _ => Position::Fraction(1.0),
        };
        let first_pos = |pts: &[(f32, Position)]| match pts.first().map(|x| x.1) {
            Some(Position::Step(_)) => Position::Step(1),
            _ => Position::Fraction(0.0),
        };
        match edit {
            Edit::PrevPoint => {
                self.point = p.saturating_sub(1);
                return Ok(None);
            }
            Edit::NextPoint => {
                self.point = (p + 1).min(n.saturating_sub(1));
                return Ok(None);
            }
            Edit::Value(d) => pts[p].0 = round2(pts[p].0 + d),
            Edit::Move(d) => {
                let lo = if p == 0 {
                    first_pos(&pts)
                } else {
                    pts[p - 1].1
                };
                let hi = if p + 1 < n {
                    pts[p + 1].1
                } else {
                    last_pos(&pts)
                };
                pts[p].1 = shift(pts[p].1, d, lo, hi);
            }
            Edit::Add => {
                let (v, at) = pts[p];
                let end = last_pos(&pts);
                let (idx, point) = if p + 1 < n {
                    (
                        p + 1,
                        (round2((v + pts[p + 1].0) / 2.0), between(at, pts[p + 1].1)),
                    )
                } else if at != end {
                    (p + 1, (v, between(at, end)))
                } else {
                    // The last point already sits at the end of the run: add one before it.
                    let prev = if p > 0 { pts[p - 1].1 } else { first_pos(&pts) };
                    (p, (v, between(prev, at)))
                };
                pts.insert(idx, point);
                self.point = idx;
                let mut t = tag.clone();
                t.set(self.component, Strength::schedule(pts)?);
                return Ok(Some(t));
            }
            Edit::Delete => {
                if n <= 1 {
                    return Ok(None);
                }
                pts.remove(p);
                self.point = p.min(pts.len() - 1);
            }
            Edit::Constant => {
                pts = vec![(pts[p].0, Position::Fraction(0.0))];
                self.point = 0;
            }
        }
        let flat = pts.iter().all(|x| x.0 == pts[0].0);
        let strength = if pts.len() == 1
            || (flat
                && pts.len() == 2
                && as_frac(pts[0].1) == 0.0
                && pts[1].1 == Position::Fraction(1.0))
        {
            Strength::Const(pts[0].0)
        } else {
            Strength::schedule(pts)?
        };
        let mut t = tag.clone();
        t.set(self.component, strength);
        Ok(Some(t))
    }

    pub fn render(
        &self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        tags: &[LoraTag],
        steps: u32,
    ) {
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.border.focused"))
            .title(Span::styled(" Schedule ", theme.get("ui.title.focused")));
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(tag) = tags.get(self.tag) else {
            Paragraph::new(
                "no <lora:…> tag in the prompt; add one (F2 browses adapters), then come back",
            )
            .style(theme.get("ui.text.muted"))
            .render(inner, buf);
            return;
        };
        if inner.height < 6 || inner.width < 20 {
            return;
        }
        let mut header = vec![Span::styled(
            format!("{} ", tag.name),
            theme.get("prompt.lora.name"),
        )];
        for c in COMPONENTS {
            let style = if c == self.component {
                theme.get("ui.tab.active")
            } else {
                theme.get("ui.tab")
            };
            header.push(Span::styled(format!(" {} ", component_key(c)), style));
        }
        header.push(Span::styled(
            format!("  tag {}/{}", self.tag + 1, tags.len()),
            theme.get("ui.text.muted"),
        ));
        buf.set_line(inner.x, inner.y, &Line::from(header), inner.width);

        let strength = tag.get(self.component);
        let explicit = explicit(tag, self.component);
        let pts = points(strength);
        let sel = self.point.min(pts.len().saturating_sub(1));
        let hi = pts.iter().map(|p| p.0).fold(1.0_f32, f32::max).max(1.0);
        let lo = pts.iter().map(|p| p.0).fold(0.0_f32, f32::min).min(0.0);
        let label_w = 6u16;
        let plot = Rect {
            x: inner.x + label_w,
            y: inner.y + 1,
            width: inner.width - label_w,
            height: inner.height - 4,
        };
        let axis = theme.get("schedule.axis");
        buf.set_string(inner.x, plot.y, format!("{:>5}", fmt_num(hi)), axis);
        buf.set_string(
            inner.x,
            plot.y + plot.height - 1,
            format!("{:>5}", fmt_num(lo)),
            axis,
        );
        for y in plot.y..plot.y + plot.height {
            buf.set_string(plot.x - 1, y, "│", axis);
        }
        let row_of = |v: f32| -> u16 {
            let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            plot.y + plot.height - 1 - (t * f32::from(plot.height - 1)).round() as u16
        };
        let w = plot.width.saturating_sub(1).max(1);
        let curve_style = if explicit {
            theme.get("schedule.curve")
        } else {
            theme.get("schedule.inherited")
        };
        for col in 0..=w {
            let step =
                (f32::from(col) / f32::from(w) * steps.saturating_sub(1) as f32).round() as usize;
            let v = strength.at(step, steps as usize);
            buf.set_string(plot.x + col, row_of(v), "·", curve_style);
        }
        for (i, (v, at)) in pts.iter().enumerate() {
            let x = plot.x + (fraction(*at, steps).clamp(0.0, 1.0) * f32::from(w)).round() as u16;
            let style = if i == sel {
                theme.get("schedule.point.selected")
            } else {
                theme.get("schedule.point")
            };
            buf.set_string(x, row_of(*v), "●", style);
        }
        let base = plot.y + plot.height;
        buf.set_string(
            plot.x,
            base,
            format!("step 0{:>w$}", steps, w = usize::from(w).saturating_sub(5)),
            axis,
        );
        let mut spans = vec![Span::styled(
            format!("{}: ", component_key(self.component)),
            axis,
        )];
        for (i, (v, at)) in pts.iter().enumerate() {
            let style = if i == sel {
                theme.get("schedule.point.selected")
            } else {
                theme.get("schedule.point")
            };
            spans.push(Span::styled(format!("{}@{at}", fmt_num(*v)), style));
            spans.push(Span::raw("  "));
        }
        if !explicit {
            spans.push(Span::styled(
                "(follows unet until edited)",
                theme.get("schedule.inherited"),
            ));
        }
        buf.set_line(inner.x, base + 1, &Line::from(spans), inner.width);
        buf.set_stringn(
            inner.x,
            base + 2,
            print(tag),
            usize::from(inner.width),
            theme.get("prompt.lora"),
        );
    }
}
