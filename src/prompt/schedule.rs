//! Strengths that may change over the sampling steps: [`Strength`] (a constant or a schedule of
//! `value@position` points), [`Position`] (fraction of the run or 1-based step number), their parser
//! and `Display` (which prints what the parser reads back). Semantics are documented in `mod.rs`.

use std::fmt;
use std::ops::Range;

use super::error::PromptError;

/// Where a schedule point sits in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Position {
    /// 0.0 = the first step, 1.0 = the last step.
    Fraction(f32),
    /// 1-based step number: 1 = the first step.
    Step(u32),
}

/// A strength: constant, or linearly interpolated between points (held before the first point and
/// after the last). Points are in non-decreasing position order and all of one [`Position`] kind;
/// [`Strength::schedule`] checks this for values built outside the parser.
#[derive(Debug, Clone, PartialEq)]
pub enum Strength {
    Const(f32),
    Schedule(Vec<(f32, Position)>),
}

impl Default for Strength {
    fn default() -> Self {
        Strength::Const(1.0)
    }
}

impl Strength {
    /// A checked schedule: at least one point, finite values, one position kind, non-decreasing
    /// positions, fractions in 0..=1, step numbers ≥ 1, and at least one step > 1 (otherwise the
    /// text form would read back as fractions).
    pub fn schedule(points: Vec<(f32, Position)>) -> Result<Strength, String> {
        if points.is_empty() {
            return Err("a schedule needs at least one point".into());
        }
        let steps = points
            .iter()
            .filter(|(_, p)| matches!(p, Position::Step(_)))
            .count();
        if steps != 0 && steps != points.len() {
            return Err("a schedule mixes fractions and step numbers".into());
        }
        let mut last = f32::NEG_INFINITY;
        for (v, p) in &points {
            if !v.is_finite() {
                return Err(format!("value {v} is not finite"));
            }
            let x = match *p {
                Position::Fraction(f) if (0.0..=1.0).contains(&f) => f,
                Position::Fraction(f) => return Err(format!("fraction {f} is outside 0..1")),
                Position::Step(0) => return Err("steps are numbered from 1".into()),
                Position::Step(s) => s as f32,
            };
            if x < last {
                return Err("positions must not decrease".into());
            }
            last = x;
        }
        if steps != 0 && last <= 1.0 {
            return Err("a step schedule needs a step after step 1".into());
        }
        Ok(Strength::Schedule(points))
    }

    /// The strength at 0-based `step` of a run of `steps` steps.
    ///
    /// Fractions map step `i` to `i / (steps - 1)` (so 0 is the first step and 1 the last; a
    /// one-step run sits at 0). Step numbers compare with `i + 1`.
    pub fn at(&self, step: usize, steps: usize) -> f32 {
        let points = match self {
            Strength::Const(v) => return *v,
            Strength::Schedule(p) => p,
        };
        let x = |p: Position| -> f64 {
            match p {
                Position::Fraction(f) => f64::from(f),
                Position::Step(s) => f64::from(s),
            }
        };
        let now = match points.first().map(|p| p.1) {
            Some(Position::Step(_)) => step as f64 + 1.0,
            _ if steps <= 1 => 0.0,
            _ => step as f64 / (steps - 1) as f64,
        };
        let Some(&(first_v, first_p)) = points.first() else {
            return 1.0;
        };
        if now < x(first_p) {
            return first_v;
        }
        // The last point at or before `now` wins, so repeated positions make a jump.
        let i = points.iter().rposition(|&(_, p)| x(p) <= now).unwrap_or(0);
        let (v0, p0) = points[i];
        match points.get(i + 1) {
            None => v0,
            Some(&(v1, p1)) => {
                let (x0, x1) = (x(p0), x(p1));
                let t = if x1 > x0 { (now - x0) / (x1 - x0) } else { 1.0 };
                (f64::from(v0) + (f64::from(v1) - f64::from(v0)) * t) as f32
            }
        }
    }

    /// True when the value changes over the run (a schedule whose points all hold one value is not).
    pub fn is_scheduled(&self) -> bool {
        match self {
            Strength::Const(_) => false,
            Strength::Schedule(p) => p.windows(2).any(|w| w[0].0 != w[1].0),
        }
    }

    /// True when the strength is 0 at every step.
    pub fn is_zero(&self) -> bool {
        match self {
            Strength::Const(v) => *v == 0.0,
            Strength::Schedule(p) => p.iter().all(|(v, _)| *v == 0.0),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Fraction(x) => write!(f, "{x}"),
            Position::Step(s) => write!(f, "{s}"),
        }
    }
}

/// Prints the shortest text that parses back to the same value (`1`, `0.5`, `0.1@1,0.6@6`).
impl fmt::Display for Strength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strength::Const(v) => write!(f, "{v}"),
            Strength::Schedule(points) => {
                for (i, (v, p)) in points.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}@{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// A finite decimal number: optional sign, digits with an optional fraction, optional exponent.
/// Stricter than `f32::from_str`, which also takes `inf`, `NaN` and `infinity`.
pub(crate) fn parse_number(s: &str, span: Range<usize>) -> Result<f32, PromptError> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let mantissa = body.split(['e', 'E']).next().unwrap_or("");
    let shape_ok = !mantissa.is_empty()
        && mantissa.chars().any(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    match s.parse::<f32>() {
        Ok(v) if shape_ok && v.is_finite() => Ok(v),
        Ok(_) if shape_ok => Err(PromptError::new(span, format!("`{s}` is out of range"))),
        _ => {
            let hint = if s.contains(',') && !s.contains('.') {
                "use `.` as the decimal point (`,` separates schedule points)"
            } else if s.is_empty() {
                "write a number such as 0.8"
            } else {
                "write a number such as 0.8 or -1.5"
            };
            let what = if s.is_empty() {
                "expected a number here".to_string()
            } else {
                format!("`{s}` is not a number")
            };
            Err(PromptError::new(span, what).with_hint(hint))
        }
    }
}

/// Parses a strength value written at byte `offset` of the prompt: a number, or a schedule
/// `V@P,V@P,...` (`;` may replace `,`, and `~` may replace `@`, as in SD.Next).
pub(crate) fn parse_strength(value: &str, offset: usize) -> Result<Strength, PromptError> {
    let whole = offset..offset + value.len();
    let is_schedule = value.contains(['@', '~', ',', ';']);
    if !is_schedule {
        return parse_number(value, whole).map(Strength::Const);
    }
    // Parse every point first; how positions read depends on all of them.
    let mut raw: Vec<(f32, f32, Range<usize>, bool)> = Vec::new();
    let mut start = 0;
    for part in value.split([',', ';']) {
        let span = offset + start..offset + start + part.len();
        start += part.len() + 1;
        let trimmed = part.trim();
        let lead = part.len() - part.trim_start().len();
        let tspan = span.start + lead..span.start + lead + trimmed.len();
        if trimmed.is_empty() {
            return Err(PromptError::new(span, "empty schedule point")
                .with_hint("points are `value@position` separated by `,` or `;`"));
        }
        let Some(at) = trimmed.find(['@', '~']) else {
            return Err(PromptError::new(tspan, format!("schedule point `{trimmed}` has no position"))
                .with_hint(format!("write `{trimmed}@POSITION`, e.g. `{trimmed}@0.5` (half-way) or `{trimmed}@10` (step 10)")));
        };
        let (v, p) = (trimmed[..at].trim_end(), trimmed[at + 1..].trim_start());
        let v_span = tspan.start..tspan.start + v.len();
        let p_span = tspan.end - p.len()..tspan.end;
        let value = parse_number(v, v_span)?;
        let pos = parse_number(p, p_span.clone())?;
        if pos < 0.0 {
            return Err(
                PromptError::new(p_span, "a position cannot be negative").with_hint(
                    "positions are fractions of the run (0..1) or step numbers (1, 2, ...)",
                ),
            );
        }
        let whole_number = pos.fract() == 0.0;
        raw.push((value, pos, p_span, whole_number));
    }
    let counts_steps = raw.iter().any(|r| r.1 > 1.0);
    let mut points = Vec::with_capacity(raw.len());
    let mut last: Option<f32> = None;
    for (value, pos, p_span, whole_number) in raw {
        let position = if counts_steps {
            if !whole_number || pos < 1.0 {
                return Err(PromptError::new(
                    p_span,
                    format!("position `{pos}` is not a step number, but this schedule counts steps"),
                )
                .with_hint(
                    "a schedule with a position above 1 counts steps (1, 2, ...); write every position as a step \
                     number, or every position as a fraction of the run between 0 and 1",
                ));
            }
            if pos > u32::MAX as f32 {
                return Err(PromptError::new(p_span, "step number too large"));
            }
            Position::Step(pos as u32)
        } else {
            Position::Fraction(pos)
        };
        if let Some(prev) = last {
            if pos < prev {
                return Err(PromptError::new(
                    p_span,
                    format!("position `{pos}` comes after position `{prev}`; positions must not decrease"),
                )
                .with_hint("list the points in the order they happen"));
            }
        }
        last = Some(pos);
        points.push((value, position));
    }
    Ok(Strength::Schedule(points))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Result<Strength, PromptError> {
        parse_strength(v, 0)
    }

    #[test]
    fn plain_numbers() {
        assert_eq!(s("0.5").unwrap(), Strength::Const(0.5));
        assert_eq!(s("-1").unwrap(), Strength::Const(-1.0));
        assert_eq!(s(".25").unwrap(), Strength::Const(0.25));
        assert_eq!(s("1e-1").unwrap(), Strength::Const(0.1));
        for bad in [
            "", "abc", "inf", "NaN", "infinity", "1.2.3", "0x10", "--1", "1e99",
        ] {
            assert!(s(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn doc_example_counts_steps() {
        // SD.Next docs: te=0.1@1,0.6@6 — 0.1 at step 1 ramping to 0.6 at step 6, held after.
        let st = s("0.1@1,0.6@6").unwrap();
        assert_eq!(
            st,
            Strength::Schedule(vec![(0.1, Position::Step(1)), (0.6, Position::Step(6))])
        );
        let at = |i| st.at(i, 20);
        assert!((at(0) - 0.1).abs() < 1e-6); // step 1
        assert!((at(1) - 0.2).abs() < 1e-6); // step 2: 0.1 + 0.5 * 1/5
        assert!((at(3) - 0.4).abs() < 1e-6); // step 4
        assert!((at(5) - 0.6).abs() < 1e-6); // step 6
        assert!((at(19) - 0.6).abs() < 1e-6); // held
        assert!(st.is_scheduled());
    }

    #[test]
    fn fractions_span_first_to_last_step() {
        // 1 at the start, 0 half-way, held at 0 after. SD.Next's "1~0,0~0.5" spelling.
        let st = s("1~0;0~0.5").unwrap();
        assert_eq!(
            st,
            Strength::Schedule(vec![
                (1.0, Position::Fraction(0.0)),
                (0.0, Position::Fraction(0.5))
            ])
        );
        // 11 steps: step i sits at i/10.
        assert!((st.at(0, 11) - 1.0).abs() < 1e-6);
        assert!((st.at(2, 11) - 0.6).abs() < 1e-6);
        assert!((st.at(5, 11) - 0.0).abs() < 1e-6);
        assert!((st.at(10, 11) - 0.0).abs() < 1e-6);
        // One-step run sits at the start.
        assert!((st.at(0, 1) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn position_one_alone_is_the_end_of_the_run() {
        let st = s("0@0,1@1").unwrap();
        assert_eq!(st.at(9, 10), 1.0);
        assert!((st.at(3, 10) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn held_before_first_point_and_jumps_at_repeated_positions() {
        let st = s("0.2@5,0.8@5,1@10").unwrap();
        assert_eq!(st.at(0, 20), 0.2); // step 1, before the first point
        assert_eq!(st.at(4, 20), 0.8); // step 5: the later point wins
        assert!((st.at(6, 20) - 0.88).abs() < 1e-6); // step 7: 0.8 + 0.2 * 2/5
    }

    #[test]
    fn malformed_schedules_point_at_the_culprit() {
        let e = s("0.1@1,0.6").unwrap_err();
        assert_eq!(e.span, 6..9);
        assert!(e.message.contains("no position"));
        let e = s("0.1@0.5,0.6@6").unwrap_err();
        assert_eq!(e.span, 4..7, "{e:?}");
        let e = s("0.1@6,0.6@2").unwrap_err();
        assert_eq!(e.span, 10..11);
        let e = s("0.1@1,").unwrap_err();
        assert_eq!(e.span, 6..6);
        let e = s("0.1@-1").unwrap_err();
        assert_eq!(e.span, 4..6);
        let e = s("x@1,1@2").unwrap_err();
        assert_eq!(e.span, 0..1);
        let e = s("0.1@0,1@10").unwrap_err();
        assert_eq!(e.span, 4..5, "step 0 does not exist");
    }

    #[test]
    fn display_round_trips() {
        for text in ["0.1@1,0.6@6", "1@0,0@0.5", "-0.25", "1", "0.5@0.3"] {
            let st = s(text).unwrap();
            assert_eq!(s(&st.to_string()).unwrap(), st, "{text}");
        }
        assert_eq!(s("1 ~ 0 ; 0~0.5").unwrap().to_string(), "1@0,0@0.5");
    }

    #[test]
    fn schedule_constructor_checks_invariants() {
        use Position::*;
        assert!(Strength::schedule(vec![(1.0, Step(1)), (0.0, Fraction(0.5))]).is_err());
        assert!(Strength::schedule(vec![(1.0, Step(3)), (0.0, Step(2))]).is_err());
        assert!(Strength::schedule(vec![(1.0, Step(1))]).is_err());
        assert!(Strength::schedule(vec![(1.0, Fraction(1.5))]).is_err());
        assert!(Strength::schedule(vec![(1.0, Step(1)), (0.0, Step(4))]).is_ok());
        let flat = Strength::schedule(vec![(0.5, Fraction(0.0)), (0.5, Fraction(1.0))]).unwrap();
        assert!(!flat.is_scheduled());
    }
}
