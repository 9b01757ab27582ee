//! The prompt language: LoRA tags with per-component, per-block and per-step strengths, and A1111
//! emphasis, parsed strictly with spans for errors.
//!
//! Public surface: [`parse`] / [`parse_with_warnings`] → [`Prompt`] ([`Fragment`]s + [`LoraTag`]s);
//! [`Strength`] / [`Position`] (schedules); [`Lbw`], [`Block`], [`slot_block`] (block weights);
//! [`chunk`] (75-token chunks, tokenizer-generic); [`print`], [`print_tag`], [`rewrite_tag`],
//! [`append_tag`], [`remove_tag`] (edit the user's text in place);
//! [`LoraDirs`] / [`Catalog`] (names → files); [`PromptError`] / [`PromptWarning`] with `render`;
//! [`Editing`] (A1111 prompt editing, alternation and `AND`: `Prompt::editing`, text per step).
//!
//! # LoRA tags
//!
//! `<lora:NAME[:STRENGTH][:KEY=VALUE]...>` (`<lyco:...>` is the same). Items are separated by `:` and
//! trimmed. The first item is the name; one item without `=` is the positional strength; the others
//! are `KEY=VALUE` with these keys:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | (positional) | same as `te` | 1.0 |
//! | `te` | text-encoder strength | the positional strength |
//! | `unet` | UNet strength; sets `in`, `mid`, `out` | `te` |
//! | `in`, `mid`, `out` | UNet down blocks (+ `conv_in`, time embedding) / middle block / up blocks (+ `conv_out`) | `unet` |
//! | `dyn` | DyLoRA: use the first N ranks (whole number ≥ 1) | all ranks |
//! | `lbw` | block weights: 17 or 26 numbers (SD1/SD2), 12 or 20 (SDXL), or a preset name | none |
//!
//! So `<lora:test_lora:te=0.5:unet=1.5>` is te 0.5, UNet 1.5; `<lora:test_lora:1.0:in=0:mid=1:out=0>`
//! applies the text encoder and the middle block only; `<lora:test_lora:te=0.1@1,0.6@6>` ramps both
//! te and the UNet (which inherits te) from 0.1 at step 1 to 0.6 at step 6.
//!
//! ## Schedules
//!
//! Any strength may be a schedule `V@P,V@P,...` (`;` may replace `,`, and `~` may replace `@`).
//! The value is linearly interpolated between neighbouring points and held before the first and
//! after the last. Positions are read for the whole schedule at once:
//!
//! - If **every** position is ≤ 1, positions are **fractions of the run**: 0 is the first step and 1
//!   the last; 0-based step `i` of `n` sits at `i / (n - 1)` (a one-step run sits at 0).
//! - If **any** position is > 1, positions are **step numbers**, 1-based (1 is the first step), and
//!   every position must then be a whole number ≥ 1.
//!
//! This settles the ambiguity of `1`: alone with fractions (`1@0,0@1`) it is the end of the run; in a
//! schedule with a larger position (`0.1@1,0.6@6`) it is step 1. A fraction mixed with step numbers
//! (`0@0.5,1@10`), step 0, a negative position, decreasing positions, a point without `@` and an
//! empty point are errors. Equal positions make a jump: at that position the later point holds.
//! Step positions past the run's end are allowed (the curve is cut off). SD.Next maps fractions with
//! `step / (steps - 2)` and applies schedules only at the first step; we do neither.
//!
//! ## Block weights (`lbw=`)
//!
//! The vector of the A1111 "LoRA Block Weight" extension, slot 0 (`BASE`) weighing the text
//! encoder(s) and the others LDM blocks ([`LbwLayout`] lists them). A block the layout has no slot for
//! gets 0 (the extension pads short vectors with zeros); modules outside the block chain
//! (`time_embedding`, `conv_norm_out`, `conv_out`) get 1. The weight multiplies the component
//! strength: `te × BASE` for the text encoder, `in/mid/out × block` for the UNet. Presets: `NONE`,
//! `ALL`, `INS`, `IND`, `INALL`, `MIDD`, `OUTD`, `OUTS`, `OUTALL`, `ALL0.5` (17-slot, SD1/SD2).
//! Random (`R`, `U`) and inherited (`X`) entries are not supported. A layout for the wrong family is
//! caught by [`Lbw::check_family`] once the model is known.
//!
//! ## Strictness
//!
//! SD.Next ignores what it does not understand; here an unknown key (with a "did you mean" hint), a
//! value that is not a number, a malformed schedule or block vector, a repeated key, a second
//! positional strength, both a positional strength and `te=`, an unterminated tag, a tag type other
//! than `lora`, and a name that resolves to no file are errors with a span. A prompt with an error is
//! not run. Names keep inner spaces but not surrounding ones (SD.Next keeps those).
//!
//! # Emphasis and text
//!
//! A1111's rules: `(x)` ×1.1, `[x]` ÷1.1, `(x:1.3)` ×1.3 (no space before the number), nesting
//! multiplies, `\(` `\)` `\[` `\]` `\\` are literal characters, a backslash before anything else is
//! dropped, `BREAK` (upper case, as a word) ends the current 75-token chunk. Like A1111, an unclosed
//! `(`/`[` weighs the rest of the prompt and a stray `)`/`]` is text; both give a warning. A weight
//! that is not a number (`(x:1.2.3)`) is an error (A1111 raises). Tags are taken out before emphasis
//! is read, so a tag inside brackets does not disturb them.
//!
//! Deviations from A1111, none of which change the tokens of an ordinary prompt:
//! - `BREAK` inside brackets still breaks (A1111 turns it into the word "BREAK" weighted −1.1).
//! - `\<` is a literal `<` that never starts a tag (A1111 would still take the tag out).
//! - A removed tag and the whitespace around it leave one whitespace character (none at the ends), and
//!   the prompt's outer whitespace is trimmed; the tokenizer ignores both.
//! - Empty pieces are dropped before neighbours of equal weight are merged.
//!
//! # Prompt editing, alternation and `AND`
//!
//! Read from the tag-free text as A1111's `prompt_parser` reads it (see `editing.rs`): `AND` splits
//! the text into parts first (anywhere, as a word), each with an optional trailing `:WEIGHT`; in
//! each part `[from:to:when]`, `[to:when]`, `[from::when]` and `[a|b|...]` are recognised where
//! their insides are well formed (balanced emphasis, no stray `:` or `|`), anything else stays text
//! for the emphasis parser. `when` with a `.` is a fraction of the steps (`int(when × steps)`),
//! without one a step number. A prompt without any of these parses exactly as before
//! (`editing` is `None`). Deviation: a `|` outside an alternation (or a trailing lone `\`) makes
//! A1111 drop every edit of the part silently; with an edit in the part it is an error here. A part
//! weight too large to be a finite number is an error (A1111 would weigh the part by infinity).
//!
//! # Printing
//!
//! [`print`] writes text that parses back to an equal [`Prompt`] (tags last, shortest tag form,
//! weights as `(text:W)`); [`rewrite_tag`] replaces one tag in the user's text and keeps every other
//! byte, so the TUI can edit a strength without reformatting the prompt.

mod chunk;
mod editing;
mod emphasis;
mod error;
mod lbw;
mod lora_tag;
mod parse;
mod print;
pub mod resolve;
mod schedule;
mod suggest;

pub use chunk::{chunk, chunk_units, Chunk, ChunkConfig, Unit, CHUNK_LEN, CLIP_COMMA, MAX_CHUNKS};
pub use editing::{Editing, Node, Part, Run, Segment, When};
pub use emphasis::Fragment;
pub use error::{PromptError, PromptWarning};
pub use lbw::{slot_block, Block, Lbw, LbwLayout, UnetRegion, PRESETS};
pub use lora_tag::{Component, LoraTag, KEYS};
pub use parse::{
    parse, parse_negative, parse_negative_with_warnings, parse_with_warnings, Prompt,
    MAX_PROMPT_BYTES,
};
pub use print::{append_tag, print, print_tag, remove_tag, rewrite_tag};
pub use resolve::{Catalog, FolderError, LoraDirs, LoraFile, Refusal, Refused, ResolveError};
pub use schedule::{Position, Strength};
pub(crate) use suggest::did_you_mean;

#[cfg(test)]
mod proptests;
