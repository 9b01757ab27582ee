//! One `<lora:NAME[:STRENGTH][:KEY=VALUE]...>` tag: [`LoraTag`] with every component's strength
//! resolved (SD.Next's inheritance te → unet → in/mid/out), [`Component`] and [`LoraTag::set`] for
//! editors, and the parser of the tag's arguments.

use std::ops::Range;

use super::error::PromptError;
use super::lbw::{parse_lbw, Lbw};
use super::schedule::{parse_strength, Strength};
use super::suggest::did_you_mean;

/// The keys a tag takes.
pub const KEYS: [&str; 7] = ["te", "unet", "in", "mid", "out", "dyn", "lbw"];

/// A parsed LoRA tag. Strengths are resolved: a component that was not written holds the value it
/// inherits. Equality compares meaning, not where the tag was found (`span`, `name_span`).
#[derive(Debug, Clone)]
pub struct LoraTag {
    /// As written, trimmed; resolved to a file by [`super::resolve::Catalog`].
    pub name: String,
    /// The whole tag, `<` to `>`, in the original text.
    pub span: Range<usize>,
    /// The name inside the tag, for "no such LoRA" errors.
    pub name_span: Range<usize>,
    pub te: Strength,
    pub unet: Strength,
    pub in_: Strength,
    pub mid: Strength,
    pub out: Strength,
    pub lbw: Option<Lbw>,
    /// DyLoRA rank truncation.
    pub dyn_: Option<u32>,
}

impl PartialEq for LoraTag {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.te == o.te
            && self.unet == o.unet
            && self.in_ == o.in_
            && self.mid == o.mid
            && self.out == o.out
            && self.lbw == o.lbw
            && self.dyn_ == o.dyn_
    }
}

/// A strength slot of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Te,
    Unet,
    In,
    Mid,
    Out,
}

impl LoraTag {
    /// A tag with every strength 1 and no span (for tags made in the UI).
    pub fn new(name: impl Into<String>) -> Self {
        LoraTag {
            name: name.into(),
            span: 0..0,
            name_span: 0..0,
            te: Strength::default(),
            unet: Strength::default(),
            in_: Strength::default(),
            mid: Strength::default(),
            out: Strength::default(),
            lbw: None,
            dyn_: None,
        }
    }

    pub fn get(&self, c: Component) -> &Strength {
        match c {
            Component::Te => &self.te,
            Component::Unet => &self.unet,
            Component::In => &self.in_,
            Component::Mid => &self.mid,
            Component::Out => &self.out,
        }
    }

    /// Sets a component and carries the change to the components that inherit from it (those still
    /// equal to its old value), as if the tag had been written with the new value.
    pub fn set(&mut self, c: Component, value: Strength) {
        match c {
            Component::Te => {
                let old = std::mem::replace(&mut self.te, value.clone());
                if self.unet == old {
                    self.set(Component::Unet, value);
                }
            }
            Component::Unet => {
                let old = std::mem::replace(&mut self.unet, value.clone());
                for slot in [&mut self.in_, &mut self.mid, &mut self.out] {
                    if *slot == old {
                        *slot = value.clone();
                    }
                }
            }
            Component::In => self.in_ = value,
            Component::Mid => self.mid = value,
            Component::Out => self.out = value,
        }
    }

    /// True when the tag changes nothing (SD.Next skips such a LoRA too).
    pub fn is_off(&self) -> bool {
        self.te.is_zero() && self.in_.is_zero() && self.mid.is_zero() && self.out.is_zero()
    }

    /// True when some strength changes over the steps (the engine runs it live, not fused).
    pub fn is_scheduled(&self) -> bool {
        [&self.te, &self.unet, &self.in_, &self.mid, &self.out]
            .iter()
            .any(|s| s.is_scheduled())
    }
}

/// Splits `s` (starting at byte `offset` of the prompt) on `sep`, with each trimmed piece's span.
fn split_spans(s: &str, offset: usize, sep: char) -> Vec<(&str, Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for part in s.split(sep) {
        let lead = part.len() - part.trim_start().len();
        let t = part.trim();
        let a = offset + start + lead;
        out.push((
            t,
            if t.is_empty() {
                offset + start..offset + start + part.len()
            } else {
                a..a + t.len()
            },
        ));
        start += part.len() + sep.len_utf8();
    }
    out
}

fn unknown_key_hint(key: &str) -> Option<String> {
    let special = match key.to_ascii_lowercase().as_str() {
        "start" | "stop" | "step" => {
            Some("per-step control is a schedule: e.g. `te=0@1,1@5` or `unet=1@0,0@0.5`")
        }
        "w" | "lbwe" => {
            Some("block weights are `lbw=` (17/26 values for SD1/SD2, 12/20 for SDXL, or a preset)")
        }
        "module" => Some("limit components with strengths instead, e.g. `te=0` for UNet only"),
        "x" => Some("inherited (X) block weights are not supported"),
        _ => None,
    };
    special
        .map(str::to_string)
        .or_else(|| did_you_mean(key, KEYS))
}

/// Parses the arguments of a tag (`NAME[:...]`, the text between `<lora:` and `>`), which start at
/// byte `args_offset` of the prompt. `span` is the whole tag.
pub(crate) fn parse_tag_args(
    args: &str,
    args_offset: usize,
    span: Range<usize>,
) -> Result<LoraTag, PromptError> {
    let items = split_spans(args, args_offset, ':');
    let (name, name_span) = items[0].clone();
    if name.is_empty() {
        return Err(PromptError::new(name_span, "the LoRA tag has no name")
            .with_hint("write `<lora:NAME>` or `<lora:NAME:STRENGTH>`"));
    }
    let mut positional: Option<Strength> = None;
    let mut named: [Option<Strength>; 5] = Default::default();
    let mut lbw = None;
    let mut dyn_ = None;
    let mut seen: Vec<&str> = Vec::new();
    let mut te_span = None;

    for (item, ispan) in items.into_iter().skip(1) {
        if item.is_empty() {
            return Err(PromptError::new(ispan, "empty argument in the LoRA tag")
                .with_hint("arguments are separated by a single `:`"));
        }
        let Some(eq) = item.find('=') else {
            if positional.is_some() {
                let hint = if item.contains(',')
                    || did_you_mean(item, super::lbw::PRESETS.iter().map(|p| p.0)).is_some()
                {
                    format!("block weights are written `lbw={item}`")
                } else {
                    "only one positional strength; name the others: te=, unet=, in=, mid=, out="
                        .to_string()
                };
                return Err(PromptError::new(
                    ispan,
                    format!("unexpected second strength `{item}`"),
                )
                .with_hint(hint));
            }
            positional = Some(parse_strength(item, ispan.start)?);
            continue;
        };
        let key_raw = &item[..eq];
        let key = key_raw.trim_end();
        let key_span = ispan.start..ispan.start + key.len();
        let value = item[eq + 1..].trim_start();
        let value_start = ispan.end - value.len();
        if value.contains('=') {
            return Err(PromptError::new(
                ispan,
                format!("`{item}` has more than one `=`"),
            ));
        }
        let Some(&known) = KEYS.iter().find(|k| **k == key) else {
            let hint = unknown_key_hint(key).unwrap_or_else(|| {
                format!("keys are {}", KEYS.map(|k| format!("`{k}`")).join(", "))
            });
            let msg = if key.is_empty() {
                "missing key before `=`".to_string()
            } else {
                format!("unknown key `{key}`")
            };
            return Err(
                PromptError::new(if key.is_empty() { ispan } else { key_span }, msg)
                    .with_hint(hint),
            );
        };
        if seen.contains(&known) {
            return Err(PromptError::new(
                key_span,
                format!("`{known}` is given twice"),
            ));
        }
        seen.push(known);
        if known == "te" {
            te_span = Some(key_span.clone());
        }
        if value.is_empty() {
            return Err(PromptError::new(
                value_start..value_start,
                format!("`{known}=` has no value"),
            ));
        }
        match known {
            "dyn" => {
                let vspan = value_start..value_start + value.len();
                match value.parse::<u32>() {
                    Ok(n) if n >= 1 => dyn_ = Some(n),
                    _ => {
                        return Err(
                            PromptError::new(vspan, format!("`dyn={value}` is not a rank"))
                                .with_hint(
                                "dyn takes a whole number ≥ 1: how many ranks of a DyLoRA to use",
                            ),
                        )
                    }
                }
            }
            "lbw" => lbw = Some(parse_lbw(value, value_start)?),
            _ => {
                let idx = ["te", "unet", "in", "mid", "out"]
                    .iter()
                    .position(|k| *k == known)
                    .unwrap_or(0);
                named[idx] = Some(parse_strength(value, value_start)?);
            }
        }
    }

    let [te, unet, in_, mid, out] = named;
    if let (Some(_), Some(_)) = (&positional, &te) {
        // SD.Next lets te= override silently; two spellings of one value is a mistake.
        return Err(PromptError::new(
            te_span.unwrap_or(span),
            "the strength is given twice: positionally and as `te=`",
        )
        .with_hint("the positional strength is `te`; keep one of them"));
    }
    let te = te.or(positional).unwrap_or_default();
    let unet = unet.unwrap_or_else(|| te.clone());
    Ok(LoraTag {
        name: name.to_string(),
        span,
        name_span,
        in_: in_.unwrap_or_else(|| unet.clone()),
        mid: mid.unwrap_or_else(|| unet.clone()),
        out: out.unwrap_or_else(|| unet.clone()),
        te,
        unet,
        lbw,
        dyn_,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::schedule::Position;

    fn tag(args: &str) -> Result<LoraTag, PromptError> {
        // As if the prompt were exactly "<lora:ARGS>".
        parse_tag_args(args, 6, 0..args.len() + 7)
    }

    #[test]
    fn sdnext_doc_examples() {
        let t = tag("test_lora:te=0.5:unet=1.5").unwrap();
        assert_eq!(t.name, "test_lora");
        assert_eq!(t.te, Strength::Const(0.5));
        assert_eq!(t.unet, Strength::Const(1.5));
        assert_eq!(
            (t.in_.clone(), t.mid.clone(), t.out.clone()),
            (
                Strength::Const(1.5),
                Strength::Const(1.5),
                Strength::Const(1.5)
            )
        );

        let t = tag("test_lora:1.0:in=0:mid=1:out=0").unwrap();
        assert_eq!(t.te, Strength::Const(1.0));
        assert_eq!(t.unet, Strength::Const(1.0));
        assert_eq!(t.in_, Strength::Const(0.0));
        assert_eq!(t.mid, Strength::Const(1.0));
        assert_eq!(t.out, Strength::Const(0.0));

        let t = tag("test_lora:te=0.1@1,0.6@6").unwrap();
        let sched = Strength::Schedule(vec![(0.1, Position::Step(1)), (0.6, Position::Step(6))]);
        assert_eq!(t.te, sched);
        // unet inherits te, and in/mid/out inherit unet (SD.Next).
        assert_eq!(t.unet, sched);
        assert_eq!(t.out, sched);
        assert!(t.is_scheduled());
    }

    #[test]
    fn defaults_and_inheritance() {
        let t = tag("x").unwrap();
        assert_eq!(t.te, Strength::Const(1.0));
        assert_eq!(t.mid, Strength::Const(1.0));
        let t = tag("x:0.7:out=0.2").unwrap();
        assert_eq!(t.unet, Strength::Const(0.7));
        assert_eq!(t.in_, Strength::Const(0.7));
        assert_eq!(t.out, Strength::Const(0.2));
        let t = tag(" my lora : 0.5 : dyn=8 ").unwrap();
        assert_eq!(t.name, "my lora");
        assert_eq!(t.name_span, 7..14);
        assert_eq!(t.dyn_, Some(8));
        assert!(tag("x:0").unwrap().is_off());
        assert!(tag("x:te=0").unwrap().is_off(), "unet inherits te=0");
        assert!(!tag("x:te=0:unet=1").unwrap().is_off());
        assert!(tag("x:te=0:unet=0").unwrap().is_off());
    }

    #[test]
    fn strict_errors_with_spans_and_hints() {
        // "<lora:x:tee=1>": `tee` at bytes 8..11.
        let e = tag("x:tee=1").unwrap_err();
        assert_eq!(e.span, 8..11);
        assert_eq!(e.message, "unknown key `tee`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `te`?"));

        let e = tag("x:te=abc").unwrap_err();
        assert_eq!(e.span, 11..14);
        let e = tag("x:te=1:te=2").unwrap_err();
        assert_eq!(e.span, 13..15);
        let e = tag("x:1:0.5").unwrap_err();
        assert!(e.message.contains("second strength"));
        let e = tag("x:1:OUTALL").unwrap_err();
        assert_eq!(
            e.hint.as_deref(),
            Some("block weights are written `lbw=OUTALL`")
        );
        let e = tag("x::1").unwrap_err();
        assert_eq!(e.span, 8..8);
        let e = tag(":1").unwrap_err();
        assert!(e.message.contains("no name"));
        let e = tag("x:dyn=0").unwrap_err();
        assert_eq!(e.span, 12..13);
        let e = tag("x:start=3").unwrap_err();
        assert!(e.hint.unwrap().contains("schedule"));
        let e = tag("x:lbw=1,1").unwrap_err();
        assert_eq!(e.span, 12..15);
        assert_eq!(tag("x:0.5:te=0.5").unwrap_err().span, 12..14);
        assert!(tag("x:=1").is_err());
        assert!(tag("x:te=").is_err());
    }

    #[test]
    fn set_carries_to_inheriting_components() {
        let mut t = tag("x:0.5:out=0.2").unwrap();
        t.set(Component::Te, Strength::Const(0.8));
        assert_eq!(t.unet, Strength::Const(0.8));
        assert_eq!(t.in_, Strength::Const(0.8));
        assert_eq!(t.out, Strength::Const(0.2), "explicit out keeps its value");
        let mut t = tag("x:0.5:unet=1").unwrap();
        t.set(Component::Te, Strength::Const(0.9));
        assert_eq!(t.unet, Strength::Const(1.0));
    }
}
