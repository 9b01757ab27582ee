//! The step-schedule editor: one curve per component (te, unet, in, mid, out) of the selected tag,
//! drawn over the steps. Editing a point produces a new tag; the app prints it back into the prompt,
//! so the curve and the text never disagree.

use crate::tui::lang::{fmt_num, Component, LoraTag, Strength};
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

impl ScheduleEditor {
    pub fn cycle_component(&mut self, delta: isize) {
        let i = Component::ALL
            .iter()
            .position(|c| *c == self.component)
            .unwrap_or(0) as isize;
        self.component = Component::ALL[(i + delta).rem_euclid(5) as usize];
        self.point = 0;
    }

    /// Applies `edit` to `tag`; returns the changed tag, or `None` if nothing changed.
    pub fn edit(&mut self, tag: &LoraTag, edit: Edit) -> Option<LoraTag> {
        let (strength, _) = tag.get(self.component);
        let mut pts = strength.points();
        let n = pts.len();
        self.point = self.point.min(n.saturating_sub(1));
        let p = self.point;
        match edit {
            Edit::PrevPoint => {
                self.point = p.saturating_sub(1);
                return None;
            }
            Edit::NextPoint => {
                self.point = (p + 1).min(n.saturating_sub(1));
                return None;
            }
            Edit::Value(d) => pts[p].0 = round2(pts[p].0 + d),
            Edit::Move(d) => {
                let lo = if p == 0 { 0.0 } else { pts[p - 1].1 };
                let hi = if p + 1 < n {
                    pts[p + 1].1
                } else {
                    1.0_f32.max(pts[p].1)
                };
                pts[p].1 = round2((pts[p].1 + d).clamp(lo, hi));
            }
            Edit::Add => {
                let (v, at) = pts[p];
                let at2 = if p + 1 < n {
                    (at + pts[p + 1].1) / 2.0
                } else {
                    (at + 0.25).min(1.0)
                };
                let v2 = if p + 1 < n {
                    (v + pts[p + 1].0) / 2.0
                } else {
                    v
                };
                // A point past the last one at the end of the run would pile up: put it before.
                let (v2, at2, idx) = if p + 1 >= n && at >= 1.0 {
                    let prev = if p > 0 { pts[p - 1].1 } else { 0.0 };
                    (v, (prev + at) / 2.0, p)
                } else {
                    (v2, at2, p + 1)
                };
                pts.insert(idx, (round2(v2), round2(at2)));
                self.point = idx;
                let mut t = tag.clone();
                t.set(self.component, Strength::Schedule(pts));
                return Some(t);
            }
            Edit::Delete => {
                if n <= 1 {
                    return None;
                }
                pts.remove(p);
                self.point = p.min(pts.len() - 1);
            }
            Edit::Constant => {
                let v = pts[p].0;
                let mut t = tag.clone();
                t.set(self.component, Strength::Const(v));
                self.point = 0;
                return Some(t);
            }
        }
        let mut t = tag.clone();
        let s = if matches!(strength, Strength::Const(_))
            && n == 2
            && pts[0].0 == pts[1].0
            && pts[0].1 == 0.0
            && pts[1].1 == 1.0
        {
            Strength::Const(pts[0].0)
        } else {
            Strength::Schedule(pts)
        };
        t.set(self.component, s);
        Some(t)
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
        for c in Component::ALL {
            let style = if c == self.component {
                theme.get("ui.tab.active")
            } else {
                theme.get("ui.tab")
            };
            header.push(Span::styled(format!(" {} ", c.key()), style));
        }
        header.push(Span::styled(
            format!("  tag {}/{}", self.tag + 1, tags.len()),
            theme.get("ui.text.muted"),
        ));
        buf.set_line(inner.x, inner.y, &Line::from(header), inner.width);

        let (strength, explicit) = tag.get(self.component);
        let pts = strength.points();
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
                (f32::from(col) / f32::from(w) * steps.saturating_sub(1) as f32).round() as u32;
            let v = strength.at(step, steps);
            buf.set_string(plot.x + col, row_of(v), "·", curve_style);
        }
        let frac = |at: f32| {
            if at <= 1.0 {
                at
            } else {
                at / steps.saturating_sub(1).max(1) as f32
            }
        };
        for (i, (v, at)) in pts.iter().enumerate() {
            let x = plot.x + (frac(*at).clamp(0.0, 1.0) * f32::from(w)).round() as u16;
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
        let mut spans = vec![Span::styled(format!("{}: ", self.component.key()), axis)];
        for (i, (v, at)) in pts.iter().enumerate() {
            let style = if i == sel {
                theme.get("schedule.point.selected")
            } else {
                theme.get("schedule.point")
            };
            spans.push(Span::styled(
                format!("{}@{}", fmt_num(*v), fmt_num(*at)),
                style,
            ));
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
            tag.print(),
            usize::from(inner.width),
            theme.get("prompt.lora"),
        );
    }
}
