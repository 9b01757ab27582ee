//! Opening a model: a single-file checkpoint, a diffusers folder or a stipple folder, told apart
//! by what the path holds, then the optional separate VAE swapped in. The readers of each kind sit
//! below this dispatcher and never call back into it.

use super::layout::{Model, ModelError, OpenOptions};
use std::path::Path;

impl Model {
    /// Opens a stipple folder, a diffusers folder or a single-file checkpoint with the default
    /// options (fp32 templates first, trained weights).
    pub fn open(path: &Path) -> Result<Model, ModelError> {
        Model::open_with(path, OpenOptions::default())
    }

    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Model, ModelError> {
        let mut model = Model::open_base(path, &opts)?;
        if let Some(vae) = &opts.vae {
            super::vae_file::replace_vae(&mut model, vae)?;
        }
        if let Some(p) = opts.prediction {
            model.set_prediction(p, "--prediction")?;
        }
        Ok(model)
    }

    fn open_base(path: &Path, opts: &OpenOptions) -> Result<Model, ModelError> {
        if path.is_file() {
            return super::single_file::open(path, opts);
        }
        if !path.is_dir() {
            return Err(ModelError::Missing(path.to_path_buf()));
        }
        let index_path = path.join("model_index.json");
        if index_path.is_file() {
            let value: serde_json::Value =
                super::layout::read_json(&index_path, "the model index")?;
            if value.get("_class_name").is_some() {
                return super::diffusers_dir::open(path, &value, opts);
            }
        }
        Model::open_folder(path)
    }
}
