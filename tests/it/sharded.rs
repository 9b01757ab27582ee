//! diffusers folders whose weights are shards: the folder `tests/fixtures/single-file/
//! tiny-sd15-diffusers` split at test time by the index files diffusers' own
//! `save_pretrained(max_shard_size=..)` wrote (`scripts/shard_fixtures.py` records them in
//! `tests/fixtures/sharded/`), so the folder has diffusers' layout, file names and all.

use crate::single_file::{image, job, load};
use crate::util::*;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use stipple::job::Sampler;
use stipple::model::{ComponentKind, Model, OpenOptions};
use stipple::runtime::SessionOptions;

fn unsharded() -> PathBuf {
    root().join("tests/fixtures/single-file/tiny-sd15-diffusers")
}

/// The component folders and the fp16 weights file each has in the unsharded folder.
const COMPONENTS: [(&str, &str); 3] = [
    ("unet", "diffusion_pytorch_model.fp16.safetensors"),
    ("vae", "diffusion_pytorch_model.fp16.safetensors"),
    ("text_encoder", "model.fp16.safetensors"),
];

/// A copy of the unsharded folder at `dir` whose weights are the shards of `variant` (`fp16` or
/// `plain`, the recorded diffusers layouts): each component's file is replaced by diffusers' index
/// and the shards it names, each holding the tensors the index gives it.
fn sharded_copy(variant: &str, dir: &Path) {
    copy_dir(&unsharded(), dir);
    let recorded = root().join("tests/fixtures/sharded").join(variant);
    for (comp, file) in COMPONENTS {
        let whole_path = dir.join(comp).join(file);
        let bytes = std::fs::read(&whole_path).unwrap();
        let whole = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let index_dir = recorded.join(comp);
        let index = std::fs::read_dir(&index_dir)
            .unwrap()
            .next()
            .expect("a recorded index")
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&index).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let map = json["weight_map"].as_object().unwrap();
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        assert!(shards.len() >= 2, "{}", index.display());
        for shard in shards {
            let tensors: Vec<(String, TensorView)> = map
                .iter()
                .filter(|(_, s)| s.as_str() == Some(shard))
                .map(|(name, _)| (name.clone(), whole.tensor(name).unwrap()))
                .collect();
            safetensors::serialize_to_file(tensors, None, &dir.join(comp).join(shard)).unwrap();
        }
        std::fs::copy(&index, dir.join(comp).join(index.file_name().unwrap())).unwrap();
        std::fs::remove_file(&whole_path).unwrap();
    }
}

/// Images from the sharded folders, in both diffusers namings, equal the unsharded folder's byte
/// for byte; every component reads the same tensors as before.
#[test]
fn sharded_folders_make_the_same_images() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = [job(Sampler::Euler, 4), job(Sampler::DpmPp2m, 3)];
    let mut whole = load(&unsharded(), SessionOptions::default());
    let want: Vec<Vec<u8>> = jobs.iter().map(|j| image(&mut whole, j)).collect();
    for variant in ["fp16", "plain"] {
        let dir = tmp.path().join(variant);
        sharded_copy(variant, &dir);
        assert!(!dir
            .join("unet/diffusion_pytorch_model.fp16.safetensors")
            .exists());
        let mut g = load(&dir, SessionOptions::default());
        for kind in [
            ComponentKind::Unet,
            ComponentKind::VaeDecoder,
            ComponentKind::TextEncoder,
        ] {
            let (a, b) = (
                whole.model.component(kind).unwrap(),
                g.model.component(kind).unwrap(),
            );
            let names = a.weights.shapes();
            assert_eq!(names, b.weights.shapes(), "{variant} {kind}");
            for name in names.keys() {
                let (x, y) = (a.weights.tensor(name), b.weights.tensor(name));
                assert_eq!(x.map(|t| t.data), y.map(|t| t.data), "{variant} {name}");
            }
        }
        for (j, w) in jobs.iter().zip(&want) {
            assert!(image(&mut g, j) == *w, "{variant} {:?}", j.sampler);
        }
    }
}

/// A shard set that does not hold together is refused with the file at fault named: a shard the
/// index names is missing, a tensor is in two shards, a shard lacks a tensor listed for it.
#[test]
fn broken_shard_sets_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    let unet = dir.join("unet");
    let shard = |n: u32| {
        unet.join(format!(
            "diffusion_pytorch_model.fp16-0000{n}-of-00003.safetensors"
        ))
    };
    let index = unet.join("diffusion_pytorch_model.safetensors.index.fp16.json");
    let open_error = || {
        Model::open_with(&dir, OpenOptions::default())
            .err()
            .expect("refused")
            .to_string()
    };
    sharded_copy("fp16", &dir);
    let (one, two) = (
        std::fs::read(shard(1)).unwrap(),
        std::fs::read(shard(2)).unwrap(),
    );

    std::fs::remove_file(shard(2)).unwrap();
    let e = open_error();
    assert!(e.contains(&index.display().to_string()), "{e}");
    assert!(
        e.contains(&format!(
            "names shard {}, which is missing",
            shard(2).display()
        )),
        "{e}"
    );

    // The second shard holds the first one's tensors too.
    std::fs::write(shard(2), &one).unwrap();
    let e = open_error();
    assert!(e.contains("is in two shards"), "{e}");
    assert!(e.contains(&shard(1).display().to_string()), "{e}");
    assert!(e.contains(&shard(2).display().to_string()), "{e}");

    // The first shard's file lost its tensors: an empty safetensors file.
    std::fs::write(shard(2), &two).unwrap();
    let empty: Vec<(String, TensorView)> = Vec::new();
    safetensors::serialize_to_file(empty, None, &shard(1)).unwrap();
    let e = open_error();
    assert!(e.contains("is listed in shard"), "{e}");
    assert!(
        e.contains(&format!("{}, which does not hold it", shard(1).display())),
        "{e}"
    );

    // Through the command line: an error, nothing written.
    let out = tmp.path().join("out");
    let model = dir.to_str().unwrap();
    assert_refused(&out, &["--model", model], "which does not hold it");
}
