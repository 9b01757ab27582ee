//! Times the patch step of an adapter swap (each ΔW computed where it is added, as the engine does)
//! on a model folder, without building sessions: what a swap costs before ONNX Runtime is involved.
//!
//! `cargo run --release --example patch_bench -- MODEL_DIR LORA.safetensors[:STRENGTH] ...`
//! (`GRAPH=cuda` patches the fused CUDA graph's weights; `RAYON_NUM_THREADS` sets the threads).

use std::time::Instant;
use stipple::model::layout::GraphKind;
use stipple::model::{ComponentKind, Model, WeightMapEntry};
use stipple::patch::DeltaSource;
use stipple::pipeline::adapters::{self, ActiveLora, PlannedView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: patch_bench MODEL_DIR LORA[:STRENGTH] ...")?;
    let model = Model::open(dir.as_ref())?;
    let mut loras = Vec::new();
    for a in args {
        let (path, mut tag) = stipple::bake::parse_lora_arg(&a)?;
        let adapter = stipple::lora::Adapter::open(&path)?;
        tag.name = adapter.name();
        loras.push(ActiveLora {
            tag,
            path,
            adapter: std::sync::Arc::new(adapter),
        });
    }
    let graph = match std::env::var("GRAPH").as_deref() {
        Ok("cuda") => GraphKind::Cuda,
        _ => GraphKind::Plain,
    };
    println!(
        "{} threads, {graph:?} graph, model dtype {}",
        rayon::current_num_threads(),
        model.index.dtype
    );
    let key = adapters::strengths_at(&loras, 0, 1);
    for round in 1..=3 {
        let t = Instant::now();
        adapters::with_plan(&model, &loras, &key, |plan| {
            let planned = t.elapsed().as_secs_f64();
            for kind in [ComponentKind::TextEncoder, ComponentKind::Unet] {
                let (Some(c), Some(component)) =
                    (model.component(kind), adapters::lora_component(kind))
                else {
                    continue;
                };
                let view = PlannedView {
                    plan: &plan,
                    component,
                };
                let Some((_, weightmap)) = c.graph_of(graph) else {
                    continue;
                };
                let entries: Vec<&WeightMapEntry> = weightmap
                    .initializers
                    .iter()
                    .filter(|e| e.sources().iter().any(|s| view.may_change(s)))
                    .collect();
                let t = Instant::now();
                match stipple::patch::fill_each(c, graph, &entries, &view) {
                    Ok(f) => println!(
                        "round {round}: {kind}: {} initializers filled in {:.3} s (plan {planned:.3} s)",
                        f.len(),
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => println!("{kind}: {e}"),
                }
            }
        })?;
        println!(
            "round {round}: {:.3} s in all; peak RSS so far {:.0} MB",
            t.elapsed().as_secs_f64(),
            stipple::bench::peak_rss_mb().unwrap_or(0.0)
        );
    }
    Ok(())
}
