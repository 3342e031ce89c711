//! Models by name, as people download them: `--hf owner/name` fetches a Hugging Face repository's
//! model files into the Hugging Face cache (the layout `huggingface_hub` and the other tools share:
//! `$HF_HOME/hub/models--owner--name/snapshots/<commit>/`) with a progress bar per file, resumes a
//! file whose download was interrupted (the partial file is kept and continued with a range
//! request), and works without the network once the snapshot is there (`HF_HUB_OFFLINE=1`, or
//! whenever the hub cannot be reached).
//!
//! Through the `hf-hub` crate, the hub's Rust client (its blocking API over ureq, https by
//! rustls): the cache layout, `HF_HOME` / `HF_ENDPOINT` / `HF_TOKEN` and the resumption are its.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use mdm_models::ModelError;

/// The files of a repository a model folder needs: the config, the weights as safetensors (one
/// file or shards with their index) and the tokenizer in either form; other formats (`.bin`,
/// `.gguf`, ...) and extras are not downloaded.
pub fn is_model_file(name: &str) -> bool {
    const NAMED: [&str; 9] = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
    ];
    !name.contains('/') && (name.ends_with(".safetensors") || NAMED.contains(&name))
}

/// Whether `arg` names a repository (`owner/name`) rather than a folder: no such path exists and
/// it has the hub's form.
pub fn is_repo_id(arg: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    !Path::new(arg).exists() && matches!(arg.split_once('/'), Some((o, n)) if ok(o) && ok(n))
}

/// The folder `--hf ARG` means: `ARG` itself, or for a repository name its snapshot, fetched by
/// [`Hub::from_env`] unless already cached.
pub fn resolve(arg: &Path) -> Result<PathBuf, ModelError> {
    match arg.to_str().filter(|a| is_repo_id(a)) {
        Some(repo) => Hub::from_env().fetch(repo),
        None => Ok(arg.to_path_buf()),
    }
}

/// Where models are fetched from and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Hub {
    /// The hub's address (`HF_ENDPOINT`; default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// The cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache: PathBuf,
    /// A progress bar per file.
    pub progress: bool,
    /// Use the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl Hub {
    /// The hub and cache the environment names (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE`), with
    /// progress bars.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self {
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            cache: Cache::from_env().path().clone(),
            progress: true,
            offline,
        }
    }

    /// The snapshot folder of repository `repo` (`owner/name`, branch `main`): its model files
    /// fetched into the cache (files already there are not fetched again), or without the
    /// network the snapshot already cached.
    pub fn fetch(&self, repo: &str) -> Result<PathBuf, ModelError> {
        let fail = |reason: String| ModelError::Hub {
            repo: repo.to_string(),
            reason,
        };
        let online = if self.offline {
            Err("offline (HF_HUB_OFFLINE)".to_string())
        } else {
            self.download(repo)
        };
        match online {
            Ok(dir) => Ok(dir),
            Err(why) => self.cached(repo).ok_or_else(|| {
                fail(format!(
                    "{why}; and no snapshot of it in the cache {}",
                    self.cache.display()
                ))
            }),
        }
    }

    /// The cached snapshot of `repo` (branch `main`), if any.
    pub fn cached(&self, repo: &str) -> Option<PathBuf> {
        Cache::new(self.cache.clone())
            .model(repo.to_string())
            .get("config.json")
            .and_then(|config| config.parent().map(Path::to_path_buf))
    }

    /// Lists the repository and fetches its model files; the error says why the hub failed.
    fn download(&self, repo: &str) -> Result<PathBuf, String> {
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_progress(self.progress)
            .with_retries(3);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder
            .build()
            .map_err(|e| format!("the hub client: {e}"))?;
        let handle = api.model(repo.to_string());
        let endpoint = self.endpoint.as_deref().unwrap_or("https://huggingface.co");
        let info = handle
            .info()
            .map_err(|e| format!("listing it at {endpoint} failed: {e}"))?;
        let files: Vec<&str> = info
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter(|f| is_model_file(f))
            .collect();
        if !files.contains(&"config.json") {
            return Err(format!("the repository at {endpoint} has no config.json"));
        }
        let mut dir = None;
        for file in files {
            let path = handle
                .get(file)
                .map_err(|e| format!("downloading {file} from {endpoint} failed: {e}"))?;
            if file == "config.json" {
                dir = path.parent().map(Path::to_path_buf);
            }
        }
        dir.ok_or_else(|| "the downloaded config.json has no folder".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        assert!(is_repo_id("GSAI-ML/LLaDA-8B-Instruct"));
        assert!(is_repo_id("Dream-org/Dream-v0-Instruct-7B"));
        assert!(!is_repo_id("llada-8b"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("/abs"));
        assert!(is_model_file("model-00001-of-00004.safetensors"));
        assert!(is_model_file("vocab.json"));
        assert!(!is_model_file("pytorch_model.bin"));
        assert!(!is_model_file("onnx/model.safetensors"));
    }
}
