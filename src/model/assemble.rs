//! A model from an embedded template and the user's weights: each template component's diffusers
//! parameters are looked up in a weights file through a [`Naming`], and the best-fitting template
//! is chosen by whether every parameter is there with the shape its graph needs.
//!
//! [`fit`] tries one template; [`build`] makes the components of a fitted one; [`lookup`] finds
//! one component's parameters in a file (a separate VAE, say).

use super::checkpoint::{Checkpoint, Source};
use super::graph::Graph;
use super::layout::{source_shape, Component, ComponentKind, GraphFiles, GraphKind, ModelError};
use super::ldm::Naming;
use super::template::Template;
use super::weightmap::WeightMap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One component's weights: the file and how it names the diffusers parameters.
pub struct Part<'a> {
    pub file: &'a Checkpoint,
    pub naming: Naming,
}

/// One component's view: each diffusers name, where it is read from and its shape.
pub type View = Vec<(String, Source, Vec<usize>)>;

/// A template every parameter of which was found: per component, the view to open.
pub struct Fitted {
    pub template: Template,
    views: Vec<(ComponentKind, View)>,
}

/// Why a template does not fit: what was looked for and not found, the first few of them.
pub struct Misfit {
    pub template: Template,
    /// How many parameters were missing or of the wrong shape.
    pub count: usize,
    pub examples: Vec<String>,
}

/// The diffusers parameters `maps` (a component's weight maps) read, with the shape each must have.
pub fn wanted_in<'a>(
    maps: impl IntoIterator<Item = &'a WeightMap>,
) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for wm in maps {
        for e in &wm.initializers {
            // An entry whose shape the transform cannot explain is the template's own fault;
            // the consistency check of the built component reports it.
            let Some(shape) = source_shape(e, &e.shape) else {
                continue;
            };
            for src in e.sources() {
                out.entry(src.to_string()).or_insert_with(|| shape.clone());
            }
        }
    }
    out
}

fn wanted(
    template: &Template,
    kind: ComponentKind,
) -> Result<BTreeMap<String, Vec<usize>>, ModelError> {
    let maps = [
        template.weightmap(kind, false)?,
        template.weightmap(kind, true)?,
    ];
    Ok(wanted_in(maps.iter().flatten()))
}

/// Finds each of `wanted` in `part`: the view to open, or how many were not found (with the first
/// few, prefixed by `kind`, added to `examples`).
pub fn lookup(
    part: &Part,
    kind: ComponentKind,
    wanted: BTreeMap<String, Vec<usize>>,
    examples: &mut Vec<String>,
) -> Result<View, usize> {
    let naming = part.naming.with_names(wanted.keys().map(String::as_str));
    let mut view = Vec::new();
    let mut missing = 0;
    for (name, shape) in wanted {
        let candidates = naming.sources(&name, &shape);
        let found = candidates
            .iter()
            .find(|s| part.file.probe(&name, s, &shape).is_ok());
        match found {
            Some(s) => view.push((name, s.clone(), shape)),
            None => {
                missing += 1;
                if examples.len() < 4 {
                    let why = match candidates.first() {
                        None => "no place for it in this naming".to_string(),
                        Some(s) => match part.file.probe(&name, s, &shape) {
                            Err(e) => e.to_string(),
                            Ok(()) => "unreadable".to_string(),
                        },
                    };
                    examples.push(format!("{kind} {name}: {why}"));
                }
            }
        }
    }
    if missing == 0 {
        Ok(view)
    } else {
        Err(missing)
    }
}

/// Looks every parameter of `template` up in `parts`. Components the template has but `parts`
/// lacks are a misfit, except the VAE encoder, which text-to-image does without.
pub fn fit(
    template: Template,
    parts: &HashMap<ComponentKind, Part>,
) -> Result<Result<Fitted, Misfit>, ModelError> {
    let index = template.index()?;
    let mut views = Vec::new();
    let mut count = 0;
    let mut examples = Vec::new();
    for &kind in &index.components {
        let Some(part) = parts.get(&kind) else {
            if kind != ComponentKind::VaeEncoder {
                count += 1;
                examples.push(format!("{kind}: the file has no weights for it"));
            }
            continue;
        };
        match lookup(part, kind, wanted(&template, kind)?, &mut examples) {
            Ok(view) => views.push((kind, view)),
            Err(missing) => count += missing,
        }
    }
    Ok(if count == 0 {
        Ok(Fitted { template, views })
    } else {
        Err(Misfit {
            template,
            count,
            examples,
        })
    })
}

/// The components of a fitted template, their weights read through views of `parts`' files.
pub fn build(
    fitted: Fitted,
    parts: &HashMap<ComponentKind, Part>,
    path: &Path,
) -> Result<HashMap<ComponentKind, Component>, ModelError> {
    let t = fitted.template;
    let mut components = HashMap::new();
    for (kind, view) in fitted.views {
        let Some(part) = parts.get(&kind) else {
            continue;
        };
        let weights = part.file.view(view)?;
        let graph_of = |which: GraphKind| -> Result<Option<GraphFiles>, ModelError> {
            let Some(weightmap) = t.graph_weightmap(kind, which)? else {
                return Ok(None);
            };
            let file = super::template::graph_files(which).0;
            let label = Path::new("template")
                .join(t.name)
                .join(kind.dir_name())
                .join(file);
            let bytes = t.file(&format!("{kind}/{file}"))?;
            let graph = Graph::from_bytes(&label, bytes)?;
            Ok(Some(GraphFiles { graph, weightmap }))
        };
        let plain = graph_of(GraphKind::Plain)?.ok_or_else(|| ModelError::MissingFile {
            path: Path::new("template").join(t.name).join(kind.dir_name()),
            what: "the component's weight map",
        })?;
        let cuda = graph_of(GraphKind::Cuda)?;
        let component = Component::new(
            kind,
            path.to_path_buf(),
            plain,
            cuda,
            weights,
            t.config(kind)?,
        )?
        .with_fused(graph_of(GraphKind::Fused)?)?
        .with_cuda_opt_in(kind == ComponentKind::Unet && t.fused_unet_opt_in());
        components.insert(kind, component);
    }
    Ok(components)
}

/// The first template of `candidates` that fits, or an error naming the closest one and what it
/// missed.
pub fn choose(
    candidates: Vec<Template>,
    parts: &HashMap<ComponentKind, Part>,
    path: &Path,
    what: &str,
) -> Result<Fitted, ModelError> {
    let mut best: Option<Misfit> = None;
    for t in candidates {
        match fit(t, parts)? {
            Ok(f) => return Ok(f),
            Err(m) => {
                if best.as_ref().is_none_or(|b| m.count < b.count) {
                    best = Some(m);
                }
            }
        }
    }
    let message = match best {
        None => format!("no template for {what} is built into this stipple"),
        Some(m) => format!(
            "the weights do not fit the {what} architecture stipple knows: closest template {}, \
             {} parameter(s) missing or of another shape, e.g.\n  {}",
            m.template.name,
            m.count,
            m.examples.join("\n  ")
        ),
    };
    Err(ModelError::Refused {
        path: path.to_path_buf(),
        message,
    })
}
