//! A1111 prompt editing and composable prompts: `[from:to:when]`, `[to:when]`, `[from::when]`,
//! alternation `[a|b]` and `AND` parts with weights, read from the tag-free text as A1111's
//! `prompt_parser` reads them. [`Editing`] holds the parts; [`Editing::schedule`] gives the text
//! per step as `(until_step, text)` segments, like A1111's `get_learned_conditioning_prompt_schedules`.

use super::emphasis::{attention, Fragment};
use super::error::{PromptError, PromptWarning};

/// Characters of the tag-free prompt text, each with its byte offset in the original text.
pub(crate) type Chars = Vec<(usize, char)>;

/// The text of a prompt that uses prompt editing, alternation or `AND`.
#[derive(Debug, Clone, PartialEq)]
pub struct Editing {
    /// The `AND` parts, in order (one when there is no `AND`).
    pub parts: Vec<Part>,
}

/// One `AND` part: its nodes and its weight (`a cat :1.2 AND ...`; 1 when not written).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub weight: f64,
    pub nodes: Vec<Node>,
}

/// A piece of a part's text.
#[derive(Debug, Clone)]
pub enum Node {
    /// Text as written (emphasis brackets and escapes included; the emphasis parser reads them
    /// after the edits are chosen), with each char's byte offset in the original prompt.
    Text(Chars),
    /// `[from:to:when]`: `from` up to step `when`, `to` after it.
    Edit {
        from: Vec<Node>,
        to: Vec<Node>,
        when: When,
        /// Byte offset of its `[` in the original prompt.
        at: usize,
    },
    /// `[a|b|...]`: option `(step - 1) % n` at each step; `usize` is the offset of its `[`.
    Alt(Vec<Vec<Node>>, usize),
}

/// Equality is of meaning: the chars' offsets are not compared.
impl PartialEq for Node {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Node::Text(a), Node::Text(b)) => unescape_lt(a) == unescape_lt(b),
            (
                Node::Edit { from, to, when, .. },
                Node::Edit {
                    from: f,
                    to: t,
                    when: w,
                    ..
                },
            ) => from == f && to == t && when == w,
            (Node::Alt(a, _), Node::Alt(b, _)) => a == b,
            _ => false,
        }
    }
}

/// The text with `\\<` read as `<`: the same to the emphasis parser (a kept `<` is never a tag
/// here), and the printer writes every `<` escaped so that no tag forms where one was taken out.
fn unescape_lt(chars: &[(usize, char)]) -> String {
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        match chars.get(i + 1).map(|n| n.1) {
            Some(n) if c == '\\' => {
                if n != '<' {
                    out.push(c);
                }
                out.push(n);
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// When an edit switches, as written. A1111's rules: a number with a `.` is a fraction of the
/// steps (`0.5` → step `int(0.5 × steps)`, so `1.0` and above is the last step), one without is a
/// step number; the edit shows `from` at steps ≤ that step. A step below 1 shows `to` throughout.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    pub written: String,
    pub value: f64,
}

impl When {
    /// The last step (1-based) that shows `from`, at most `steps`; below 1 when none does.
    pub fn last_from_step(&self, steps: usize) -> i64 {
        let v = if self.written.contains('.') {
            self.value * steps as f64
        } else {
            self.value
        };
        let t = v.trunc();
        if t >= steps as f64 {
            steps as i64
        } else {
            // Saturating: a huge negative number is still "before every step".
            t as i64
        }
    }
}

/// One run of steps with the same text: steps up to `until_step` (1-based, inclusive) after the
/// previous segment's.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub until_step: usize,
    /// The text the emphasis parser reads, with each char's offset in the original prompt.
    pub chars: Chars,
}

impl Segment {
    pub fn text(&self) -> String {
        self.chars.iter().map(|c| c.1).collect()
    }
}

/// The 1-based steps `from..=until` of a run use `segment`'s text.
pub struct Run {
    pub from: usize,
    pub until: usize,
    pub segment: Segment,
}

impl Editing {
    /// Per part: its weight and its text per step over a run of `steps` steps (A1111's
    /// `get_learned_conditioning_prompt_schedules`, identical on its examples).
    pub fn schedule(&self, steps: usize) -> Vec<(f64, Vec<Segment>)> {
        self.parts
            .iter()
            .map(|p| (p.weight, p.schedule(steps)))
            .collect()
    }

    /// [`schedule`](Self::schedule) with each segment's first step.
    pub fn runs(&self, steps: usize) -> Vec<(f64, Vec<Run>)> {
        self.schedule(steps)
            .into_iter()
            .map(|(weight, segments)| {
                let mut from = 1;
                let runs = segments
                    .into_iter()
                    .map(|segment| {
                        let run = Run {
                            from,
                            until: segment.until_step,
                            segment,
                        };
                        from = run.until + 1;
                        run
                    })
                    .collect();
                (weight, runs)
            })
            .collect()
    }
}

impl Part {
    fn schedule(&self, steps: usize) -> Vec<Segment> {
        let mut at = vec![steps];
        switch_steps(&self.nodes, steps, &mut at);
        at.sort_unstable();
        at.dedup();
        at.into_iter()
            .map(|t| {
                let mut chars = Vec::new();
                render(
                    &self.nodes,
                    t,
                    &|w: &When| w.last_from_step(steps),
                    &mut chars,
                );
                Segment {
                    until_step: t,
                    chars,
                }
            })
            .collect()
    }

    /// The text with every edit at `from` (`at_from`) or at `to`, and every alternation at option
    /// `pick` (modulo its length): the texts the parse checks for emphasis errors.
    pub(crate) fn render_choice(&self, at_from: bool, pick: usize) -> Chars {
        let mut chars = Vec::new();
        let last = if at_from { i64::MAX } else { i64::MIN };
        render(&self.nodes, pick + 1, &|_: &When| last, &mut chars);
        chars
    }

    /// The most options of any alternation in the part (1 without one).
    pub(crate) fn widest_alternation(&self) -> usize {
        fn walk(nodes: &[Node]) -> usize {
            nodes
                .iter()
                .map(|n| match n {
                    Node::Text(_) => 1,
                    Node::Edit { from, to, .. } => walk(from).max(walk(to)),
                    Node::Alt(opts, _) => opts
                        .iter()
                        .map(|o| walk(o))
                        .max()
                        .unwrap_or(1)
                        .max(opts.len()),
                })
                .max()
                .unwrap_or(1)
        }
        walk(&self.nodes)
    }
}

/// Every step at which some text ends (A1111's `collect_steps`): each edit's last `from` step
/// when it is at least 1, and every step when there is an alternation.
fn switch_steps(nodes: &[Node], steps: usize, out: &mut Vec<usize>) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Edit { from, to, when, .. } => {
                let t = when.last_from_step(steps);
                if t >= 1 {
                    out.push(t as usize);
                }
                switch_steps(from, steps, out);
                switch_steps(to, steps, out);
            }
            Node::Alt(options, _) => {
                out.extend(1..=steps);
                for o in options {
                    switch_steps(o, steps, out);
                }
            }
        }
    }
}

/// The text at 1-based `step`, given each edit's last `from` step.
fn render(nodes: &[Node], step: usize, last_from: &dyn Fn(&When) -> i64, out: &mut Chars) {
    for n in nodes {
        match n {
            Node::Text(chars) => out.extend_from_slice(chars),
            Node::Edit { from, to, when, .. } => {
                let pick = if (step as i64) <= last_from(when) {
                    from
                } else {
                    to
                };
                render(pick, step, last_from, out);
            }
            Node::Alt(options, _) => {
                let o = &options[(step.max(1) - 1) % options.len()];
                render(o, step, last_from, out);
            }
        }
    }
}

/// The editing of the tag-free text `kept` (outer whitespace ignored): `None` for a prompt with no
/// `AND`, no edit and no alternation, which reads as before. Without `split_and` (the negative
/// prompt, which A1111 never splits) `AND` and a trailing `:WEIGHT` are text.
pub(crate) fn read(
    src: &str,
    kept: &[(usize, char)],
    split_and: bool,
) -> Result<Option<Editing>, PromptError> {
    let mut a = 0;
    let mut b = kept.len();
    while a < b && kept[a].1.is_whitespace() {
        a += 1;
    }
    while b > a && kept[b - 1].1.is_whitespace() {
        b -= 1;
    }
    let kept = &kept[a..b];
    let split = if split_and {
        self::split_and(kept)
    } else {
        None
    };
    let parts = match split {
        Some(texts) => texts
            .into_iter()
            .map(|whole| {
                let (t, weight) = part_weight(whole);
                // `:` and 309 digits read as infinity, which would print as `:inf` and scale the
                // part's CFG term to infinity: refused rather than run.
                if !weight.is_finite() {
                    let span = match (whole.first(), whole.last()) {
                        (Some(a), Some(b)) => a.0..b.0 + b.1.len_utf8(),
                        _ => 0..src.len(),
                    };
                    return Err(PromptError::new(
                        span,
                        format!("the weight of this `AND` part is too large ({weight})"),
                    )
                    .with_hint("write a weight such as `:1.5`"));
                }
                Ok(Part {
                    weight,
                    nodes: read_part(t, src.len())?,
                })
            })
            .collect::<Result<Vec<_>, PromptError>>()?,
        None => {
            let nodes = read_part(kept, src.len())?;
            if nodes.iter().all(|n| matches!(n, Node::Text(_))) {
                return Ok(None);
            }
            vec![Part { weight: 1.0, nodes }]
        }
    };
    Ok(Some(Editing { parts }))
}

impl Editing {
    /// Checks every part's emphasis at each edit's `from` and `to` and each alternation option,
    /// and returns the first part's fragments at step 1 (with its warnings).
    pub(crate) fn first_fragments(
        &self,
        src: &str,
        warnings: &mut Vec<PromptWarning>,
    ) -> Result<Vec<Fragment>, PromptError> {
        for part in &self.parts {
            for at_from in [true, false] {
                for pick in 0..part.widest_alternation() {
                    attention(src, &part.render_choice(at_from, pick), &mut Vec::new())?;
                }
            }
        }
        match self.parts.first() {
            Some(p) => attention(src, &p.render_choice(true, 0), warnings),
            None => Ok(Vec::new()),
        }
    }
}

impl Segment {
    /// The emphasis fragments of this segment's text (`src` is the original prompt, for spans).
    pub fn fragments(&self, src: &str) -> Result<Vec<Fragment>, PromptError> {
        attention(src, &self.chars, &mut Vec::new())
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits the tag-free text at each `AND` standing as a word (A1111's `\bAND\b`, anywhere, even
/// inside brackets). `None` when there is none.
pub(crate) fn split_and(chars: &[(usize, char)]) -> Option<Vec<&[(usize, char)]>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= chars.len() {
        let word = chars[i].1 == 'A' && chars[i + 1].1 == 'N' && chars[i + 2].1 == 'D';
        let before = i == 0 || !is_word(chars[i - 1].1);
        let after = chars.get(i + 3).is_none_or(|c| !is_word(c.1));
        if word && before && after {
            parts.push(&chars[start..i]);
            start = i + 3;
            i += 3;
        } else {
            i += 1;
        }
    }
    if parts.is_empty() {
        return None;
    }
    parts.push(&chars[start..]);
    Some(parts)
}

/// A part's text and weight as A1111's `re_weight` reads them: a trailing `:NUMBER` (digits with
/// at most one `.`, an optional sign) is the weight; whitespace before it and at the end goes.
pub(crate) fn part_weight(chars: &[(usize, char)]) -> (&[(usize, char)], f64) {
    let mut end = chars.len();
    while end > 0 && chars[end - 1].1.is_whitespace() {
        end -= 1;
    }
    let body = &chars[..end];
    let mut k = end;
    while k > 0 && (chars[k - 1].1.is_ascii_digit() || chars[k - 1].1 == '.') {
        k -= 1;
    }
    let number: String = chars[k..end].iter().map(|c| c.1).collect();
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let dots = number.len() - digits;
    if digits == 0 || dots > 1 {
        return (body, 1.0);
    }
    let mut s = k;
    if s > 0 && matches!(chars[s - 1].1, '+' | '-') {
        s -= 1;
    }
    let signed: String = chars[s..end].iter().map(|c| c.1).collect();
    let mut c = s;
    while c > 0 && chars[c - 1].1.is_whitespace() {
        c -= 1;
    }
    if c == 0 || chars[c - 1].1 != ':' {
        return (body, 1.0);
    }
    let mut t = c - 1;
    while t > 0 && chars[t - 1].1.is_whitespace() {
        t -= 1;
    }
    match signed.parse::<f64>() {
        Ok(w) => (&chars[..t], w),
        Err(_) => (body, 1.0),
    }
}

/// True when `chars` ends as a part weight would (`x :1.5`): such text needs its weight printed.
pub(crate) fn ends_like_weight(chars: &[(usize, char)]) -> bool {
    part_weight(chars).0.len() != chars.len()
}

/// Why A1111's grammar would fail on a part: a `|` outside an alternation, or a `\` with nothing
/// after it on its line. A1111 then ignores every edit of the part, so an edit here is an error.
struct Refusal {
    at: usize,
    what: &'static str,
}

/// The part's nodes; `Err` when a part has edits that A1111 would ignore.
pub(crate) fn read_part(chars: &[(usize, char)], src_len: usize) -> Result<Vec<Node>, PromptError> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut refusal: Option<Refusal> = None;
    let mut edits = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        match c {
            '\\' => {
                if chars.get(i + 1).is_none_or(|n| n.1 == '\n') {
                    refusal = refusal.or(Some(Refusal {
                        at: i,
                        what: "a `\\` that escapes nothing",
                    }));
                }
                let end = (i + 2).min(chars.len());
                push_text(&mut nodes, &chars[i..end]);
                i = end;
            }
            '[' => match bracket(chars, i, 0) {
                Some((Bracket::Edit(node), next)) => {
                    nodes.push(node);
                    edits = true;
                    i = next;
                }
                Some((Bracket::Square(inner), next)) => {
                    edits |= inner.iter().any(|n| !matches!(n, Node::Text(_)));
                    push_text(&mut nodes, &chars[i..i + 1]);
                    push_nodes(&mut nodes, inner);
                    push_text(&mut nodes, &chars[next - 1..next]);
                    i = next;
                }
                None => {
                    push_text(&mut nodes, &chars[i..i + 1]);
                    i += 1;
                }
            },
            '|' => {
                refusal = refusal.or(Some(Refusal {
                    at: i,
                    what: "a `|` outside `[a|b]`",
                }));
                push_text(&mut nodes, &chars[i..i + 1]);
                i += 1;
            }
            _ => {
                push_text(&mut nodes, &chars[i..i + 1]);
                i += 1;
            }
        }
    }
    match refusal {
        Some(r) if edits => {
            let (o, ch) = chars[r.at];
            let end = (o + ch.len_utf8()).min(src_len);
            Err(PromptError::new(
                o..end,
                format!(
                    "{} makes A1111 ignore every prompt edit and alternation of this part",
                    r.what
                ),
            )
            .with_hint(if ch == '|' {
                "write `\\|` for a literal bar, or put the alternatives in `[a|b]`"
            } else {
                "write `\\\\` for a literal backslash"
            }))
        }
        _ => Ok(nodes),
    }
}

/// Appends text, merging with a text node before it.
fn push_text(nodes: &mut Vec<Node>, chars: &[(usize, char)]) {
    if let Some(Node::Text(t)) = nodes.last_mut() {
        t.extend_from_slice(chars);
    } else {
        nodes.push(Node::Text(chars.to_vec()));
    }
}

fn push_nodes(nodes: &mut Vec<Node>, more: Vec<Node>) {
    for n in more {
        match n {
            Node::Text(t) => push_text(nodes, &t),
            other => nodes.push(other),
        }
    }
}

/// How deep brackets nest inside an edit before the edit is read as plain text: bounds the
/// recursion (and the work) on hostile input; real prompts nest a few levels.
const MAX_NESTING: usize = 32;

/// What a `[` starts: an edit or alternation, or A1111's `[text]` emphasis (its inner nodes).
enum Bracket {
    Edit(Node),
    Square(Vec<Node>),
}

/// The grammar's `prompt` from `i`: text, emphasis and nested edits, up to (not including) the
/// first top-level `:`, `|`, `]`, `)` or the end. `None` when something inside is not well formed.
fn sequence(chars: &[(usize, char)], mut i: usize, depth: usize) -> Option<(Vec<Node>, usize)> {
    if depth > MAX_NESTING {
        return None;
    }
    let mut nodes = Vec::new();
    while i < chars.len() {
        match chars[i].1 {
            ':' | '|' | ']' | ')' => break,
            '\\' => {
                if chars.get(i + 1).is_none_or(|n| n.1 == '\n') {
                    return None;
                }
                push_text(&mut nodes, &chars[i..i + 2]);
                i += 2;
            }
            '(' => {
                let (inner, k) = sequence(chars, i + 1, depth + 1)?;
                push_text(&mut nodes, &chars[i..i + 1]);
                push_nodes(&mut nodes, inner);
                let k = match chars.get(k)?.1 {
                    ')' => k,
                    ':' => {
                        push_text(&mut nodes, &chars[k..k + 1]);
                        let (weight, m) = sequence(chars, k + 1, depth + 1)?;
                        push_nodes(&mut nodes, weight);
                        (chars.get(m)?.1 == ')').then_some(m)?
                    }
                    _ => return None,
                };
                push_text(&mut nodes, &chars[k..k + 1]);
                i = k + 1;
            }
            '[' => {
                let (b, next) = bracket(chars, i, depth + 1)?;
                match b {
                    Bracket::Edit(node) => nodes.push(node),
                    Bracket::Square(inner) => {
                        push_text(&mut nodes, &chars[i..i + 1]);
                        push_nodes(&mut nodes, inner);
                        push_text(&mut nodes, &chars[next - 1..next]);
                    }
                }
                i = next;
            }
            _ => {
                push_text(&mut nodes, &chars[i..i + 1]);
                i += 1;
            }
        }
    }
    Some((nodes, i))
}

/// What the `[` at `i` starts, and the index after its `]`; its inside is read once.
fn bracket(chars: &[(usize, char)], i: usize, depth: usize) -> Option<(Bracket, usize)> {
    let (first, k) = sequence(chars, i + 1, depth)?;
    let at = chars[i].0;
    match chars.get(k)?.1 {
        ']' => Some((Bracket::Square(first), k + 1)),
        ':' => {
            if let Some((when, end)) = when_then_close(chars, k + 1) {
                let node = Node::Edit {
                    from: Vec::new(),
                    to: first,
                    when,
                    at,
                };
                return Some((Bracket::Edit(node), end));
            }
            let (second, m) = sequence(chars, k + 1, depth)?;
            (chars.get(m)?.1 == ':').then_some(())?;
            let (when, end) = when_then_close(chars, m + 1)?;
            let node = Node::Edit {
                from: first,
                to: second,
                when,
                at,
            };
            Some((Bracket::Edit(node), end))
        }
        '|' => {
            let mut options = vec![first];
            let mut k = k;
            loop {
                match chars.get(k)?.1 {
                    '|' => {
                        let (next, m) = sequence(chars, k + 1, depth)?;
                        options.push(next);
                        k = m;
                    }
                    ']' => return Some((Bracket::Edit(Node::Alt(options, at)), k + 1)),
                    _ => return None,
                }
            }
        }
        _ => None,
    }
}

/// `[WHITESPACE] NUMBER [WHITESPACE] ]` from `i` (lark's `SIGNED_NUMBER`: a sign, digits with an
/// optional `.` and fraction or a `.` and digits, an optional exponent); the index after `]`.
fn when_then_close(chars: &[(usize, char)], mut i: usize) -> Option<(When, usize)> {
    let at = |k: usize| chars.get(k).map(|c| c.1);
    let digits = |mut k: usize| {
        let from = k;
        while at(k).is_some_and(|c| c.is_ascii_digit()) {
            k += 1;
        }
        (k, k - from)
    };
    while at(i).is_some_and(char::is_whitespace) {
        i += 1;
    }
    let start = i;
    if matches!(at(i), Some('+' | '-')) {
        i += 1;
    }
    let (k, whole) = digits(i);
    i = k;
    let mut frac = 0;
    if at(i) == Some('.') {
        let (k, n) = digits(i + 1);
        frac = n;
        i = k;
    }
    if whole == 0 && frac == 0 {
        return None;
    }
    if matches!(at(i), Some('e' | 'E')) {
        let mut k = i + 1;
        if matches!(at(k), Some('+' | '-')) {
            k += 1;
        }
        let (k, n) = digits(k);
        if n > 0 {
            i = k;
        }
    }
    let written: String = chars[start..i].iter().map(|c| c.1).collect();
    while at(i).is_some_and(char::is_whitespace) {
        i += 1;
    }
    (at(i)? == ']').then_some(())?;
    let value: f64 = written.parse().ok()?;
    Some((When { written, value }, i + 1))
}

/// The part as text: nodes as written, edits as `[from:to:when]` (`[to:when]` with no `from`).
pub(crate) fn print_nodes(nodes: &[Node], out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(chars) => {
                let mut i = 0;
                while i < chars.len() {
                    match chars[i].1 {
                        '\\' => {
                            out.extend(chars[i..(i + 2).min(chars.len())].iter().map(|c| c.1));
                            i += 2;
                            continue;
                        }
                        '<' => out.push_str("\\<"),
                        c => out.push(c),
                    }
                    i += 1;
                }
            }
            Node::Edit { from, to, when, .. } => {
                out.push('[');
                if !from.is_empty() {
                    print_nodes(from, out);
                    out.push(':');
                }
                print_nodes(to, out);
                out.push(':');
                out.push_str(&when.written);
                out.push(']');
            }
            Node::Alt(options, _) => {
                out.push('[');
                for (k, o) in options.iter().enumerate() {
                    if k > 0 {
                        out.push('|');
                    }
                    print_nodes(o, out);
                }
                out.push(']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Chars {
        s.char_indices().collect()
    }

    fn schedule(s: &str, steps: usize) -> Vec<(usize, String)> {
        let c = chars(s);
        let nodes = read_part(&c, s.len()).unwrap();
        Part { weight: 1.0, nodes }
            .schedule(steps)
            .into_iter()
            .map(|seg| (seg.until_step, seg.text()))
            .collect()
    }

    fn want(v: &[(usize, &str)]) -> Vec<(usize, String)> {
        v.iter().map(|(t, s)| (*t, s.to_string())).collect()
    }

    #[test]
    fn edits_switch_at_their_step() {
        assert_eq!(schedule("a [b:3]", 10), want(&[(3, "a "), (10, "a b")]));
        assert_eq!(schedule("a [b: 3 ]", 10), want(&[(3, "a "), (10, "a b")]));
        assert_eq!(
            schedule("a [b : c : 1] d", 10),
            want(&[(1, "a b  d"), (10, "a  c  d")])
        );
        assert_eq!(
            schedule("a[b:[c:d:2]:1]e", 10),
            want(&[(1, "abe"), (2, "ace"), (10, "ade")])
        );
        assert_eq!(schedule("a [b::0.5]", 4), want(&[(2, "a b"), (4, "a ")]));
        // A fraction needs a `.`; `1.0` is the last step, `1` the first.
        assert_eq!(schedule("[x:y:1.0]", 4), want(&[(4, "x")]));
        assert_eq!(schedule("[x:y:1]", 4), want(&[(1, "x"), (4, "y")]));
        assert_eq!(schedule("[x:y:0]", 4), want(&[(4, "y")]));
        assert_eq!(schedule("[x:y:-3]", 4), want(&[(4, "y")]));
    }

    #[test]
    fn alternation_cycles_per_step() {
        assert_eq!(
            schedule("[fe|]male", 4),
            want(&[(1, "female"), (2, "male"), (3, "female"), (4, "male")])
        );
        assert_eq!(
            schedule("[a|(b:1.1)|c]", 4),
            want(&[(1, "a"), (2, "(b:1.1)"), (3, "c"), (4, "a")])
        );
    }

    #[test]
    fn what_is_not_an_edit_stays_text() {
        assert_eq!(
            schedule("a [unbalanced", 10),
            want(&[(10, "a [unbalanced")])
        );
        assert_eq!(
            schedule("((a][:b:c [d:3]", 10),
            want(&[(3, "((a][:b:c "), (10, "((a][:b:c d")])
        );
        assert_eq!(schedule("[a:b:c]", 10), want(&[(10, "[a:b:c]")]));
        assert_eq!(schedule("a | b", 10), want(&[(10, "a | b")]));
    }

    #[test]
    fn a_bar_outside_alternation_with_edits_is_an_error() {
        let s = "a [b:c:2] | d";
        let e = read_part(&chars(s), s.len()).unwrap_err();
        assert_eq!(e.span, 10..11);
        assert!(
            e.message.contains("ignore every prompt edit"),
            "{}",
            e.message
        );
    }

    #[test]
    fn printing_reads_back_where_a_removed_tag_joined_text() {
        use crate::prompt::{parse, print};
        for text in [
            "[a|b]a<<lora:x>BREAK:",
            "a [b:c:0.5] AND x:y :2 AND  (z) :1",
            "[x::1e1] AND",
            "\\\\<[a:1]",
        ] {
            let p = parse(text).unwrap();
            assert!(p.editing.is_some(), "{text}");
            let printed = print(&p);
            assert_eq!(
                parse(&printed).unwrap(),
                p,
                "{text:?} printed as {printed:?}"
            );
        }
    }

    #[test]
    fn and_splits_and_weights_read_as_a1111() {
        let c = chars("a cat :1.2 AND a dog AND x:y ANDROID");
        let parts = split_and(&c).unwrap();
        assert_eq!(parts.len(), 3);
        let (t, w) = part_weight(parts[0]);
        assert_eq!(t.iter().map(|c| c.1).collect::<String>(), "a cat");
        assert_eq!(w, 1.2);
        let (t, w) = part_weight(parts[1]);
        assert_eq!(t.iter().map(|c| c.1).collect::<String>(), " a dog");
        assert_eq!(w, 1.0);
        let (t, _) = part_weight(parts[2]);
        assert_eq!(t.iter().map(|c| c.1).collect::<String>(), " x:y ANDROID");
        assert!(split_and(&chars("BRANDY and ANDY")).is_none());
        let c = chars("x: -.5 ");
        let (t, w) = part_weight(&c);
        assert_eq!((t.len(), w), (1, -0.5));
    }

    /// Found by the `prompt` fuzz target: 309 digits read as an infinite weight, which printed as
    /// `:inf` (text, not a weight) and would have scaled the part's CFG term to infinity.
    #[test]
    fn an_infinite_and_weight_is_refused() {
        let text = format!("a AND b :{}", "9".repeat(400));
        let e = crate::prompt::parse(&text).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
        assert_eq!(e.span, 5..text.len(), "the second part");
        assert!(crate::prompt::parse(&format!("a AND b :{}", "9".repeat(300))).is_ok());
    }
}
