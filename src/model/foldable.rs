//! Which weights ONNX Runtime's constant folding may consume: initializers that feed a node whose
//! every input is constant. ONNX Runtime folds such nodes when the session is built, reading the
//! weight's bytes from the graph's external data, so a weight it folds can never be a resident
//! buffer. [`constant_fed_weights`] is the entry; static shapes make `Shape` and `Size` constant,
//! which is how a position-embedding `Gather` becomes foldable.

use super::graph::{Graph, GraphError};
use super::onnx_proto::ModelProto;
use prost::Message;
use std::collections::HashSet;

/// Operators whose output is not a function of their inputs; never folded.
const RANDOM: [&str; 6] = [
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

/// The external initializers of `graph` that some constant-foldable node reads. With
/// `static_shapes` (free dimensions fixed when the session is built) every `Shape` and `Size`
/// output counts as constant; without, only those of constants do. Over-approximates: a weight
/// ONNX Runtime would leave alone may be listed, never the other way round. Graphs with subgraphs
/// list every external initializer a subgraph-holding node reads, as it cannot be followed.
pub fn constant_fed_weights(
    graph: &Graph,
    static_shapes: bool,
) -> Result<HashSet<String>, GraphError> {
    let model =
        ModelProto::decode(graph.bytes.as_slice()).map_err(|source| GraphError::Decode {
            path: graph.path.clone(),
            source,
        })?;
    let Some(g) = model.graph.as_ref() else {
        return Err(GraphError::NoGraph {
            path: graph.path.clone(),
        });
    };
    let external: HashSet<&str> = graph.externals.iter().map(|x| x.name.as_str()).collect();
    let inputs: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
    // A graph input with an initializer of the same name may be overridden at run time.
    let mut constant: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name())
        .filter(|n| !inputs.contains(n))
        .collect();
    constant.insert("");
    let mut fed = HashSet::new();
    for n in &g.node {
        let op = n.op_type();
        let has_subgraph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        let all_constant = n.input.iter().all(|i| constant.contains(i.as_str()));
        let folds = match op {
            _ if RANDOM.contains(&op) || has_subgraph => false,
            // Only the input's shape is read, never its bytes.
            "Shape" | "Size" => {
                if static_shapes || all_constant {
                    constant.extend(n.output.iter().map(String::as_str));
                }
                continue;
            }
            _ => all_constant,
        };
        if folds || has_subgraph {
            fed.extend(
                n.input
                    .iter()
                    .filter(|i| external.contains(i.as_str()))
                    .cloned(),
            );
        }
        if folds {
            constant.extend(n.output.iter().map(String::as_str));
        }
    }
    Ok(fed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fold::fold_weights;
    use crate::model::WeightMap;

    fn folded(component: &str) -> Graph {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-sd15")
            .join(component);
        let graph = Graph::read(&dir.join("model.onnx")).unwrap();
        let map: WeightMap =
            serde_json::from_slice(&std::fs::read(dir.join("weightmap.json")).unwrap()).unwrap();
        fold_weights(&graph, &map).unwrap().graph
    }

    #[test]
    fn static_shapes_make_the_clip_position_embedding_foldable() {
        // The position ids are sliced to the sequence length: with a fixed length the slice, and
        // the Gather of the position embedding, are constants ONNX Runtime computes once.
        let te = folded("text_encoder");
        let fixed = constant_fed_weights(&te, true).unwrap();
        assert!(
            fixed.iter().any(|n| n.contains("position_embedding")),
            "{fixed:?}"
        );
        assert!(
            !fixed.iter().any(|n| n.contains("token_embedding")),
            "the token ids are an input: {fixed:?}"
        );
        let free = constant_fed_weights(&te, false).unwrap();
        assert!(free.is_empty(), "{free:?}");
    }

    #[test]
    fn the_unets_weights_all_meet_activations() {
        let unet = folded("unet");
        for fixed in [false, true] {
            let fed = constant_fed_weights(&unet, fixed).unwrap();
            assert!(fed.is_empty(), "static {fixed}: {fed:?}");
        }
    }
}
