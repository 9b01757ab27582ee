//! What applying adapters did, per adapter: types, family evidence, applied parameters with shapes and
//! strengths, skipped keys with the reason, warnings. Printed by the CLI, shown by the TUI, serialisable.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::family::FamilyGuess;
use super::TargetComponent;

#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub adapters: Vec<AdapterReport>,
}

#[derive(Debug, Default, Serialize)]
pub struct AdapterReport {
    pub name: String,
    /// Module count per type label ("LoRA", "LoCon (Tucker)", "DoRA (LoKr)", ...).
    pub types: BTreeMap<String, usize>,
    pub family: FamilyGuess,
    pub applied: Vec<Applied>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Applied {
    pub component: TargetComponent,
    pub param: String,
    pub label: String,
    pub shape: Vec<usize>,
    pub strength: f32,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

impl AdapterReport {
    pub(super) fn skip(&mut self, key: &str, reason: &str) {
        self.skipped.push(Skipped {
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.adapters {
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<String> = self
            .types
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        writeln!(
            f,
            "{}: {}",
            self.name,
            if types.is_empty() {
                "nothing applied".into()
            } else {
                types.join(", ")
            }
        )?;
        match &self.family.family {
            Some(fam) => writeln!(f, "  family: {fam} ({})", self.family.evidence.join("; "))?,
            None => writeln!(f, "  family: not determined from shapes")?,
        }
        if let Some(h) = &self.family.metadata_hint {
            writeln!(f, "  metadata says: {h}")?;
        }
        writeln!(
            f,
            "  applied {} parameters, skipped {} keys",
            self.applied.len(),
            self.skipped.len()
        )?;
        for a in &self.applied {
            writeln!(
                f,
                "    + {:?} {} {:?} [{}] ×{}",
                a.component, a.param, a.shape, a.label, a.strength
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "    - {}: {}", s.key, s.reason)?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
