//! Per-block weights in the layout of the A1111 "LoRA Block Weight" extension: [`Lbw`] (the `lbw=`
//! value), [`LbwLayout`] (17/26 slots for SD1/SD2, 12/20 for SDXL), [`Block`] (LDM input/middle/output
//! blocks) with [`slot_block`] and [`Block::of_unet_module`] so the LoRA engine can weigh each layer.

use std::fmt;
use std::ops::Range;

use super::error::PromptError;
use super::schedule::parse_number;
use super::suggest::did_you_mean;
use crate::family::Family;

/// A UNet block in LDM numbering (`input_blocks.N`, `middle_block`, `output_blocks.N`), or `Base`:
/// the text encoder(s), which the extension's first slot weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    Base,
    Input(u8),
    Middle,
    Output(u8),
}

/// The three UNet regions that `in=`, `mid=` and `out=` weigh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnetRegion {
    In,
    Mid,
    Out,
}

/// Which slots a vector of a given length holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbwLayout {
    /// SD1/SD2 LoRA: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03–OUT11 (attention blocks).
    Sd17,
    /// SD1/SD2 LyCORIS: BASE, IN00–IN11, M00, OUT00–OUT11.
    Sd26,
    /// SDXL LoRA: BASE, IN04, IN05, IN07, IN08, M00, OUT00–OUT05.
    Xl12,
    /// SDXL LyCORIS: BASE, IN00–IN08, M00, OUT00–OUT08.
    Xl20,
}

use Block::{Base, Input as I, Middle as M, Output as O};

const SD17: [Block; 17] = [
    Base,
    I(1),
    I(2),
    I(4),
    I(5),
    I(7),
    I(8),
    M,
    O(3),
    O(4),
    O(5),
    O(6),
    O(7),
    O(8),
    O(9),
    O(10),
    O(11),
];
const SD26: [Block; 26] = [
    Base,
    I(0),
    I(1),
    I(2),
    I(3),
    I(4),
    I(5),
    I(6),
    I(7),
    I(8),
    I(9),
    I(10),
    I(11),
    M,
    O(0),
    O(1),
    O(2),
    O(3),
    O(4),
    O(5),
    O(6),
    O(7),
    O(8),
    O(9),
    O(10),
    O(11),
];
const XL12: [Block; 12] = [
    Base,
    I(4),
    I(5),
    I(7),
    I(8),
    M,
    O(0),
    O(1),
    O(2),
    O(3),
    O(4),
    O(5),
];
const XL20: [Block; 20] = [
    Base,
    I(0),
    I(1),
    I(2),
    I(3),
    I(4),
    I(5),
    I(6),
    I(7),
    I(8),
    M,
    O(0),
    O(1),
    O(2),
    O(3),
    O(4),
    O(5),
    O(6),
    O(7),
    O(8),
];

/// The extension's built-in presets (all in the 17-slot SD layout), by name.
pub const PRESETS: [(&str, [f32; 17]); 10] = [
    (
        "NONE",
        [
            0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "ALL",
        [
            1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.,
        ],
    ),
    (
        "INS",
        [
            1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "IND",
        [
            1., 0., 0., 0., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "INALL",
        [
            1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "MIDD",
        [
            1., 0., 0., 0., 1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "OUTD",
        [
            1., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 0., 0., 0., 0., 0.,
        ],
    ),
    (
        "OUTS",
        [
            1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 1.,
        ],
    ),
    (
        "OUTALL",
        [
            1., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 1., 1., 1., 1., 1.,
        ],
    ),
    ("ALL0.5", [0.5; 17]),
];

impl LbwLayout {
    pub fn from_len(n: usize) -> Option<LbwLayout> {
        match n {
            17 => Some(LbwLayout::Sd17),
            26 => Some(LbwLayout::Sd26),
            12 => Some(LbwLayout::Xl12),
            20 => Some(LbwLayout::Xl20),
            _ => None,
        }
    }

    pub fn slots(self) -> &'static [Block] {
        match self {
            LbwLayout::Sd17 => &SD17,
            LbwLayout::Sd26 => &SD26,
            LbwLayout::Xl12 => &XL12,
            LbwLayout::Xl20 => &XL20,
        }
    }

    pub fn slot_count(self) -> usize {
        self.slots().len()
    }

    pub fn family(self) -> Family {
        match self {
            LbwLayout::Sd17 | LbwLayout::Sd26 => Family::Sd1,
            LbwLayout::Xl12 | LbwLayout::Xl20 => Family::Sdxl,
        }
    }
}

/// The block that slot `index` of a `slots`-long vector weighs on `family`; None when that length
/// is not a layout of that family or the index is past its end.
pub fn slot_block(family: Family, slots: usize, index: usize) -> Option<Block> {
    let layout = LbwLayout::from_len(slots)?;
    if layout.family() != family.block_layout() {
        return None;
    }
    layout.slots().get(index).copied()
}

impl Block {
    /// `BASE`, `IN04`, `M00`, `OUT11`: the extension's block IDs.
    pub fn id(self) -> String {
        match self {
            Base => "BASE".into(),
            I(n) => format!("IN{n:02}"),
            M => "M00".into(),
            O(n) => format!("OUT{n:02}"),
        }
    }

    /// None for `Base` (the text encoders are not a UNet region).
    pub fn region(self) -> Option<UnetRegion> {
        match self {
            Base => None,
            I(_) => Some(UnetRegion::In),
            M => Some(UnetRegion::Mid),
            O(_) => Some(UnetRegion::Out),
        }
    }

    /// The LDM block holding a UNet module named in diffusers form (`down_blocks.1.attentions.0.…`,
    /// optionally prefixed `unet.`). None for modules outside the block chain: `time_embedding`,
    /// `add_embedding`, `conv_norm_out`, `conv_out`. `conv_in` is `input_blocks.0`.
    pub fn of_unet_module(path: &str) -> Option<Block> {
        let path = path.strip_prefix("unet.").unwrap_or(path);
        let mut parts = path.split('.');
        let head = parts.next()?;
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok()).filter(|n| *n < 100);
        // Names come from adapter files: out-of-range numbers give None, never an overflow.
        let block = |n: u32| u8::try_from(n).ok();
        match head {
            "conv_in" => Some(I(0)),
            "mid_block" => Some(M),
            "down_blocks" | "up_blocks" => {
                let i = num(parts.next())?;
                let kind = parts.next()?;
                let j = num(parts.next())?;
                let down = head == "down_blocks";
                match (down, kind) {
                    (true, "resnets" | "attentions") => block(3 * i + j + 1).map(I),
                    (true, "downsamplers") => block(3 * (i + 1)).map(I),
                    (false, "resnets" | "attentions") => block(3 * i + j).map(O),
                    (false, "upsamplers") => block(3 * i + 2).map(O),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

impl UnetRegion {
    /// The region whose `in=`/`mid=`/`out=` strength a UNet module takes. Modules outside the block
    /// chain follow the data path: `conv_in`, `time_embedding`, `add_embedding` are `in`;
    /// `conv_norm_out`, `conv_out` are `out` (SD.Next puts all of them under `in`).
    pub fn of_unet_module(path: &str) -> UnetRegion {
        if let Some(region) = Block::of_unet_module(path).and_then(Block::region) {
            return region;
        }
        let path = path.strip_prefix("unet.").unwrap_or(path);
        if path.starts_with("conv_norm_out") || path.starts_with("conv_out") {
            UnetRegion::Out
        } else {
            UnetRegion::In
        }
    }
}

/// An `lbw=` value: one weight per slot of its layout, and the preset name if it was given by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Lbw {
    pub values: Vec<f32>,
    pub preset: Option<String>,
}

impl Lbw {
    pub fn layout(&self) -> LbwLayout {
        // The parser only builds valid lengths; a hand-built odd one reads as the widest SD layout.
        LbwLayout::from_len(self.values.len()).unwrap_or(LbwLayout::Sd26)
    }

    /// Err (a sentence for the user) when the vector's layout is for another family.
    pub fn check_family(&self, family: Family) -> Result<(), String> {
        let layout = self.layout();
        if LbwLayout::from_len(self.values.len()).is_none() {
            return Err(format!(
                "lbw has {} values; it takes 17 or 26 (SD1/SD2) or 12 or 20 (SDXL)",
                self.values.len()
            ));
        }
        if layout.family() == family.block_layout() {
            return Ok(());
        }
        let takes = match family {
            Family::Sd1 | Family::Sd2 => "17 or 26",
            Family::Sdxl => "12 or 20",
        };
        Err(format!(
            "lbw has {} values, the layout for {}; this model is {} and takes {takes}",
            self.values.len(),
            layout.family().facts().name,
            family.facts().name
        ))
    }

    /// The multiplier for a block. Blocks that the layout has no slot for get 0, as the extension
    /// expands short vectors to 26 slots with zeros.
    pub fn weight(&self, block: Block) -> f32 {
        self.layout()
            .slots()
            .iter()
            .position(|b| *b == block)
            .and_then(|i| self.values.get(i).copied())
            .unwrap_or(0.0)
    }

    /// The multiplier for a UNet module (diffusers name); 1 for modules outside the block chain,
    /// which the extension leaves alone.
    pub fn weight_for_unet_module(&self, path: &str) -> f32 {
        Block::of_unet_module(path).map_or(1.0, |b| self.weight(b))
    }

    pub fn text_encoder_weight(&self) -> f32 {
        self.weight(Base)
    }
}

impl fmt::Display for Lbw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.preset {
            return f.write_str(p);
        }
        for (i, v) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Parses an `lbw=` value written at byte `offset`: a preset name or 12/17/20/26 numbers.
pub(crate) fn parse_lbw(value: &str, offset: usize) -> Result<Lbw, PromptError> {
    let whole = offset..offset + value.len();
    if !value.contains(',') {
        if let Some((name, values)) = PRESETS.iter().find(|(n, _)| n.eq_ignore_ascii_case(value)) {
            return Ok(Lbw {
                values: values.to_vec(),
                preset: Some((*name).to_string()),
            });
        }
        if value.is_empty()
            || (value.chars().any(char::is_alphabetic) && value.parse::<f32>().is_err())
        {
            let names = PRESETS.iter().map(|(n, _)| *n);
            let hint = did_you_mean(value, names).unwrap_or_else(|| {
                let all: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                format!(
                    "presets: {}; or write 17/26 (SD1/SD2) or 12/20 (SDXL) numbers",
                    all.join(", ")
                )
            });
            return Err(
                PromptError::new(whole, format!("unknown lbw preset `{value}`")).with_hint(hint),
            );
        }
    }
    let mut values = Vec::new();
    let mut start = 0;
    for part in value.split(',') {
        let span: Range<usize> = offset + start..offset + start + part.len();
        start += part.len() + 1;
        let t = part.trim();
        let lead = part.len() - part.trim_start().len();
        let tspan = span.start + lead..span.start + lead + t.len();
        if matches!(t.chars().next(), Some('R' | 'U' | 'X')) {
            return Err(PromptError::new(tspan, format!("block weight `{t}` is not supported"))
                .with_hint("random (R, U) and inherited (X) block weights are not supported; write a number"));
        }
        values.push(parse_number(t, if t.is_empty() { span } else { tspan })?);
    }
    if LbwLayout::from_len(values.len()).is_none() {
        return Err(PromptError::new(
            whole,
            format!(
                "lbw has {} values; it takes 17 or 26 (SD1/SD2) or 12 or 20 (SDXL)",
                values.len()
            ),
        )
        .with_hint("one value per block, starting with BASE (the text encoder)"));
    }
    Ok(Lbw {
        values,
        preset: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_extension_block_ids() {
        let ids = |l: LbwLayout| {
            l.slots()
                .iter()
                .map(|b| b.id())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            ids(LbwLayout::Sd17),
            "BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03,OUT04,OUT05,OUT06,OUT07,OUT08,OUT09,OUT10,OUT11"
        );
        assert_eq!(
            ids(LbwLayout::Xl12),
            "BASE,IN04,IN05,IN07,IN08,M00,OUT00,OUT01,OUT02,OUT03,OUT04,OUT05"
        );
        assert_eq!(LbwLayout::Sd26.slot_count(), 26);
        assert_eq!(ids(LbwLayout::Xl20).split(',').nth(9), Some("IN08"));
        assert_eq!(ids(LbwLayout::Xl20).split(',').nth(10), Some("M00"));
    }

    #[test]
    fn slot_mapping_per_family() {
        assert_eq!(slot_block(Family::Sd1, 17, 0), Some(Block::Base));
        assert_eq!(slot_block(Family::Sd1, 17, 3), Some(Block::Input(4)));
        assert_eq!(slot_block(Family::Sd1, 17, 7), Some(Block::Middle));
        assert_eq!(slot_block(Family::Sd1, 17, 16), Some(Block::Output(11)));
        assert_eq!(slot_block(Family::Sd1, 17, 17), None);
        assert_eq!(slot_block(Family::Sdxl, 12, 6), Some(Block::Output(0)));
        assert_eq!(slot_block(Family::Sdxl, 17, 1), None, "17 is an SD layout");
        assert_eq!(slot_block(Family::Sd1, 20, 1), None, "20 is an SDXL layout");
    }

    #[test]
    fn diffusers_modules_map_to_ldm_blocks() {
        let b = Block::of_unet_module;
        // down_blocks.i.{resnets,attentions}.j -> input_blocks.(3i+j+1)
        assert_eq!(
            b("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
            Some(Block::Input(1))
        );
        assert_eq!(
            b("unet.down_blocks.1.resnets.1.conv1"),
            Some(Block::Input(5))
        );
        assert_eq!(
            b("down_blocks.2.downsamplers.0.conv"),
            Some(Block::Input(9))
        );
        assert_eq!(b("conv_in"), Some(Block::Input(0)));
        assert_eq!(b("mid_block.attentions.0.proj_in"), Some(Block::Middle));
        // up_blocks.i.{resnets,attentions}.j -> output_blocks.(3i+j)
        assert_eq!(
            b("up_blocks.1.attentions.2.proj_out"),
            Some(Block::Output(5))
        );
        assert_eq!(b("up_blocks.3.resnets.0.conv2"), Some(Block::Output(9)));
        assert_eq!(b("up_blocks.0.upsamplers.0.conv"), Some(Block::Output(2)));
        assert_eq!(b("time_embedding.linear_1"), None);
        assert_eq!(b("conv_out"), None);
        assert_eq!(b("down_blocks.250.resnets.7.conv1"), None);
        assert_eq!(b("up_blocks.x.resnets.0"), None);
        assert_eq!(UnetRegion::of_unet_module("conv_out"), UnetRegion::Out);
        assert_eq!(
            UnetRegion::of_unet_module("time_embedding.linear_2"),
            UnetRegion::In
        );
        assert_eq!(
            UnetRegion::of_unet_module("up_blocks.2.resnets.0.conv1"),
            UnetRegion::Out
        );
    }

    #[test]
    fn presets_and_vectors_parse() {
        let l = parse_lbw("outall", 0).unwrap();
        assert_eq!(l.preset.as_deref(), Some("OUTALL"));
        assert_eq!(l.layout(), LbwLayout::Sd17);
        assert_eq!(l.weight(Block::Base), 1.0);
        assert_eq!(l.weight(Block::Input(1)), 0.0);
        assert_eq!(l.weight(Block::Output(3)), 1.0);
        assert_eq!(
            l.weight(Block::Input(3)),
            0.0,
            "no slot in the 17 layout: zero"
        );
        assert_eq!(l.weight_for_unet_module("time_embedding.linear_1"), 1.0);
        assert_eq!(l.to_string(), "OUTALL");

        let v = parse_lbw("1,0,0,0,0,0.5,0.5,0,1,1,1,1", 0).unwrap();
        assert_eq!(v.layout(), LbwLayout::Xl12);
        // Slots: BASE, IN04, IN05, IN07, IN08, M00, OUT00, ...
        assert_eq!(v.weight(Block::Input(7)), 0.0);
        assert_eq!(v.weight(Block::Middle), 0.5);
        assert_eq!(v.weight(Block::Output(0)), 0.5);
        assert_eq!(v.weight(Block::Output(1)), 0.0);
        assert_eq!(v.weight(Block::Output(5)), 1.0);
        assert!(v.check_family(Family::Sdxl).is_ok());
        assert!(v
            .check_family(Family::Sd1)
            .unwrap_err()
            .contains("12 values"));
        assert_eq!(parse_lbw(&v.to_string(), 0).unwrap(), v);
    }

    #[test]
    fn bad_vectors_are_refused_with_spans() {
        let e = parse_lbw("1,1,1", 10).unwrap_err();
        assert_eq!(e.span, 10..15);
        assert!(e.message.contains("3 values"));
        let e = parse_lbw("OUTAL", 0).unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `OUTALL`?"));
        let e = parse_lbw("1,R,1", 0).unwrap_err();
        assert_eq!(e.span, 2..3);
        let e = parse_lbw("1,,1", 0).unwrap_err();
        assert_eq!(e.span, 2..2);
        assert!(parse_lbw("0.5", 0).is_err());
    }
}
