//! How pictures reach the terminal. [`detect`] picks a protocol and the cell size in pixels with a
//! query bounded to a fraction of a second that hands back whatever the user typed meanwhile; in
//! tmux it asks tmux for the cell size and uses tmux's own sixel where tmux has it, kitty only with
//! Unicode placeholders, and never sixel passed through tmux. [`Graphics::fit`] places a picture
//! in a pane (ratio kept, upscaled when small); [`Graphics::protocol`] encodes it for that protocol.

use crate::config::ImageProtocol;
use crate::tui::early_input::{self, Replies};
use ratatui::layout::Rect;
use ratatui_image::protocol::halfblocks::Halfblocks;
use ratatui_image::protocol::iterm2::Iterm2;
use ratatui_image::protocol::kitty::StatefulKitty;
use ratatui_image::protocol::sixel::Sixel;
use ratatui_image::protocol::{ImageSource, StatefulProtocol, StatefulProtocolType};
use std::time::Duration;

/// How long the terminal may take to answer; typed keys are kept either way.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(300);
/// Cells are about twice as tall as wide when nothing says otherwise.
const DEFAULT_CELL: (u16, u16) = (10, 20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Halfblocks,
    /// Sixel drawn by the terminal itself or by tmux (never wrapped for passthrough).
    Sixel,
    /// Kitty graphics with Unicode placeholders (which survive tmux).
    Kitty,
    Iterm2,
}

/// The chosen protocol and the size of one cell in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graphics {
    pub kind: Kind,
    pub cell: (u16, u16),
    /// Kitty and iTerm2 sequences are wrapped for tmux's passthrough.
    pub tmux: bool,
}

/// What tmux says about the terminal it is attached to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmuxClient {
    pub cell: Option<(u16, u16)>,
    /// `client_termfeatures`, e.g. "256,RGB,sixel,…".
    pub features: String,
    /// `client_termname` and `client_termtype` together, e.g. "xterm-kitty kitty(0.32)".
    pub terminal: String,
}

/// Everything [`choose`] decides from.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub tmux: Option<TmuxClient>,
    pub replies: Replies,
    /// The cell size from the window size in pixels (`TIOCGWINSZ`), when the terminal fills it in.
    pub winsize_cell: Option<(u16, u16)>,
    /// The environment names a terminal that speaks iTerm2's protocol.
    pub iterm_env: bool,
    /// WezTerm or Konsole, whose kitty and sixel support is incomplete.
    pub shaky_env: bool,
}

impl Graphics {
    pub fn halfblocks() -> Graphics {
        Graphics {
            kind: Kind::Halfblocks,
            cell: DEFAULT_CELL,
            tmux: false,
        }
    }

    /// The cells a `width`×`height` picture covers in `area`: as large as fits with its ratio
    /// kept (small pictures are scaled up), centred.
    pub fn fit(&self, (width, height): (u32, u32), area: Rect) -> Rect {
        if width == 0 || height == 0 || area.is_empty() {
            return Rect::new(area.x, area.y, 0, 0);
        }
        let (cw, ch) = (f64::from(self.cell.0), f64::from(self.cell.1));
        let scale = (f64::from(area.width) * cw / f64::from(width))
            .min(f64::from(area.height) * ch / f64::from(height));
        let cells = |px: u32, cell: f64, room: u16| {
            ((f64::from(px) * scale / cell).round() as u16).clamp(1, room)
        };
        let w = cells(width, cw, area.width);
        let h = cells(height, ch, area.height);
        Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        )
    }

    /// The picture ready to be drawn (and re-encoded when its area changes).
    pub fn protocol(&self, image: image::DynamicImage) -> StatefulProtocol {
        let source = ImageSource::new(image, self.cell, image::Rgba([0, 0, 0, 0]));
        let kind = match self.kind {
            Kind::Halfblocks => StatefulProtocolType::Halfblocks(Halfblocks::default()),
            Kind::Sixel => StatefulProtocolType::Sixel(Sixel::default()),
            Kind::Kitty => StatefulProtocolType::Kitty(StatefulKitty::new(kitty_id(), self.tmux)),
            Kind::Iterm2 => StatefulProtocolType::ITerm2(Iterm2 {
                is_tmux: self.tmux,
                ..Iterm2::default()
            }),
        };
        StatefulProtocol::new(source, self.cell, kind)
    }
}

/// Kitty keeps images by id; each picture gets its own, distinct across processes.
fn kitty_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id() << 12 ^ n) | 1 << 24
}

/// The protocol for `want` given what the terminal (and tmux) said.
pub fn choose(want: ImageProtocol, probe: &Probe) -> Option<Graphics> {
    let tmux = probe.tmux.as_ref();
    let has_sixel_attr = probe
        .replies
        .device_attributes
        .as_ref()
        .is_some_and(|a| a.iter().skip(1).any(|&x| x == 4));
    // In tmux the device attributes are tmux's own: 4 means tmux draws sixel, and it shows them
    // only where its client terminal can.
    let sixel = !probe.shaky_env
        && has_sixel_attr
        && tmux.is_none_or(|t| t.features.split(',').any(|f| f == "sixel"));
    let kitty = !probe.shaky_env
        && match tmux {
            Some(t) => ["kitty", "ghostty"]
                .iter()
                .any(|k| t.terminal.to_lowercase().contains(k)),
            None => probe.replies.kitty,
        };
    let iterm = probe.iterm_env
        || tmux.is_some_and(|t| {
            let term = t.terminal.to_lowercase();
            term.contains("iterm") || term.contains("wezterm")
        });
    let kind = match want {
        ImageProtocol::Off => return None,
        ImageProtocol::Halfblocks => Kind::Halfblocks,
        ImageProtocol::Kitty => Kind::Kitty,
        ImageProtocol::Iterm2 => Kind::Iterm2,
        ImageProtocol::Sixel if tmux.is_some() && !sixel => {
            tracing::warn!("this tmux does not draw sixel and sixel cannot pass through tmux; pictures use halfblocks");
            Kind::Halfblocks
        }
        ImageProtocol::Sixel => Kind::Sixel,
        ImageProtocol::Auto if kitty => Kind::Kitty,
        ImageProtocol::Auto if sixel => Kind::Sixel,
        ImageProtocol::Auto if iterm => Kind::Iterm2,
        ImageProtocol::Auto => Kind::Halfblocks,
    };
    let cell = tmux
        .and_then(|t| t.cell)
        .or(probe.replies.cell)
        .or(probe.winsize_cell)
        .unwrap_or(DEFAULT_CELL);
    Some(Graphics {
        kind,
        cell,
        tmux: tmux.is_some(),
    })
}

/// Queries the terminal (in raw mode, before the event stream reads stdin) and picks the
/// protocol. Returns the events typed while the query ran, to be handled first.
pub fn detect(want: ImageProtocol) -> (Option<Graphics>, Vec<crossterm::event::Event>) {
    if want == ImageProtocol::Off {
        return (None, Vec::new());
    }
    let in_tmux = std::env::var_os("TMUX").is_some_and(|v| !v.is_empty());
    let tmux = in_tmux.then(ask_tmux);
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let term_program = env("TERM_PROGRAM");
    let iterm_env = [
        "iTerm", "WezTerm", "mintty", "vscode", "Tabby", "Hyper", "rio",
    ]
    .iter()
    .any(|t| term_program.contains(t))
        || env("LC_TERMINAL").contains("iTerm");
    let shaky_env = !env("WEZTERM_EXECUTABLE").is_empty() || !env("KONSOLE_VERSION").is_empty();
    let (replies, typed) = query(in_tmux);
    let probe = Probe {
        tmux,
        replies,
        winsize_cell: winsize_cell(),
        iterm_env,
        shaky_env,
    };
    let chosen = choose(want, &probe);
    tracing::info!(?chosen, ?probe, typed = typed.len(), "picture protocol");
    if let Some(g) = chosen.filter(|g| g.tmux && matches!(g.kind, Kind::Kitty | Kind::Iterm2)) {
        tracing::debug!(kind = ?g.kind, "allowing tmux passthrough for this pane");
        let _ = std::process::Command::new("tmux")
            .args(["set", "-p", "allow-passthrough", "on"])
            .output();
    }
    (chosen, typed)
}

fn ask_tmux() -> TmuxClient {
    let fmt = "#{client_cell_width}|#{client_cell_height}|#{client_termfeatures}|#{client_termname} #{client_termtype}";
    let out = std::process::Command::new("tmux")
        .args(["display-message", "-p", fmt])
        .stdin(std::process::Stdio::null())
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut parts = text.splitn(4, '|');
    let mut num = || parts.next().and_then(|s| s.parse::<u16>().ok());
    let (w, h) = (num(), num());
    let features = parts.next().unwrap_or_default().to_string();
    let terminal = parts.next().unwrap_or_default().to_string();
    TmuxClient {
        cell: w.zip(h).filter(|&(w, h)| w > 0 && h > 0),
        features,
        terminal,
    }
}

#[cfg(unix)]
fn winsize_cell() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a plain struct; a failure leaves it zeroed and is checked below.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0 && ws.ws_xpixel > 0 && ws.ws_ypixel > 0)
        .then(|| (ws.ws_xpixel / ws.ws_col, ws.ws_ypixel / ws.ws_row))
        .filter(|&(w, h)| w > 0 && h > 0)
}

#[cfg(not(unix))]
fn winsize_cell() -> Option<(u16, u16)> {
    None
}

/// Sends the questions and reads until the status report (answered last, by every terminal and
/// by tmux itself) or [`QUERY_TIMEOUT`]. No thread is left reading stdin afterwards.
#[cfg(unix)]
fn query(in_tmux: bool) -> (Replies, Vec<crossterm::event::Event>) {
    use std::io::Write;
    use std::time::Instant;
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 0 {
        return (Replies::default(), Vec::new());
    }
    let mut ask = String::new();
    if !in_tmux {
        // A passthrough answer could arrive after tmux's own status report and be read as
        // keys, so kitty support in tmux comes from tmux's description of the terminal instead.
        ask.push_str("\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\");
    }
    ask.push_str("\x1b[16t\x1b[c\x1b[5n");
    let mut out = std::io::stdout();
    if out
        .write_all(ask.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return (Replies::default(), Vec::new());
    }
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(left) = QUERY_TIMEOUT.checked_sub(start.elapsed()) {
        let mut fd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().max(1) as libc::c_int;
        // SAFETY: one valid pollfd; read writes at most buf.len() bytes into buf.
        if unsafe { libc::poll(&mut fd, 1, ms) } <= 0 {
            break;
        }
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n as usize]);
        if early_input::split(&bytes).0.status {
            break;
        }
    }
    tracing::debug!(ms = start.elapsed().as_millis() as u64, "terminal query");
    early_input::split(&bytes)
}

#[cfg(not(unix))]
fn query(_in_tmux: bool) -> (Replies, Vec<crossterm::event::Event>) {
    (Replies::default(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(attrs: &[u16], kitty: bool) -> Replies {
        Replies {
            device_attributes: Some(attrs.to_vec()),
            cell: Some((9, 18)),
            kitty,
            status: true,
        }
    }

    #[test]
    fn outside_tmux_the_answers_decide() {
        let p = Probe {
            replies: replies(&[62, 4], true),
            ..Probe::default()
        };
        let g = choose(ImageProtocol::Auto, &p).unwrap();
        assert_eq!((g.kind, g.cell, g.tmux), (Kind::Kitty, (9, 18), false));
        let p = Probe {
            replies: replies(&[62, 4], false),
            ..Probe::default()
        };
        assert_eq!(choose(ImageProtocol::Auto, &p).unwrap().kind, Kind::Sixel);
        let p = Probe {
            replies: replies(&[62, 22], false),
            ..Probe::default()
        };
        assert_eq!(
            choose(ImageProtocol::Auto, &p).unwrap().kind,
            Kind::Halfblocks
        );
        assert_eq!(choose(ImageProtocol::Off, &p), None);
    }

    #[test]
    fn in_tmux_sixel_only_from_tmux_itself_and_kitty_from_its_client() {
        let client = |features: &str, terminal: &str| TmuxClient {
            cell: Some((8, 16)),
            features: features.into(),
            terminal: terminal.into(),
        };
        let probe = |attrs: &[u16], c: TmuxClient| Probe {
            tmux: Some(c),
            replies: replies(attrs, false),
            ..Probe::default()
        };
        // tmux with sixel, attached to a sixel terminal: tmux's own sixel, tmux's cell size.
        let g = choose(
            ImageProtocol::Auto,
            &probe(&[1, 2, 4], client("RGB,sixel", "foot")),
        )
        .unwrap();
        assert_eq!((g.kind, g.cell), (Kind::Sixel, (8, 16)));
        // tmux without sixel: even a forced sixel is refused.
        let p = probe(&[1, 2], client("RGB,sixel", "foot"));
        assert_eq!(
            choose(ImageProtocol::Sixel, &p).unwrap().kind,
            Kind::Halfblocks
        );
        assert_eq!(
            choose(ImageProtocol::Auto, &p).unwrap().kind,
            Kind::Halfblocks
        );
        // kitty outside: placeholders, wrapped for passthrough.
        let g = choose(
            ImageProtocol::Auto,
            &probe(&[1, 2], client("RGB", "xterm-kitty")),
        )
        .unwrap();
        assert_eq!((g.kind, g.tmux), (Kind::Kitty, true));
    }

    #[test]
    fn pictures_fill_the_pane_with_their_ratio() {
        let g = Graphics::halfblocks();
        let area = Rect::new(10, 5, 62, 37);
        for size in [(64, 64), (512, 512)] {
            let r = g.fit(size, area);
            // A square at 10×20 px cells: twice as many columns as rows, one side full.
            assert_eq!((r.width, r.height), (62, 31), "{size:?}");
            assert_eq!(r.x, 10);
            assert_eq!(r.y, 5 + 3);
        }
        let wide = g.fit((768, 512), Rect::new(0, 0, 30, 13));
        assert_eq!(wide.width, 30);
        assert_eq!(wide.height, 10);
    }
}
