//! Folds the weight-only nodes ONNX Runtime would constant-fold (the Transpose of a matrix before a
//! MatMul, the Unsqueeze of a norm's scale) into the weights themselves, each fold recorded in the
//! weight's recipe. A session built from the result with graph optimisations still reads every
//! weight from the buffer it is given, which resident weights need. [`fold_weights`] is the entry.

use super::graph::{Graph, GraphError};
use super::layout::buffer_len;
use super::onnx_proto::{tensor_proto::DataLocation, AttributeProto, ModelProto, TensorProto};
use super::weightmap::{Transform, WeightMap, WeightMapEntry};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// A graph with weight-only nodes folded away, and the weight map that builds its initializers.
pub struct Folded {
    pub graph: Graph,
    pub weightmap: WeightMap,
    /// How many nodes were folded into weights.
    pub folded: usize,
}

/// Folds every Transpose (of a 2-D weight) and Unsqueeze that is a weight's only consumer into that
/// weight: the initializer takes the node's output name and shape, and its bytes move to a region
/// appended to the external-data buffer (the old region stays unreferenced). Graphs with subgraphs
/// are left as they are.
pub fn fold_weights(graph: &Graph, weightmap: &WeightMap) -> Result<Folded, GraphError> {
    let bad = |source| GraphError::Decode {
        path: graph.path.clone(),
        source,
    };
    let mut model = ModelProto::decode(graph.bytes.as_slice()).map_err(bad)?;
    let Some(g) = model.graph.as_mut() else {
        return Err(GraphError::NoGraph {
            path: graph.path.clone(),
        });
    };
    let unchanged = || Folded {
        graph: Graph {
            path: graph.path.clone(),
            bytes: graph.bytes.clone(),
            externals: graph.externals.clone(),
            inputs: graph.inputs.clone(),
            outputs: graph.outputs.clone(),
        },
        weightmap: weightmap.clone(),
        folded: 0,
    };
    let has_subgraphs = g.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    if has_subgraphs {
        return Ok(unchanged());
    }
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    // Small constants an Unsqueeze may take its axes from: inline initializers and Constant nodes.
    let inline: HashMap<&str, &TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.data_location() != DataLocation::External)
        .map(|t| (t.name(), t))
        .chain(
            g.node
                .iter()
                .filter(|n| n.op_type() == "Constant")
                .filter_map(|n| {
                    let value = n
                        .attribute
                        .iter()
                        .find(|a| a.name() == "value")?
                        .t
                        .as_ref()?;
                    Some((n.output.first()?.as_str(), value))
                }),
        )
        .collect();
    // (initializer, node, new name, new dims, new transform)
    let mut plan: Vec<(String, usize, String, Vec<i64>, Transform)> = Vec::new();
    let dims_of: HashMap<&str, &[i64]> = g
        .initializer
        .iter()
        .map(|t| (t.name(), t.dims.as_slice()))
        .collect();
    for e in &weightmap.initializers {
        let (Some(users), Some(dims)) =
            (consumers.get(e.name.as_str()), dims_of.get(e.name.as_str()))
        else {
            continue;
        };
        let [user] = users[..] else { continue };
        let n = &g.node[user];
        let (Some(out), true) = (n.output.first(), n.input.first() == Some(&e.name)) else {
            continue;
        };
        if outputs.contains(out.as_str()) || outputs.contains(e.name.as_str()) {
            continue;
        }
        let folded = match n.op_type() {
            "Transpose" if dims.len() == 2 && is_matrix_transpose(&n.attribute) => {
                let transform = match e.transform {
                    Transform::Identity => Transform::Transpose,
                    Transform::Transpose => Transform::Identity,
                    _ => continue,
                };
                (vec![dims[1], dims[0]], transform)
            }
            "Unsqueeze" => {
                match unsqueezed(dims, n.attribute.as_slice(), n.input.get(1), &inline) {
                    Some(d) => (d, e.transform),
                    None => continue,
                }
            }
            _ => continue,
        };
        plan.push((e.name.clone(), user, out.clone(), folded.0, folded.1));
    }
    if plan.is_empty() {
        return Ok(unchanged());
    }
    let mut next = buffer_len(graph).next_multiple_of(64);
    let mut entries: HashMap<String, WeightMapEntry> = weightmap
        .initializers
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect();
    let mut removed = HashSet::new();
    let by_name: HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    for (name, node, new_name, dims, transform) in &plan {
        let (Some(&ti), Some(mut entry)) = (by_name.get(name), entries.remove(name)) else {
            continue;
        };
        let t = &mut g.initializer[ti];
        t.name = Some(new_name.clone());
        t.dims = dims.clone();
        for kv in t.external_data.iter_mut() {
            if kv.key() == "offset" {
                kv.value = Some(next.to_string());
            }
        }
        if !t.external_data.iter().any(|kv| kv.key() == "offset") {
            t.external_data
                .push(super::onnx_proto::StringStringEntryProto {
                    key: Some("offset".into()),
                    value: Some(next.to_string()),
                });
        }
        entry.name = new_name.clone();
        entry.transform = *transform;
        entry.shape = dims.iter().map(|&d| d as usize).collect();
        entry.offset = next;
        next = (next + entry.length).next_multiple_of(64);
        entries.insert(new_name.clone(), entry);
        removed.insert(*node);
    }
    let mut i = 0;
    g.node.retain(|_| {
        let keep = !removed.contains(&i);
        i += 1;
        keep
    });
    let order: Vec<String> = weightmap
        .initializers
        .iter()
        .map(|e| {
            plan.iter()
                .find(|p| p.0 == e.name)
                .map_or(e.name.clone(), |p| p.2.clone())
        })
        .collect();
    let mut folded_map = weightmap.clone();
    folded_map.initializers = order.iter().filter_map(|n| entries.remove(n)).collect();
    let bytes = model.encode_to_vec();
    Ok(Folded {
        graph: Graph::from_bytes(&graph.path, bytes)?,
        weightmap: folded_map,
        folded: removed.len(),
    })
}

/// A Transpose that swaps the two axes of a matrix (no `perm`, or `perm = [1, 0]`).
fn is_matrix_transpose(attrs: &[AttributeProto]) -> bool {
    match attrs.iter().find(|a| a.name() == "perm") {
        None => true,
        Some(a) => a.ints == [1, 0],
    }
}

/// The dims after an Unsqueeze whose axes come from its attribute (opset < 13) or from a constant
/// second input; None when the axes are not known here.
fn unsqueezed(
    dims: &[i64],
    attrs: &[AttributeProto],
    axes_input: Option<&String>,
    inline: &HashMap<&str, &TensorProto>,
) -> Option<Vec<i64>> {
    let axes: Vec<i64> = match (attrs.iter().find(|a| a.name() == "axes"), axes_input) {
        (Some(a), _) => a.ints.clone(),
        (None, Some(name)) => {
            let t = inline.get(name.as_str())?;
            if !t.int64_data.is_empty() {
                t.int64_data.clone()
            } else {
                t.raw_data
                    .as_deref()?
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect()
            }
        }
        (None, None) => return None,
    };
    let rank = (dims.len() + axes.len()) as i64;
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .map(|a| usize::try_from(a).ok().filter(|&a| (a as i64) < rank))
        .collect::<Option<_>>()?;
    axes.sort_unstable();
    let mut out = Vec::with_capacity(rank as usize);
    let mut rest = dims.iter();
    for i in 0..rank as usize {
        if axes.binary_search(&i).is_ok() {
            out.push(1);
        } else {
            out.push(*rest.next()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsqueeze_axes_from_the_attribute_and_negative_ones() {
        let attr = |ints: Vec<i64>| AttributeProto {
            name: Some("axes".into()),
            ints,
            ..Default::default()
        };
        let none = HashMap::new();
        assert_eq!(
            unsqueezed(&[320], &[attr(vec![1, 2])], None, &none),
            Some(vec![320, 1, 1])
        );
        assert_eq!(
            unsqueezed(&[320], &[attr(vec![0, -1])], None, &none),
            Some(vec![1, 320, 1])
        );
        assert_eq!(unsqueezed(&[320], &[], None, &none), None);
    }

    #[test]
    fn the_tiny_models_weight_only_nodes_fold_into_their_weights() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15");
        for (component, transposes, unsqueezes) in [("text_encoder", 30, 0), ("unet", 60, 62)] {
            let dir = root.join(component);
            let graph = Graph::read(&dir.join("model.onnx")).unwrap();
            let map: WeightMap =
                serde_json::from_slice(&std::fs::read(dir.join("weightmap.json")).unwrap())
                    .unwrap();
            let f = fold_weights(&graph, &map).unwrap();
            assert_eq!(f.folded, transposes + unsqueezes, "{component}");
            let t = f
                .weightmap
                .initializers
                .iter()
                .filter(|e| e.transform == Transform::Transpose)
                .count();
            assert_eq!(t, transposes, "{component}: transposes became recipes");
            assert_eq!(f.weightmap.initializers.len(), map.initializers.len());
            // Every recipe names an external initializer of the folded graph, in its own region.
            let ext: HashMap<&str, _> = f
                .graph
                .externals
                .iter()
                .map(|x| (x.name.as_str(), x))
                .collect();
            for e in &f.weightmap.initializers {
                let x = ext[e.name.as_str()];
                assert_eq!((x.offset, x.length), (e.offset, e.length), "{}", e.name);
                let dims: Vec<usize> = x.dims.clone();
                assert_eq!(dims, e.shape, "{}", e.name);
            }
            let mut spans: Vec<_> = f
                .graph
                .externals
                .iter()
                .map(|x| (x.offset, x.length))
                .collect();
            spans.sort();
            assert!(
                spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
                "{component}: overlap"
            );
        }
    }
}
