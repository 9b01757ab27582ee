//! What the terminal sends while the picture protocol is queried: its answers ([`Replies`]) and
//! whatever the user typed meanwhile, decoded into key events so the event loop can replay them
//! ([`split`]). Only the common encodings (UTF-8 text, control keys, CSI/SS3 arrows and F-keys,
//! bracketed paste) are decoded; anything else is dropped with a log line.

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};

/// The answers to the query that [`crate::tui::graphics`] sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replies {
    /// Primary device attributes (`CSI ? … c`), e.g. `[62, 4]`; 4 means sixel.
    pub device_attributes: Option<Vec<u16>>,
    /// Cell size in pixels (width, height) from `CSI 6 ; h ; w t`.
    pub cell: Option<(u16, u16)>,
    /// The kitty graphics query was answered `OK`.
    pub kitty: bool,
    /// The device status report (`CSI 0 n`) came: every earlier answer is in.
    pub status: bool,
}

/// Separates the terminal's answers from typed input in `bytes`.
pub fn split(bytes: &[u8]) -> (Replies, Vec<Event>) {
    let mut replies = Replies::default();
    let mut events = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let used = match rest {
            [0x1b, b'[', ..] => csi(rest, &mut replies, &mut events),
            [0x1b, b'_', ..] => {
                // APC … ST: the kitty graphics answer.
                let end = find(rest, b"\x1b\\").map_or(rest.len(), |e| e + 2);
                let body = String::from_utf8_lossy(&rest[2..end.min(rest.len())]);
                if body.starts_with('G') && body.contains(";OK") {
                    replies.kitty = true;
                }
                end
            }
            [0x1b, b'O', f, ..] => {
                push(&mut events, letter_key(*f), KeyModifiers::NONE);
                3
            }
            [0x1b] => {
                push(&mut events, Some(KeyCode::Esc), KeyModifiers::NONE);
                1
            }
            [0x1b, ..] => {
                // Meta: Esc before a key.
                let (key, used) = plain(&rest[1..]);
                if let Some(KeyEvent {
                    code, modifiers, ..
                }) = key
                {
                    events.push(Event::Key(KeyEvent::new(
                        code,
                        modifiers | KeyModifiers::ALT,
                    )));
                }
                used + 1
            }
            _ => {
                let (key, used) = plain(rest);
                events.extend(key.map(Event::Key));
                used
            }
        };
        i += used.max(1);
    }
    (replies, events)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn push(events: &mut Vec<Event>, code: Option<KeyCode>, mods: KeyModifiers) {
    match code {
        Some(code) => events.push(Event::Key(KeyEvent::new(code, mods))),
        None => tracing::debug!("an unknown key arrived during the terminal query"),
    }
}

/// One key that is not an escape sequence; returns it and the bytes it used.
fn plain(bytes: &[u8]) -> (Option<KeyEvent>, usize) {
    let ctrl = |c: char| Some(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL));
    let none = |code| Some(KeyEvent::new(code, KeyModifiers::NONE));
    match bytes[0] {
        b'\r' | b'\n' => (none(KeyCode::Enter), 1),
        b'\t' => (none(KeyCode::Tab), 1),
        0x7f | 0x08 => (none(KeyCode::Backspace), 1),
        0 => (ctrl(' '), 1),
        b @ 1..=26 => (ctrl(char::from(b'a' + b - 1)), 1),
        b @ 27..=31 => (ctrl(char::from(b'4' + b - 28)), 1),
        b => {
            let len = match b {
                0xf0..=0xf7 => 4,
                0xe0..=0xef => 3,
                0xc0..=0xdf => 2,
                _ => 1,
            }
            .min(bytes.len());
            let key = std::str::from_utf8(&bytes[..len])
                .ok()
                .and_then(|s| s.chars().next())
                .and_then(|c| none(KeyCode::Char(c)));
            (key, len)
        }
    }
}

/// `CSI params final`: an answer, a key, or a bracketed paste. Returns the bytes used.
fn csi(bytes: &[u8], replies: &mut Replies, events: &mut Vec<Event>) -> usize {
    let Some(fin) = bytes[2..].iter().position(|b| (0x40..=0x7e).contains(b)) else {
        return bytes.len();
    };
    let end = fin + 3;
    let params = String::from_utf8_lossy(&bytes[2..end - 1]);
    let final_byte = bytes[end - 1];
    let nums: Vec<u16> = params
        .trim_start_matches('?')
        .split(';')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    match (final_byte, params.starts_with('?')) {
        (b'c', true) => replies.device_attributes = Some(nums),
        (b't', false) if nums.first() == Some(&6) && nums.len() == 3 => {
            replies.cell = Some((nums[2], nums[1])).filter(|&(w, h)| w > 0 && h > 0);
        }
        (b'n', false) if nums == [0] => replies.status = true,
        (b'R', false) => {} // a cursor position report
        (b'~', false) if nums.first() == Some(&200) => {
            let body = &bytes[end..];
            let stop = find(body, b"\x1b[201~").unwrap_or(body.len());
            events.push(Event::Paste(
                String::from_utf8_lossy(&body[..stop]).into_owned(),
            ));
            return end + (stop + 6).min(body.len());
        }
        (f, false) => {
            let mods = modifiers(nums.get(1).copied().unwrap_or(1));
            let code = match f {
                b'Z' => Some(KeyCode::BackTab),
                b'~' => tilde(nums.first().copied().unwrap_or(0)),
                f => letter_key(f),
            };
            let mods = if f == b'Z' {
                mods | KeyModifiers::SHIFT
            } else {
                mods
            };
            push(events, code, mods);
        }
        _ => {}
    }
    end
}

/// The key of a CSI or SS3 sequence ending in a letter (arrows, Home, End, F1–F4).
fn letter_key(f: u8) -> Option<KeyCode> {
    Some(match f {
        b'A' => KeyCode::Up,
        b'B' => KeyCode::Down,
        b'C' => KeyCode::Right,
        b'D' => KeyCode::Left,
        b'H' => KeyCode::Home,
        b'F' => KeyCode::End,
        b'P'..=b'S' => KeyCode::F(f - b'P' + 1),
        _ => return None,
    })
}

fn tilde(n: u16) -> Option<KeyCode> {
    Some(match n {
        1 | 7 => KeyCode::Home,
        2 => KeyCode::Insert,
        3 => KeyCode::Delete,
        4 | 8 => KeyCode::End,
        5 => KeyCode::PageUp,
        6 => KeyCode::PageDown,
        11..=15 => KeyCode::F((n - 10) as u8),
        17..=21 => KeyCode::F((n - 11) as u8),
        23 | 24 => KeyCode::F((n - 12) as u8),
        _ => return None,
    })
}

/// xterm's modifier parameter: 1 + (shift 1 | alt 2 | ctrl 4).
fn modifiers(p: u16) -> KeyModifiers {
    let bits = p.saturating_sub(1);
    let mut m = KeyModifiers::NONE;
    if bits & 1 != 0 {
        m |= KeyModifiers::SHIFT;
    }
    if bits & 2 != 0 {
        m |= KeyModifiers::ALT;
    }
    if bits & 4 != 0 {
        m |= KeyModifiers::CONTROL;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(events: &[Event]) -> Vec<(KeyCode, KeyModifiers)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Key(k) => Some((k.code, k.modifiers)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn answers_are_taken_out_and_typed_keys_kept_in_order() {
        let input = b"a\x1b[?62;4;22c\x1b_Gi=31;OK\x1b\\b\x1b[6;20;10t\xc3\xa9\x1b[0n\x11";
        let (r, ev) = split(input);
        assert_eq!(r.device_attributes, Some(vec![62, 4, 22]));
        assert_eq!(r.cell, Some((10, 20)));
        assert!(r.kitty && r.status);
        let none = KeyModifiers::NONE;
        assert_eq!(
            keys(&ev),
            vec![
                (KeyCode::Char('a'), none),
                (KeyCode::Char('b'), none),
                (KeyCode::Char('é'), none),
                (KeyCode::Char('q'), KeyModifiers::CONTROL),
            ]
        );
    }

    #[test]
    fn escape_sequences_become_keys() {
        let (r, ev) = split(b"\x1b[A\x1b[1;5C\x1b[15~\x1bOP\x1bz\x1b[Z\r\x7f\x1b");
        assert_eq!(r, Replies::default());
        let none = KeyModifiers::NONE;
        assert_eq!(
            keys(&ev),
            vec![
                (KeyCode::Up, none),
                (KeyCode::Right, KeyModifiers::CONTROL),
                (KeyCode::F(5), none),
                (KeyCode::F(1), none),
                (KeyCode::Char('z'), KeyModifiers::ALT),
                (KeyCode::BackTab, KeyModifiers::SHIFT),
                (KeyCode::Enter, none),
                (KeyCode::Backspace, none),
                (KeyCode::Esc, none),
            ]
        );
    }

    #[test]
    fn a_paste_stays_one_paste_and_a_failed_kitty_answer_is_not_ok() {
        let (r, ev) = split(b"\x1b[200~two\nlines\x1b[201~\x1b_Gi=31;ENOTSUPPORTED\x1b\\");
        assert!(!r.kitty);
        assert_eq!(ev, vec![Event::Paste("two\nlines".into())]);
    }
}
