//! Sweeps: a job template expanded over lists of values (seeds 1..8 × strengths 0, 0.5, 1).
//!
//! [`Axis::parse`] reads `NAME=VALUES` (`--sweep` on the command line) and [`Axis::from_json`] the
//! `sweep` object of a job line; [`expand`] gives the cross product of a template with its axes.

use serde_json::{Map, Value};

/// More jobs than this from one template is almost surely a typo (`1..100000000`).
pub const MAX_JOBS_PER_TEMPLATE: usize = 1_000_000;

/// Placeholders the output name template fills in per image; a sweep variable may not shadow them.
pub const RESERVED: [&str; 4] = ["hash", "index", "line", "item"];

/// Job fields an axis may set directly, without a `{name}` in the template.
pub const JOB_FIELDS: [&str; 12] = [
    "prompt", "negative", "sampler", "schedule", "steps", "cfg", "width", "height", "seed",
    "batch", "model", "out",
];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    #[error("sweep {0:?}: write NAME=VALUES, e.g. seed=1..8 or s=0,0.5,1")]
    NoEquals(String),
    #[error("sweep variable {0:?}: names are letters, digits and `_`, not starting with a digit")]
    BadName(String),
    #[error("sweep variable `{0}` is reserved for output names; pick another name")]
    Reserved(String),
    #[error("sweep `{name}`: {reason}")]
    BadValues { name: String, reason: String },
    #[error("sweep variable `{0}` is given twice")]
    Twice(String),
    #[error(
        "sweep variable `{0}` is not used: put {{{0}}} in a field (e.g. the prompt) or name a job field"
    )]
    Unused(String),
    #[error("the sweep makes more than {MAX_JOBS_PER_TEMPLATE} jobs")]
    TooMany,
}

/// One dimension of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub name: String,
    pub values: Vec<Value>,
}

impl Axis {
    /// `NAME=VALUES` where VALUES is `A..B` (whole numbers, inclusive), a comma list (`0,0.5,1`,
    /// `euler,ddim`) or a JSON array (for values that contain commas).
    pub fn parse(spec: &str) -> Result<Axis, SweepError> {
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| SweepError::NoEquals(spec.to_string()))?;
        let name = check_name(name.trim())?;
        let values = parse_values(&name, values.trim())?;
        Ok(Axis { name, values })
    }

    /// An entry of a job line's `sweep` object: an array, a string in the `VALUES` syntax, or one value.
    pub fn from_json(name: &str, value: &Value) -> Result<Axis, SweepError> {
        let name = check_name(name)?;
        let values = match value {
            Value::Array(a) => a.clone(),
            Value::String(s) => parse_values(&name, s)?,
            other => vec![other.clone()],
        };
        if values.is_empty() {
            return Err(bad(&name, "no values"));
        }
        Ok(Axis { name, values })
    }
}

fn bad(name: &str, reason: impl Into<String>) -> SweepError {
    SweepError::BadValues {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn check_name(name: &str) -> Result<String, SweepError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(SweepError::BadName(name.to_string()));
    }
    if RESERVED.contains(&name) {
        return Err(SweepError::Reserved(name.to_string()));
    }
    Ok(name.to_string())
}

fn parse_values(name: &str, text: &str) -> Result<Vec<Value>, SweepError> {
    if text.starts_with('[') {
        let v: Vec<Value> =
            serde_json::from_str(text).map_err(|e| bad(name, format!("not a JSON array: {e}")))?;
        if v.is_empty() {
            return Err(bad(name, "no values"));
        }
        return Ok(v);
    }
    if let Some((a, b)) = text.split_once("..") {
        let (a, b) = (a.trim(), b.trim());
        let parse = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| bad(name, format!("range {text:?}: {s:?} is not a whole number")))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if b < a {
            return Err(bad(
                name,
                format!("range {text:?} is empty (the end is inclusive)"),
            ));
        }
        if (b - a) as u128 >= MAX_JOBS_PER_TEMPLATE as u128 {
            return Err(SweepError::TooMany);
        }
        return Ok((a..=b).map(Value::from).collect());
    }
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.iter().any(|s| s.is_empty()) {
        return Err(bad(name, format!("{text:?} has an empty value")));
    }
    Ok(items
        .into_iter()
        .map(|s| match serde_json::from_str::<Value>(s) {
            Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
            _ => Value::String(s.to_string()),
        })
        .collect())
}

/// One job of an expanded sweep, with the values that made it (empty without a sweep).
#[derive(Debug, Clone, PartialEq)]
pub struct Expanded {
    pub fields: Map<String, Value>,
    pub vars: Vec<(String, Value)>,
}

/// The cross product of `template` with `axes`, first axis outermost. `{name}` in a string field is
/// replaced by the value's text (a field that is exactly `{name}` takes the value itself, number or
/// string); an axis named after a job field that no string mentions sets that field.
pub fn expand(template: &Map<String, Value>, axes: &[Axis]) -> Result<Vec<Expanded>, SweepError> {
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.name == a.name) {
            return Err(SweepError::Twice(a.name.clone()));
        }
        let mentioned = template.values().any(|v| {
            v.as_str()
                .is_some_and(|s| s.contains(&placeholder(&a.name)))
        });
        if !mentioned && !JOB_FIELDS.contains(&a.name.as_str()) {
            return Err(SweepError::Unused(a.name.clone()));
        }
    }
    let total = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
        .filter(|&n| n <= MAX_JOBS_PER_TEMPLATE)
        .ok_or(SweepError::TooMany)?;
    let mut out = Vec::with_capacity(total);
    for k in 0..total {
        // Mixed-radix digits of k, last axis fastest.
        let mut rest = k;
        let mut vars = vec![(String::new(), Value::Null); axes.len()];
        for (i, a) in axes.iter().enumerate().rev() {
            vars[i] = (a.name.clone(), a.values[rest % a.values.len()].clone());
            rest /= a.values.len();
        }
        out.push(Expanded {
            fields: substitute(template, &vars),
            vars,
        });
    }
    Ok(out)
}

fn placeholder(name: &str) -> String {
    format!("{{{name}}}")
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn substitute(template: &Map<String, Value>, vars: &[(String, Value)]) -> Map<String, Value> {
    let mut fields = template.clone();
    let mut mentioned = vec![false; vars.len()];
    for (key, value) in fields.iter_mut() {
        let Value::String(s) = value else { continue };
        let original = s.clone();
        let mut text = original.clone();
        let mut whole = None;
        for (i, (name, v)) in vars.iter().enumerate() {
            // `{seed}` in the output name is the image's own seed (seed + i in a batch), filled in later.
            if key == "out" && name == "seed" {
                continue;
            }
            let ph = placeholder(name);
            if !original.contains(&ph) {
                continue;
            }
            mentioned[i] = true;
            if original == ph {
                whole = Some(v.clone());
                break;
            }
            text = text.replace(&ph, &text_of(v));
        }
        *value = whole.unwrap_or(Value::String(text));
    }
    for (i, (name, v)) in vars.iter().enumerate() {
        if !mentioned[i] && JOB_FIELDS.contains(&name.as_str()) {
            fields.insert(name.clone(), v.clone());
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn values_parse_as_ranges_lists_and_arrays() {
        let a = Axis::parse("seed=1..4").unwrap();
        assert_eq!(a.values, vec![json!(1), json!(2), json!(3), json!(4)]);
        let a = Axis::parse("s = 0, 0.5,1").unwrap();
        assert_eq!(
            (a.name.as_str(), a.values),
            ("s", vec![json!(0), json!(0.5), json!(1)])
        );
        let a = Axis::parse("sampler=euler,DPM++ 2M").unwrap();
        assert_eq!(a.values, vec![json!("euler"), json!("DPM++ 2M")]);
        let a = Axis::parse(r#"p=["a, b","c"]"#).unwrap();
        assert_eq!(a.values, vec![json!("a, b"), json!("c")]);
    }

    #[test]
    fn bad_axes_are_refused_with_the_reason() {
        for (spec, want) in [
            ("seed", "NAME=VALUES"),
            ("1x=1,2", "names are letters"),
            ("hash=1,2", "reserved"),
            ("seed=5..1", "is empty"),
            ("seed=1..x", "not a whole number"),
            ("s=1,,2", "empty value"),
            ("s=[1,", "not a JSON array"),
            ("seed=0..99999999", "more than"),
        ] {
            let e = Axis::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn expansion_is_the_cross_product_in_order() {
        let t = obj(json!({"prompt": "fox <lora:ink:{s}>", "steps": 4}));
        let axes = [
            Axis::parse("seed=1..2").unwrap(),
            Axis::parse("s=0,0.5,1").unwrap(),
        ];
        let jobs = expand(&t, &axes).unwrap();
        assert_eq!(jobs.len(), 6);
        let got: Vec<(Value, Value)> = jobs
            .iter()
            .map(|j| (j.fields["seed"].clone(), j.fields["prompt"].clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (json!(1), json!("fox <lora:ink:0>")),
                (json!(1), json!("fox <lora:ink:0.5>")),
                (json!(1), json!("fox <lora:ink:1>")),
                (json!(2), json!("fox <lora:ink:0>")),
                (json!(2), json!("fox <lora:ink:0.5>")),
                (json!(2), json!("fox <lora:ink:1>")),
            ]
        );
        assert_eq!(jobs[4].vars[1], ("s".to_string(), json!(0.5)));
        assert_eq!(jobs[4].fields["steps"], json!(4));
    }

    #[test]
    fn a_whole_field_placeholder_takes_the_typed_value() {
        let t = obj(json!({"prompt": "x", "cfg": "{c}", "out": "c{c}-{seed}"}));
        let jobs = expand(
            &t,
            &[
                Axis::parse("c=3.5,7").unwrap(),
                Axis::parse("seed=9").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(jobs[0].fields["cfg"], json!(3.5));
        // `{seed}` in `out` stays for the per-image seed; the field itself is set.
        assert_eq!(jobs[1].fields["out"], json!("c7-{seed}"));
        assert_eq!(jobs[1].fields["seed"], json!(9));
    }

    #[test]
    fn unused_and_repeated_variables_are_errors() {
        let t = obj(json!({"prompt": "x"}));
        let e = expand(&t, &[Axis::parse("strength=0,1").unwrap()]).unwrap_err();
        assert_eq!(e, SweepError::Unused("strength".into()));
        let a = Axis::parse("seed=1,2").unwrap();
        let e = expand(&t, &[a.clone(), a]).unwrap_err();
        assert_eq!(e, SweepError::Twice("seed".into()));
        let big = Axis::parse("a=0..999").unwrap();
        let t = obj(json!({"prompt": "{a}{b}"}));
        let b = Axis {
            name: "b".into(),
            ..big.clone()
        };
        let c = Axis {
            name: "seed".into(),
            ..big.clone()
        };
        assert_eq!(expand(&t, &[big, b, c]).unwrap_err(), SweepError::TooMany);
    }
}
