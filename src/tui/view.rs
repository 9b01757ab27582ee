//! Drawing the whole screen from the app state: header with views, the body of the current view,
//! the status bar with generated key hints, then the overlays. Below 80×24 the layout drops the
//! picture panes; below 40×10 it only says how much room it needs.

use crate::tui::app::{App, Focus, View};
use crate::tui::components::queue::fmt_secs;
use crate::tui::keymap::Action;
use crate::tui::overlays::Overlay;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget, Wrap};
use ratatui::Frame;

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub const MIN_FULL: (u16, u16) = (80, 24);
const MIN_ANY: (u16, u16) = (40, 10);

pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    let buf = frame.buffer_mut();
    buf.set_style(area, app.theme.get("ui"));
    if area.width < MIN_ANY.0 || area.height < MIN_ANY.1 {
        let msg = format!(
            "stipple needs at least {}×{} (now {}×{})",
            MIN_ANY.0, MIN_ANY.1, area.width, area.height
        );
        Paragraph::new(msg)
            .wrap(Wrap { trim: true })
            .render(area, buf);
        return;
    }
    let [header, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(app, header, buf);
    let cursor = match app.view {
        _ if app.fullscreen => {
            let covered = !app.overlays.is_empty();
            app.preview
                .render(body, buf, &app.theme, app.picker.as_ref(), covered);
            None
        }
        View::Generate => draw_generate(app, body, buf),
        View::Loras => {
            let [p, rest] =
                Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(body);
            app.prompt.render(p, buf, &app.theme, false);
            let covered = !app.overlays.is_empty();
            let tags = &app.prompt.analysis.tags;
            app.loras
                .render(rest, buf, &app.theme, tags, app.picker.as_ref(), covered);
            None
        }
        View::Schedule => {
            let [p, rest] =
                Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(body);
            app.prompt.render(p, buf, &app.theme, false);
            app.schedule.render(
                rest,
                buf,
                &app.theme,
                &app.prompt.analysis.tags,
                app.settings.steps,
            );
            None
        }
        View::Settings => {
            app.settings.render(body, buf, &app.theme);
            None
        }
    };
    draw_status(app, status, buf);
    let ctx = app.context();
    for o in &app.overlays {
        match o {
            Overlay::Help(h) => h.render(area, buf, &app.theme, &app.keymap, ctx),
            Overlay::Palette(p) => p.render(area, buf, &app.theme, &app.keymap, ctx),
            Overlay::Confirm(c) => c.render(area, buf, &app.theme),
            Overlay::Error(e) => e.render(area, buf, &app.theme),
            Overlay::Models(m) => m.render(area, buf, &app.theme),
            Overlay::Mask(m) => m.render(area, buf, &app.theme),
            Overlay::Path(p) => p.render(area, buf, &app.theme),
            Overlay::Steps(s) => s.render(area, buf, &app.theme),
        }
    }
    if let (Some(pos), true) = (cursor, app.overlays.is_empty()) {
        frame.set_cursor_position(pos);
    }
}

fn draw_header(app: &App, area: Rect, buf: &mut ratatui::buffer::Buffer) {
    let t = &app.theme;
    let mut spans = vec![Span::styled(" stipple ", t.get("ui.title.focused"))];
    let views = [
        (View::Generate, Action::ViewGenerate, "Generate"),
        (View::Loras, Action::ViewLoras, "LoRAs"),
        (View::Schedule, Action::ViewSchedule, "Schedule"),
        (View::Settings, Action::ViewSettings, "Settings"),
    ];
    for (v, action, name) in views {
        // Below full width the keys go; the status bar and help still show them.
        let key = app
            .keymap
            .key_for(crate::tui::keymap::Context::Global, action)
            .filter(|_| area.width >= MIN_FULL.0)
            .map(|k| format!("{k} "))
            .unwrap_or_default();
        let style = if app.view == v {
            t.get("ui.tab.active")
        } else {
            t.get("ui.tab")
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!("{key}{name}"), style));
    }
    let engine = match app.queue.running() {
        Some(r) => {
            let spin = SPINNER[(app.ticks % 10) as usize];
            let eta = r
                .eta_s()
                .map(|s| format!(" ETA {}", fmt_secs(s)))
                .unwrap_or_default();
            format!("{spin} #{} running{eta} ", r.id)
        }
        None if app.queue.active() > 0 => format!("{} queued ", app.queue.active()),
        None => "idle ".into(),
    };
    // The model in use leads the engine's state; a picked one not yet loaded says so.
    let engine = match (&app.model.name, app.model.loading) {
        (n, _) if n.is_empty() => engine,
        (n, true) => format!("{n} (loads with the next job) · {engine}"),
        (n, false) => format!("{n} · {engine}"),
    };
    let left: usize = spans.iter().map(|s| s.width()).sum();
    let pad = usize::from(area.width).saturating_sub(left + engine.chars().count());
    spans.push(Span::raw(" ".repeat(pad)));
    spans.push(Span::styled(engine, t.get("queue.running")));
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
}

fn draw_generate(
    app: &mut App,
    body: Rect,
    buf: &mut ratatui::buffer::Buffer,
) -> Option<ratatui::layout::Position> {
    let full = body.width >= MIN_FULL.0 && body.height + 2 >= MIN_FULL.1;
    let (left, right) = if full {
        let [l, r] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
            .areas(body);
        (l, Some(r))
    } else {
        (body, None)
    };
    let queue_h = if full { 7 } else { 4 };
    let neg_h = if full { 4 } else { 3 };
    let [p, n, summary, q] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(neg_h),
        Constraint::Length(1),
        Constraint::Length(queue_h),
    ])
    .areas(left);
    let t = &app.theme;
    let c1 = app.prompt.render(p, buf, t, app.focus == Focus::Prompt);
    let c2 = app.negative.render(n, buf, t, app.focus == Focus::Negative);
    let w = usize::from(summary.width.saturating_sub(1));
    buf.set_stringn(
        summary.x + 1,
        summary.y,
        app.settings.summary(w),
        w,
        t.get("settings.value"),
    );
    let spin = SPINNER[(app.ticks % 10) as usize];
    app.queue.render(q, buf, t, app.focus == Focus::Queue, spin);
    if let Some(r) = right {
        let [pv, g] = Layout::vertical([Constraint::Min(4), Constraint::Length(7)]).areas(r);
        let covered = !app.overlays.is_empty() || app.prompt.completion.is_some();
        app.preview
            .render(pv, buf, &app.theme, app.picker.as_ref(), covered);
        app.gallery
            .render(g, buf, &app.theme, app.focus == Focus::Gallery);
    }
    c1.or(c2)
}

fn draw_status(app: &App, area: Rect, buf: &mut ratatui::buffer::Buffer) {
    let t = &app.theme;
    buf.set_style(area, t.get("ui.statusbar"));
    if let Some(s) = &app.status {
        let style = if s.error {
            t.get("ui.message.error")
        } else {
            t.get("ui.message.info")
        };
        buf.set_stringn(
            area.x + 1,
            area.y,
            &s.text,
            usize::from(area.width.saturating_sub(1)),
            style,
        );
        return;
    }
    let mut spans = Vec::new();
    let mut used = 1;
    for (key, desc) in app.keymap.hints(app.context()) {
        let w = key.chars().count() + desc.chars().count() + 3;
        if used + w > usize::from(area.width) {
            break;
        }
        used += w;
        spans.push(Span::styled(format!(" {key}"), t.get("ui.statusbar.key")));
        spans.push(Span::styled(format!(" {desc} "), t.get("ui.statusbar")));
    }
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
}
