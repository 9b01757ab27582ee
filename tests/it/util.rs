//! Shared helpers: the bundled tiny model, ONNX Runtime, reference tensors and images.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use stipple::model::Checkpoint;
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::Runtime;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/tiny-sd15")
}

pub fn reference(name: &str) -> PathBuf {
    tiny_model().join("reference").join(name)
}

pub fn runtime() -> &'static Runtime {
    Runtime::get(None, false).expect("ONNX Runtime (run scripts/setup)")
}

/// One generator for the whole test binary: session creation costs ~1 s. Each test gets it back
/// with the pristine base weights, whatever adapters the test before it fused.
pub fn generator() -> std::sync::MutexGuard<'static, Generator> {
    static G: OnceLock<Mutex<Generator>> = OnceLock::new();
    let mut g = G
        .get_or_init(|| {
            Mutex::new(
                Generator::load(EngineSpec::new(tiny_model()), runtime())
                    .expect("tiny model loads"),
            )
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    g.set_lora_method(Default::default());
    g.set_unet_batch(stipple::pipeline::generator::DEFAULT_UNET_BATCH);
    g.dials().clear();
    g.reset_adapters().expect("back to the base weights");
    g
}

/// A generator of its own for the tiny model, with `opts`, LoRA folders `lora_dirs` and the UNet
/// run through fixed buffers when `bound_unet`.
pub fn tiny_generator(
    opts: stipple::runtime::SessionOptions,
    lora_dirs: Vec<PathBuf>,
    bound_unet: bool,
) -> Generator {
    let spec = EngineSpec {
        session: opts,
        lora_dirs,
        bound_unet,
        ..EngineSpec::new(tiny_model())
    };
    Generator::load(spec, runtime()).expect("tiny model loads")
}

/// A 64×64, 3-step Euler job: what the image tests compare.
pub fn small_job(prompt: &str, seed: u64) -> stipple::job::Job {
    stipple::job::Job {
        prompt: prompt.into(),
        negative: String::new(),
        sampler: stipple::job::Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: 3,
        cfg: 7.0,
        width: 64,
        height: 64,
        seed,
        batch: 1,
        init: None,
        hires: None,
    }
}

/// The pixels of the first image `g` makes for `job`, or the generator's error.
pub fn try_image(g: &mut Generator, job: &stipple::job::Job) -> Result<Vec<u8>, String> {
    Ok(try_image_and_infotext(g, job)?.0)
}

/// The pixels and infotext of the first image `g` makes for `job`, or the generator's error.
pub fn try_image_and_infotext(
    g: &mut Generator,
    job: &stipple::job::Job,
) -> Result<(Vec<u8>, String), String> {
    let mut out = None;
    g.generate(
        job,
        &|| stipple::engine::Stop::No,
        &mut |e| {
            if let stipple::job::Event::Image {
                image, infotext, ..
            } = e
            {
                out.get_or_insert((image.pixels, infotext));
            }
        },
        1,
    )
    .map_err(|e| e.to_string())?;
    out.ok_or_else(|| "no image".to_string())
}

/// `generate --prompt x --steps 4 --out OUT EXTRA` fails with `needle` in its error, without a
/// panic and without writing `out`.
pub fn assert_refused(out: &Path, extra: &[&str], needle: &str) {
    let mut args = vec!["generate", "--prompt", "x", "--steps", "4", "--out"];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(extra);
    let (ok, _, stderr) = crate::cli::run(&args);
    assert!(!ok, "{extra:?} should fail");
    assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    assert!(!out.exists(), "{extra:?} wrote {}", out.display());
}

/// `batch --template TEMPLATE --out OUT --dry-run`: whether it succeeded, the JSON lines it
/// printed, and its stderr.
pub fn dry_run(template: &str, out: &Path) -> (bool, Vec<serde_json::Value>, String) {
    let (ok, stdout, stderr) = crate::cli::run(&[
        "batch",
        "--template",
        template,
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
    ]);
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (ok, lines, stderr)
}

/// `FILE[:spec]` arguments as the engine resolves them (the parser `bake --lora` uses).
pub fn active_loras(args: &[String]) -> Vec<stipple::pipeline::adapters::ActiveLora> {
    args.iter()
        .map(|a| {
            let (path, mut tag) = stipple::bake::parse_lora_arg(a).unwrap();
            let adapter = stipple::lora::Adapter::open(&path).unwrap();
            tag.name = adapter.name();
            stipple::pipeline::adapters::ActiveLora {
                tag,
                path,
                adapter: std::sync::Arc::new(adapter),
            }
        })
        .collect()
}

/// The deltas the engine fuses for `loras` at their first-step strengths.
pub fn fused_deltas(
    model: &stipple::model::Model,
    loras: &[stipple::pipeline::adapters::ActiveLora],
) -> stipple::pipeline::ComponentDeltas {
    let key = stipple::pipeline::adapters::strengths_at(loras, 0, 1);
    stipple::pipeline::adapters::compute(model, loras, &key)
        .unwrap()
        .0
}

/// Copies a folder tree (the fixtures' `reference/` folders are skipped: tests never need them).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "reference" {
                copy_dir(&e.path(), &to.join(e.file_name()));
            }
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn ref_tensors() -> Checkpoint {
    Checkpoint::open(&reference("tensors.safetensors")).expect("reference tensors")
}

pub fn ref_tensor(c: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = c
        .tensor(name)
        .unwrap_or_else(|| panic!("reference tensor {name}"));
    (t.shape.to_vec(), t.to_f32())
}

/// Decodes an 8-bit RGB PNG.
pub fn read_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut r = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    (info.width, info.height, buf)
}

pub fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// A test whose environment (a tool, a file) is missing: under `CI=true` that is a failure, since
/// CI must run every test; elsewhere the test is skipped with `why` on stderr.
pub fn environment_missing(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true but the test cannot run: {why}");
    eprintln!("skipped: {why}");
}
