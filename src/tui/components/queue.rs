//! The queue mirror: what the engine was asked to do and how far it got, updated from its events.
//! Shows each job's state, the running job's image i/n, step i/n, it/s and ETA, and a progress bar.

use crate::job::{Event, Job, JobId};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Queued,
    Running {
        image: u32,
        images: u32,
        step: u32,
        steps: u32,
        it_per_s: f32,
    },
    Done,
    Failed(String),
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub id: JobId,
    pub job: Job,
    pub state: JobState,
    /// Images received so far.
    pub images_done: u32,
}

impl QueueEntry {
    /// Seconds left for this job at the measured speed, if it is running and measured.
    pub fn eta_s(&self) -> Option<f32> {
        match self.state {
            JobState::Running {
                image,
                images,
                step,
                steps,
                it_per_s,
            } if it_per_s > 0.0 => {
                let left = (steps - step.min(steps)) + (images.saturating_sub(image + 1)) * steps;
                Some(left as f32 / it_per_s)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Queue {
    pub entries: Vec<QueueEntry>,
    pub selected: usize,
}

impl Queue {
    pub fn push(&mut self, id: JobId, job: Job) {
        self.entries.push(QueueEntry {
            id,
            job,
            state: JobState::Queued,
            images_done: 0,
        });
    }

    pub fn get(&self, id: JobId) -> Option<&QueueEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    fn get_mut(&mut self, id: JobId) -> Option<&mut QueueEntry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    pub fn running(&self) -> Option<&QueueEntry> {
        self.entries
            .iter()
            .find(|e| matches!(e.state, JobState::Running { .. }))
    }

    pub fn active(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, JobState::Queued | JobState::Running { .. }))
            .count()
    }

    pub fn selected_id(&self) -> Option<JobId> {
        self.entries.get(self.selected).map(|e| e.id)
    }

    pub fn select(&mut self, delta: isize) {
        if self.entries.is_empty() {
            return;
        }
        let n = self.entries.len() as isize;
        self.selected = (self.selected as isize + delta).clamp(0, n - 1) as usize;
    }

    /// Folds one engine event into the mirror.
    pub fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::Started { id, images, steps } => {
                // The selection follows the running job unless it rests on a queued one (the
                // user may be about to cancel that).
                let resting = self
                    .entries
                    .get(self.selected)
                    .is_some_and(|e| e.state == JobState::Queued);
                if let (false, Some(i)) = (resting, self.entries.iter().position(|e| e.id == *id)) {
                    self.selected = i;
                }
                if let Some(e) = self.get_mut(*id) {
                    e.state = JobState::Running {
                        image: 0,
                        images: *images,
                        step: 0,
                        steps: *steps,
                        it_per_s: 0.0,
                    };
                }
            }
            Event::Step(p) => {
                if let Some(e) = self.get_mut(p.id) {
                    let images = match e.state {
                        JobState::Running { images, .. } => images,
                        _ => e.job.batch,
                    };
                    e.state = JobState::Running {
                        image: p.image,
                        images,
                        step: p.step,
                        steps: p.steps,
                        it_per_s: p.it_per_s,
                    };
                }
            }
            Event::Image { id, .. } => {
                if let Some(e) = self.get_mut(*id) {
                    e.images_done += 1;
                }
            }
            Event::Finished { id } => self.set(*id, JobState::Done),
            Event::Failed { id, message } => self.set(*id, JobState::Failed(message.clone())),
            Event::Cancelled { id } => self.set(*id, JobState::Cancelled),
            _ => {}
        }
    }

    fn set(&mut self, id: JobId, state: JobState) {
        if let Some(e) = self.get_mut(id) {
            e.state = state;
        }
    }

    pub fn render(
        &self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        focused: bool,
        spinner: char,
    ) {
        let border = if focused {
            theme.get("ui.border.focused")
        } else {
            theme.get("ui.border")
        };
        let title_style = if focused {
            theme.get("ui.title.focused")
        } else {
            theme.get("ui.title")
        };
        let title = format!(" Queue ({} active) ", self.active());
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(border)
            .title(Span::styled(title, title_style));
        let inner = block.inner(area);
        block.render(area, buf);
        if inner.height == 0 {
            return;
        }
        let mut lines = Vec::new();
        if let Some(r) = self.running() {
            lines.push(progress_line(r, inner.width, theme));
        }
        if self.entries.is_empty() {
            lines.push(Line::styled(
                "nothing queued — F5 submits the prompt",
                theme.get("ui.text.muted"),
            ));
        }
        let room = usize::from(inner.height).saturating_sub(lines.len());
        // Keep in view the selection when focused, else the running job (what people watch),
        // with the job before it above (given room) and what waits below.
        let anchor = if focused {
            self.selected
        } else {
            self.entries
                .iter()
                .position(|e| matches!(e.state, JobState::Running { .. }))
                .unwrap_or(self.entries.len().saturating_sub(1))
        };
        let first = anchor
            .saturating_sub(usize::from(room > 2))
            .min(self.entries.len().saturating_sub(room));
        for (i, e) in self.entries.iter().enumerate().skip(first).take(room) {
            lines.push(entry_line(
                e,
                i == self.selected && focused,
                theme,
                spinner,
                inner.width,
            ));
        }
        Paragraph::new(lines).render(inner, buf);
    }
}

fn entry_line<'a>(
    e: &'a QueueEntry,
    selected: bool,
    theme: &Theme,
    spinner: char,
    width: u16,
) -> Line<'a> {
    let (mark, style, status) = match &e.state {
        JobState::Queued => ('·', theme.get("queue.queued"), "queued".to_string()),
        JobState::Running {
            image,
            images,
            step,
            steps,
            it_per_s,
        } => (
            spinner,
            theme.get("queue.running"),
            format!(
                "{}step {step}/{steps}{}{}",
                if *images > 1 {
                    format!("img {}/{images} ", image + 1)
                } else {
                    String::new()
                },
                fmt_rate(*it_per_s),
                e.eta_s()
                    .map(|s| format!(" ETA {}", fmt_secs(s)))
                    .unwrap_or_default()
            ),
        ),
        JobState::Done => (
            '✓',
            theme.get("queue.done"),
            format!("done, {} image(s)", e.images_done),
        ),
        JobState::Failed(m) => ('✗', theme.get("queue.failed"), format!("failed: {m}")),
        JobState::Cancelled => ('-', theme.get("queue.cancelled"), "cancelled".into()),
    };
    // The status matters more than the prompt, which is on screen anyway: the prompt gets the rest.
    let room = usize::from(width)
        .saturating_sub(status.chars().count() + 8)
        .clamp(4, 40);
    let mut prompt: String = e.job.prompt.replace('\n', " ").chars().take(room).collect();
    if e.job.prompt.chars().count() > room {
        prompt.pop();
        prompt.push('…');
    }
    let line = Line::from(vec![
        Span::styled(format!("{mark} #{:<3}", e.id), style),
        Span::raw(format!("{prompt:<room$} ")),
        Span::styled(status, style),
    ]);
    if selected {
        line.style(theme.get("ui.selection"))
    } else {
        line
    }
}

fn progress_line<'a>(e: &QueueEntry, width: u16, theme: &Theme) -> Line<'a> {
    let JobState::Running {
        image,
        images,
        step,
        steps,
        ..
    } = e.state
    else {
        return Line::default();
    };
    let total = (images * steps).max(1);
    let done = image * steps + step;
    let pct = (done as f32 / total as f32).clamp(0.0, 1.0);
    let label = format!(" {:>3.0}%", pct * 100.0);
    let bar_w = usize::from(width).saturating_sub(label.len());
    let filled = (bar_w as f32 * pct).round() as usize;
    Line::from(vec![
        Span::styled("█".repeat(filled), theme.get("progress.bar")),
        Span::styled("░".repeat(bar_w - filled), theme.get("progress.empty")),
        Span::styled(label, Style::default()),
    ])
}

/// Speed as people read it: "2.5 it/s", or "4.0 s/it" below one step a second; nothing before
/// the first step.
pub fn fmt_rate(it_per_s: f32) -> String {
    if it_per_s >= 1.0 {
        format!(" {it_per_s:.1} it/s")
    } else if it_per_s > 0.0 {
        format!(" {:.1} s/it", 1.0 / it_per_s)
    } else {
        String::new()
    }
}

pub fn fmt_secs(s: f32) -> String {
    let s = s.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
