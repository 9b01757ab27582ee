//! A multi-line text buffer with a byte cursor, word-wrapped layout and undo/redo.
//! Knows nothing about prompts: the prompt component adds highlighting, history and completion.

use std::ops::Range;
use unicode_width::UnicodeWidthChar;

#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    text: String,
    cursor: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EditKind {
    Other,
    Typing,
}

#[derive(Debug, Clone)]
pub struct TextBuffer {
    text: String,
    cursor: usize,
    undo: Vec<Snapshot>,
    redo: Vec<Snapshot>,
    last: EditKind,
    /// First visible visual row; kept in view by the renderer.
    pub scroll: usize,
}

const UNDO_LIMIT: usize = 200;

impl TextBuffer {
    pub fn new(text: &str) -> TextBuffer {
        TextBuffer {
            text: text.to_string(),
            cursor: text.len(),
            undo: Vec::new(),
            redo: Vec::new(),
            last: EditKind::Other,
            scroll: 0,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn set_cursor(&mut self, at: usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        self.cursor = at;
        self.last = EditKind::Other;
    }

    /// Saves an undo step, except in the middle of a run of typed characters (one word = one step).
    fn checkpoint(&mut self, kind: EditKind) {
        if kind == EditKind::Other || self.last != EditKind::Typing {
            self.undo.push(Snapshot {
                text: self.text.clone(),
                cursor: self.cursor,
            });
            if self.undo.len() > UNDO_LIMIT {
                self.undo.remove(0);
            }
        }
        self.redo.clear();
        self.last = kind;
    }

    /// Replaces the whole text as one undoable step, cursor at the end.
    pub fn set_text(&mut self, text: &str) {
        if text == self.text {
            return;
        }
        self.checkpoint(EditKind::Other);
        self.text = text.to_string();
        self.cursor = self.text.len();
    }

    /// Replaces `range` by `with` as one undoable step; the cursor lands after the new text.
    pub fn replace(&mut self, range: Range<usize>, with: &str) {
        if range.end > self.text.len()
            || !self.text.is_char_boundary(range.start)
            || !self.text.is_char_boundary(range.end)
        {
            return;
        }
        self.checkpoint(EditKind::Other);
        self.text.replace_range(range.clone(), with);
        self.cursor = range.start + with.len();
    }

    /// Like [`replace`](Self::replace) but keeps the cursor where it was (shifted if after the edit).
    pub fn replace_keep_cursor(&mut self, range: Range<usize>, with: &str) {
        let old = self.cursor;
        let delta = with.len() as isize - range.len() as isize;
        let end = range.end;
        self.replace(range, with);
        let c = if old >= end {
            (old as isize + delta).max(0) as usize
        } else {
            old
        };
        self.set_cursor(c);
    }

    pub fn insert_char(&mut self, c: char) {
        let kind = if c.is_whitespace() {
            EditKind::Other
        } else {
            EditKind::Typing
        };
        self.checkpoint(kind);
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    /// Inserts pasted text as one step; CR LF and lone CR become LF, tabs become spaces.
    pub fn insert_str(&mut self, s: &str) {
        let clean = s
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\t', " ");
        let clean: String = clean
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .collect();
        if clean.is_empty() {
            return;
        }
        self.checkpoint(EditKind::Other);
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    fn prev_boundary(&self, at: usize) -> usize {
        self.text[..at]
            .char_indices()
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, at: usize) -> usize {
        self.text[at..]
            .chars()
            .next()
            .map_or(at, |c| at + c.len_utf8())
    }

    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            let start = self.prev_boundary(self.cursor);
            self.replace(start..self.cursor, "");
        }
    }

    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            let end = self.next_boundary(self.cursor);
            self.replace(self.cursor..end, "");
        }
    }

    pub fn left(&mut self) {
        let c = self.prev_boundary(self.cursor);
        self.set_cursor(c);
    }

    pub fn right(&mut self) {
        let c = self.next_boundary(self.cursor);
        self.set_cursor(c);
    }

    fn word_start_before(&self, at: usize) -> usize {
        let before = &self.text[..at];
        let trimmed = before.trim_end_matches(|c: char| !c.is_alphanumeric());
        trimmed
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_alphanumeric())
            .map_or(0, |(i, c)| i + c.len_utf8())
    }

    pub fn word_left(&mut self) {
        let c = self.word_start_before(self.cursor);
        self.set_cursor(c);
    }

    pub fn word_right(&mut self) {
        let after = &self.text[self.cursor..];
        let skip = after
            .find(|c: char| c.is_alphanumeric())
            .unwrap_or(after.len());
        let rest = &after[skip..];
        let word = rest
            .find(|c: char| !c.is_alphanumeric())
            .unwrap_or(rest.len());
        let c = self.cursor + skip + word;
        self.set_cursor(c);
    }

    fn line_bounds(&self) -> Range<usize> {
        let start = self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i);
        start..end
    }

    pub fn line_start(&mut self) {
        let c = self.line_bounds().start;
        self.set_cursor(c);
    }

    pub fn line_end(&mut self) {
        let c = self.line_bounds().end;
        self.set_cursor(c);
    }

    pub fn delete_word(&mut self) {
        let start = self.word_start_before(self.cursor);
        if start < self.cursor {
            self.replace(start..self.cursor, "");
        }
    }

    pub fn kill_to_end(&mut self) {
        let end = self.line_bounds().end;
        let end = if end == self.cursor {
            self.next_boundary(end)
        } else {
            end
        };
        if end > self.cursor {
            self.replace(self.cursor..end, "");
        }
    }

    pub fn kill_to_start(&mut self) {
        let start = self.line_bounds().start;
        if start < self.cursor {
            self.replace(start..self.cursor, "");
        }
    }

    pub fn undo(&mut self) -> bool {
        match self.undo.pop() {
            Some(s) => {
                self.redo.push(Snapshot {
                    text: std::mem::replace(&mut self.text, s.text),
                    cursor: self.cursor,
                });
                self.cursor = s.cursor;
                self.last = EditKind::Other;
                true
            }
            None => false,
        }
    }

    pub fn redo(&mut self) -> bool {
        match self.redo.pop() {
            Some(s) => {
                self.undo.push(Snapshot {
                    text: std::mem::replace(&mut self.text, s.text),
                    cursor: self.cursor,
                });
                self.cursor = s.cursor;
                self.last = EditKind::Other;
                true
            }
            None => false,
        }
    }

    /// Moves one visual row up at `width`; false when already on the first row.
    pub fn up(&mut self, width: u16) -> bool {
        self.vertical(width, -1)
    }

    /// Moves one visual row down at `width`; false when already on the last row.
    pub fn down(&mut self, width: u16) -> bool {
        self.vertical(width, 1)
    }

    fn vertical(&mut self, width: u16, dir: isize) -> bool {
        let rows = layout(&self.text, width);
        let row = cursor_row(&rows, self.cursor);
        let target = row as isize + dir;
        if target < 0 || target as usize >= rows.len() {
            return false;
        }
        let col = display_width(&self.text[rows[row].start..self.cursor]);
        let t = &rows[target as usize];
        let mut at = t.start;
        let mut w = 0;
        for (i, c) in self.text[t.clone()].char_indices() {
            let cw = c.width().unwrap_or(0);
            if w + cw > col {
                break;
            }
            w += cw;
            at = t.start + i + c.len_utf8();
        }
        self.set_cursor(at);
        true
    }
}

pub fn display_width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Splits `text` into visual rows of at most `width` columns, breaking after spaces where possible.
/// Rows are byte ranges without the newline.
pub fn layout(text: &str, width: u16) -> Vec<Range<usize>> {
    let width = usize::from(width.max(2));
    let mut rows = Vec::new();
    let mut line_start = 0;
    for line in text.split('\n') {
        let base = line_start;
        let mut row_start = 0;
        let mut acc = 0;
        let mut last_space: Option<usize> = None;
        for (i, c) in line.char_indices() {
            let w = c.width().unwrap_or(0);
            if acc + w > width && i > row_start {
                let brk = last_space
                    .filter(|&s| s + 1 > row_start && s + 1 < i + 1)
                    .map_or(i, |s| s + 1);
                rows.push(base + row_start..base + brk);
                row_start = brk;
                acc = display_width(&line[row_start..i]);
                last_space = None;
            }
            if c == ' ' {
                last_space = Some(i);
            }
            acc += w;
        }
        rows.push(base + row_start..base + line.len());
        line_start += line.len() + 1;
    }
    rows
}

/// The visual row holding the cursor: at a wrap point the cursor belongs to the next row.
pub fn cursor_row(rows: &[Range<usize>], cursor: usize) -> usize {
    let mut found = 0;
    for (i, r) in rows.iter().enumerate() {
        if r.start <= cursor && cursor <= r.end {
            found = i;
            if cursor < r.end {
                break;
            }
        } else if r.start > cursor {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_a_word_is_one_undo_step() {
        let mut b = TextBuffer::new("");
        for c in "red fox".chars() {
            b.insert_char(c);
        }
        assert_eq!(b.text(), "red fox");
        b.undo();
        assert_eq!(b.text(), "red ");
        b.undo();
        assert_eq!(b.text(), "red");
        b.redo();
        assert_eq!(b.text(), "red ");
    }

    #[test]
    fn wraps_after_spaces_and_moves_by_rows() {
        let rows = layout("aaa bbb ccc", 8);
        assert_eq!(rows, vec![0..8, 8..11]);
        let mut b = TextBuffer::new("aaa bbb ccc");
        b.set_cursor(9);
        assert!(b.up(8));
        assert_eq!(b.cursor(), 1);
        assert!(!b.up(8));
        let rows = layout("ab\n\ncd", 10);
        assert_eq!(rows, vec![0..2, 3..3, 4..6]);
    }

    #[test]
    fn paste_normalises_line_ends() {
        let mut b = TextBuffer::new("");
        b.insert_str("a\r\nb\tc\x07");
        assert_eq!(b.text(), "a\nb c");
    }
}
