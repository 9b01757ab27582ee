//! The slice of the prompt language the TUI needs: highlight tokens, LoRA tags with their strengths,
//! the first error with its span, and a printer that rewrites one tag in place.
//! A stand-in until `crate::prompt` lands; the editor, browser and schedule editor only use this surface.

use std::fmt::Write as _;
use std::ops::Range;

/// A strength that is constant or follows a curve over the steps (`value@position`, positions ≤ 1
/// are fractions of the run, larger ones absolute steps; linear in between, held outside).
#[derive(Debug, Clone, PartialEq)]
pub enum Strength {
    Const(f32),
    /// `(value, position)` pairs, positions non-decreasing.
    Schedule(Vec<(f32, f32)>),
}

impl Strength {
    /// The strength at `step` (0-based) of `steps`.
    pub fn at(&self, step: u32, steps: u32) -> f32 {
        match self {
            Strength::Const(v) => *v,
            Strength::Schedule(points) => {
                let x = step as f32;
                let pos = |p: f32| {
                    if p <= 1.0 {
                        p * steps.saturating_sub(1).max(1) as f32
                    } else {
                        p
                    }
                };
                let Some(first) = points.first() else {
                    return 1.0;
                };
                if x <= pos(first.1) {
                    return first.0;
                }
                for w in points.windows(2) {
                    let (a, b) = (pos(w[0].1), pos(w[1].1));
                    if x <= b {
                        if b - a <= f32::EPSILON {
                            return w[1].0;
                        }
                        let t = (x - a) / (b - a);
                        return w[0].0 + t * (w[1].0 - w[0].0);
                    }
                }
                points.last().map_or(1.0, |p| p.0)
            }
        }
    }

    /// The curve's points; a constant reads as a flat line from the first to the last step.
    pub fn points(&self) -> Vec<(f32, f32)> {
        match self {
            Strength::Const(v) => vec![(*v, 0.0), (*v, 1.0)],
            Strength::Schedule(p) => p.clone(),
        }
    }

    /// Back from points: one point, or all values equal, is a constant.
    pub fn from_points(points: Vec<(f32, f32)>) -> Strength {
        match points.first() {
            None => Strength::Const(1.0),
            Some(first)
                if points.iter().all(|p| (p.0 - first.0).abs() < 1e-6) && points.len() <= 2 =>
            {
                Strength::Const(first.0)
            }
            Some(_) => Strength::Schedule(points),
        }
    }
}

/// The parts of the network a tag's strength can address separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Te,
    Unet,
    In,
    Mid,
    Out,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Te,
        Component::Unet,
        Component::In,
        Component::Mid,
        Component::Out,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Component::Te => "te",
            Component::Unet => "unet",
            Component::In => "in",
            Component::Mid => "mid",
            Component::Out => "out",
        }
    }
}

/// One `<lora:...>` tag as written in the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    /// The whole tag, `<` to `>` inclusive.
    pub span: Range<usize>,
    pub te: Strength,
    pub unet: Strength,
    /// Block strengths; unset means "same as unet".
    pub in_: Option<Strength>,
    pub mid: Option<Strength>,
    pub out: Option<Strength>,
    /// Keys the TUI does not edit but must print back (`dyn`).
    pub extra: Vec<(String, String)>,
}

impl LoraTag {
    /// The effective strength of a component and whether the tag sets it explicitly.
    pub fn get(&self, c: Component) -> (Strength, bool) {
        let block = |s: &Option<Strength>| match s {
            Some(s) => (s.clone(), true),
            None => (self.unet.clone(), false),
        };
        match c {
            Component::Te => (self.te.clone(), true),
            Component::Unet => (self.unet.clone(), true),
            Component::In => block(&self.in_),
            Component::Mid => block(&self.mid),
            Component::Out => block(&self.out),
        }
    }

    pub fn set(&mut self, c: Component, s: Strength) {
        match c {
            Component::Te => self.te = s,
            Component::Unet => self.unet = s,
            Component::In => self.in_ = Some(s),
            Component::Mid => self.mid = Some(s),
            Component::Out => self.out = Some(s),
        }
    }

    /// The tag in canonical form, loractl-compatible where the tag allows it.
    pub fn print(&self) -> String {
        let mut s = format!("<lora:{}", self.name);
        if self.te == self.unet {
            let _ = write!(s, ":{}", fmt_strength(&self.unet));
        } else {
            let _ = write!(
                s,
                ":te={}:unet={}",
                fmt_strength(&self.te),
                fmt_strength(&self.unet)
            );
        }
        for (key, v) in [("in", &self.in_), ("mid", &self.mid), ("out", &self.out)] {
            if let Some(v) = v {
                let _ = write!(s, ":{key}={}", fmt_strength(v));
            }
        }
        for (k, v) in &self.extra {
            let _ = write!(s, ":{k}={v}");
        }
        s.push('>');
        s
    }
}

/// Numbers as people write them: `1`, `0.75`, `-0.5`.
pub fn fmt_num(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

pub fn fmt_strength(s: &Strength) -> String {
    match s {
        Strength::Const(v) => fmt_num(*v),
        Strength::Schedule(p) => p
            .iter()
            .map(|(v, at)| format!("{}@{}", fmt_num(*v), fmt_num(*at)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// What each byte range of the prompt is, for highlighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    LoraTag,
    LoraName,
    LoraValue,
    Emphasis,
    Weight,
    Break,
    Escape,
}

/// A problem in the prompt, with the byte span it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct LangError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// Everything the editor needs from one parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub tokens: Vec<(Range<usize>, Token)>,
    pub tags: Vec<LoraTag>,
    pub error: Option<LangError>,
}

impl Analysis {
    /// The tag whose span contains (or touches) byte `at`.
    pub fn tag_at(&self, at: usize) -> Option<usize> {
        self.tags
            .iter()
            .position(|t| t.span.start <= at && at <= t.span.end)
    }
}

fn err(span: Range<usize>, message: impl Into<String>, hint: Option<&str>) -> LangError {
    LangError {
        span,
        message: message.into(),
        hint: hint.map(Into::into),
    }
}

/// Tokenizes and parses `text`. Never fails: errors are reported in the analysis.
pub fn analyze(text: &str) -> Analysis {
    let mut a = Analysis::default();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut depth: Vec<usize> = Vec::new();
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                let next = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                a.tokens.push((i..i + 1 + next, Token::Escape));
                i += 1 + next;
            }
            b'<' if text[i..].starts_with("<lora:") || text[i..].starts_with("<lyco:") => {
                let rest = &text[i..];
                let stop = rest
                    .find(['>', '\n'])
                    .filter(|&e| rest.as_bytes()[e] == b'>');
                let inner_open = rest[1..].find('<').map(|p| p + 1);
                match stop {
                    Some(e) if inner_open.is_none_or(|o| o > e) => {
                        match parse_tag(text, i, i + e + 1) {
                            Ok((tag, toks)) => {
                                a.tokens.push((tag.span.clone(), Token::LoraTag));
                                a.tokens.extend(toks);
                                a.tags.push(tag);
                            }
                            Err(e2) => {
                                a.tokens.push((i..i + e + 1, Token::LoraTag));
                                a.error.get_or_insert(e2);
                            }
                        }
                        i += e + 1;
                    }
                    _ => {
                        let end = rest.find('\n').map_or(text.len(), |n| i + n);
                        a.error.get_or_insert(err(
                            i..end,
                            "this LoRA tag is not closed",
                            Some("end it with `>`, e.g. <lora:name:0.8>"),
                        ));
                        a.tokens.push((i..end, Token::LoraTag));
                        i = end;
                    }
                }
            }
            b'(' | b'[' => {
                depth.push(i);
                a.tokens.push((i..i + 1, Token::Emphasis));
                i += 1;
            }
            b')' | b']' => {
                depth.pop();
                a.tokens.push((i..i + 1, Token::Emphasis));
                i += 1;
            }
            b':' if !depth.is_empty() => {
                let num_len = text[i + 1..]
                    .bytes()
                    .take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b'-' || *b == b' ')
                    .count();
                let after = i + 1 + num_len;
                if num_len > 0 && text[after..].starts_with(')') {
                    if text[i + 1..after].trim().parse::<f32>().is_err() {
                        a.error.get_or_insert(err(
                            i + 1..after,
                            "emphasis weight is not a number",
                            Some("write it like (word:1.2)"),
                        ));
                    }
                    a.tokens.push((i..after, Token::Weight));
                    i = after;
                } else {
                    i += 1;
                }
            }
            b'B' if text[i..].starts_with("BREAK")
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                && !bytes.get(i + 5).is_some_and(u8::is_ascii_alphanumeric) =>
            {
                a.tokens.push((i..i + 5, Token::Break));
                i += 5;
            }
            _ => i += text[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    a
}

type TagParse = (LoraTag, Vec<(Range<usize>, Token)>);

fn parse_tag(text: &str, start: usize, end: usize) -> Result<TagParse, LangError> {
    // `<lora:` is 6 bytes, the closing `>` one.
    let inner_start = start + 6;
    let inner = &text[inner_start..end - 1];
    let mut toks = Vec::new();
    let mut fields = Vec::new();
    let mut off = inner_start;
    for f in inner.split(':') {
        fields.push((off..off + f.len(), f));
        off += f.len() + 1;
    }
    let (name_span, name) = fields[0].clone();
    if name.trim().is_empty() {
        return Err(err(
            start..end,
            "the LoRA tag has no adapter name",
            Some("<lora:name:0.8>"),
        ));
    }
    toks.push((name_span, Token::LoraName));
    let mut tag = LoraTag {
        name: name.to_string(),
        span: start..end,
        te: Strength::Const(1.0),
        unet: Strength::Const(1.0),
        in_: None,
        mid: None,
        out: None,
        extra: Vec::new(),
    };
    let mut positional = 0;
    for (span, f) in fields.into_iter().skip(1) {
        toks.push((span.clone(), Token::LoraValue));
        if let Some((k, v)) = f.split_once('=') {
            let vspan = span.start + k.len() + 1..span.end;
            match k.trim() {
                "dyn" => {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| err(vspan, "`dyn` takes a whole number", None))?;
                    tag.extra.push(("dyn".into(), v.trim().into()));
                }
                key => {
                    let c = Component::ALL
                        .into_iter()
                        .find(|c| c.key() == key)
                        .ok_or_else(|| {
                            err(
                                span.start..span.start + k.len(),
                                format!("unknown key `{key}`"),
                                Some("known keys: te, unet, in, mid, out, dyn"),
                            )
                        })?;
                    tag.set(c, parse_strength(v, vspan)?);
                }
            }
        } else {
            match positional {
                0 => {
                    let s = parse_strength(f, span)?;
                    tag.te = s.clone();
                    tag.unet = s;
                }
                1 => tag.unet = parse_strength(f, span)?,
                _ => {
                    return Err(err(
                        span,
                        "too many values in the LoRA tag",
                        Some("name them: te=, unet=, in=, mid=, out="),
                    ))
                }
            }
            positional += 1;
        }
    }
    Ok((tag, toks))
}

fn parse_strength(s: &str, span: Range<usize>) -> Result<Strength, LangError> {
    let num = |t: &str, sp: Range<usize>| {
        t.trim()
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                err(
                    sp,
                    format!("`{}` is not a number", t.trim()),
                    Some("e.g. 0.8 or 0@0,1@0.5"),
                )
            })
    };
    if !s.contains('@') && !s.contains(',') {
        return num(s, span).map(Strength::Const);
    }
    let mut points = Vec::new();
    let mut off = span.start;
    for item in s.split(',') {
        let sp = off..off + item.len();
        off += item.len() + 1;
        let (v, at) = item.split_once('@').ok_or_else(|| {
            err(
                sp.clone(),
                "a schedule point needs a position",
                Some("write value@position, e.g. 0.5@0.3"),
            )
        })?;
        let value = num(v, sp.start..sp.start + v.len())?;
        let pos = num(at, sp.start + v.len() + 1..sp.end)?;
        if pos < 0.0 || points.last().is_some_and(|&(_, p): &(f32, f32)| pos < p) {
            return Err(err(sp, "schedule positions must not go backwards", None));
        }
        points.push((value, pos));
    }
    Ok(Strength::Schedule(points))
}

/// If the cursor is inside `<lora:NAME` (still typing the name), the range of the name so far.
pub fn completion_at(text: &str, cursor: usize) -> Option<Range<usize>> {
    let before = text.get(..cursor)?;
    let open = before.rfind("<lora:")?;
    let start = open + 6;
    let typed = &before[start..];
    if typed.contains([':', '>', '<', '\n']) {
        return None;
    }
    Some(start..cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_through_the_printer() {
        let a = analyze("a fox <lora:ink:0.8> BREAK (red:1.2)");
        assert!(a.error.is_none(), "{:?}", a.error);
        assert_eq!(a.tags[0].print(), "<lora:ink:0.8>");
        assert!(a.tokens.iter().any(|t| t.1 == Token::Break));
        assert!(a.tokens.iter().any(|t| t.1 == Token::Weight));
        let b = analyze("<lora:x:te=0.5:unet=0@0,1@0.5:dyn=4>");
        assert_eq!(b.tags[0].print(), "<lora:x:te=0.5:unet=0@0,1@0.5:dyn=4>");
    }

    #[test]
    fn errors_point_at_their_span() {
        let text = "x <lora:ink:foo=1>";
        let e = analyze(text).error.unwrap();
        assert_eq!(&text[e.span], "foo");
        let e = analyze("x <lora:ink:0.8").error.unwrap();
        assert_eq!(e.span, 2..15);
        let text = "<lora:a:1@0.5,2@0.1>";
        assert!(analyze(text).error.is_some());
    }

    #[test]
    fn schedules_interpolate_and_hold() {
        let s = Strength::Schedule(vec![(0.0, 0.0), (1.0, 0.5)]);
        assert_eq!(s.at(0, 11), 0.0);
        assert!((s.at(5, 11) - 1.0).abs() < 1e-6);
        assert_eq!(s.at(10, 11), 1.0);
    }

    #[test]
    fn completion_only_while_typing_a_name() {
        assert_eq!(completion_at("a <lora:in", 10), Some(8..10));
        assert_eq!(completion_at("a <lora:ink:1", 13), None);
    }
}
