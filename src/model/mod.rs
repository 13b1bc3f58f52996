//! The model boundary: a small synchronous `Classifier` trait, the model manifest and its
//! checks, the tokenizer and the libtorch backend. Nothing here runs on the async runtime; the
//! threads that drive a `Classifier` are the app's (`app::model_stage`).

pub mod check;
pub mod load;
pub mod samples;
pub mod tokenizer;
pub mod torch;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Set in the config; re-exported here where the model code names them.
pub use crate::config::{DeviceSpec, Precision};

/// A batch of token ids, padded to its longest row (row-major, `rows × cols`).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
}

impl PaddedBatch {
    /// Pads `seqs` with `pad_id` to the longest one.
    pub fn new<'a>(seqs: impl ExactSizeIterator<Item = &'a [u32]> + Clone, pad_id: i64) -> Self {
        let rows = seqs.len();
        let cols = seqs.clone().map(<[u32]>::len).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        for (r, s) in seqs.enumerate() {
            for (c, &id) in s.iter().enumerate() {
                ids[r * cols + c] = i64::from(id);
                mask[r * cols + c] = 1;
            }
        }
        PaddedBatch {
            ids,
            mask,
            rows,
            cols,
        }
    }

    /// Tokens computed including padding.
    pub fn padded_tokens(&self) -> usize {
        self.rows * self.cols
    }
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {message} (export a model with scripts/export_model.py or scripts/make_demo_model.py)")]
    Missing { path: PathBuf, message: String },
    #[error("model manifest {path} is invalid: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("checksum mismatch for {path}: manifest says {expected}, file has {actual} (re-export the model, or set model.verify_checksums = false if you edited it on purpose)")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("device {0} is not available on this machine")]
    Device(String),
    #[error("{0}")]
    Precision(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

impl ModelError {
    /// Only a failed forward pass may succeed on retry (e.g. a transient CUDA OOM).
    pub fn is_retriable(&self) -> bool {
        matches!(self, ModelError::Inference(_))
    }
}

/// A sequence classifier. Implementations are synchronous and owned by one inference thread.
pub trait Classifier: Send {
    /// Class names, in the order of the probabilities `classify` returns.
    fn labels(&self) -> &[String];
    /// One probability vector per row of `batch`.
    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Batch shapes (rows × tokens) worth running once before real traffic: one tweet, and full
/// batches at short, typical and maximal lengths, each kept within the token budget.
pub fn warmup_shapes(
    max_batch_size: usize,
    max_batch_tokens: usize,
    max_length: usize,
) -> Vec<(usize, usize)> {
    let mut shapes = vec![(1, 16.min(max_length))];
    for cols in [16, 48, max_length] {
        let cols = cols.min(max_length);
        let rows = max_batch_size.min(max_batch_tokens / cols).max(1);
        if !shapes.contains(&(rows, cols)) {
            shapes.push((rows, cols));
        }
    }
    shapes
}

/// Runs `model` on dummy batches of `shapes` (token id 0, full mask) and returns the seconds it
/// took.
pub fn warm_up(model: &mut dyn Classifier, shapes: &[(usize, usize)]) -> Result<f64, ModelError> {
    let started = std::time::Instant::now();
    for &(rows, cols) in shapes {
        let row = vec![0u32; cols];
        let batch = PaddedBatch::new(std::iter::repeat_n(row.as_slice(), rows), 1);
        model.classify(&batch)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `manifest.json` written by the export scripts next to `model.pt` and `tokenizer.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    pub max_length: usize,
    pub pad_id: i64,
    pub files: ManifestFiles,
    /// Set for a quantised export (`scripts/quantize_model.py`): CPU only, checked at load with
    /// the int8 parity bounds against its fp32 source's reference.
    #[serde(default)]
    pub quantization: Option<Quantization>,
    /// sha256 of `manifest.json` as read (it lists every file's sha256, so it pins the whole
    /// version: weights, tokenizer, labels); deployment records carry it.
    #[serde(skip)]
    pub digest: String,
}

/// The bytes of a version's files as read once and hashed: what the model and tokenizer are
/// built from, so a file swapped on disk after the check is never the one loaded.
pub struct ModelFiles {
    pub weights: Vec<u8>,
    pub tokenizer: Vec<u8>,
}

/// How a model version was derived from an fp32 one.
#[derive(Debug, Clone, Deserialize)]
pub struct Quantization {
    /// `dynamic-int8`: int8 weights of the Linear layers, activations quantised per batch.
    pub kind: String,
    /// The fp32 version it was made from, `NAME@VERSION#HASH`.
    pub from: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFiles {
    pub model: ManifestFile,
    pub tokenizer: ManifestFile,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Missing {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        m.digest = sha256_hex(text.as_bytes());
        if m.labels.is_empty() || m.max_length < 3 {
            return Err(ModelError::Manifest {
                path,
                message: "needs at least one label and max_length ≥ 3".into(),
            });
        }
        if let Err(message) = ModelId::new(&m.name, &m.version, "") {
            return Err(ModelError::Manifest { path, message });
        }
        for f in [&m.files.model, &m.files.tokenizer] {
            let plain = !f.path.is_empty()
                && Path::new(&f.path)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(ModelError::Manifest {
                    path,
                    message: format!(
                        "file {:?} must be a relative path inside the model directory (no `..`, not absolute)",
                        f.path
                    ),
                });
            }
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ModelError::Manifest {
                    path,
                    message: format!("sha256 of {:?} must be 64 hex digits", f.path),
                });
            }
        }
        Ok(m)
    }

    /// The path of `file` in `dir`, after following links: it must stay inside `dir` (a link
    /// planted in an export cannot make a replica read a file from elsewhere).
    pub fn file_in(&self, dir: &Path, file: &ManifestFile) -> Result<PathBuf, ModelError> {
        let missing = |path: PathBuf, e: std::io::Error| ModelError::Missing {
            path,
            message: e.to_string(),
        };
        let root = dir
            .canonicalize()
            .map_err(|e| missing(dir.to_path_buf(), e))?;
        let path = dir.join(&file.path);
        let real = path.canonicalize().map_err(|e| missing(path.clone(), e))?;
        if !real.starts_with(&root) {
            return Err(ModelError::Manifest {
                path,
                message: format!(
                    "{:?} resolves to {}, outside the model directory {}: replace the link with the file itself",
                    file.path,
                    real.display(),
                    root.display()
                ),
            });
        }
        Ok(real)
    }

    /// `name@version`: the version recorded with every classification.
    pub fn model_version(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The version's identity: `name@version` and the short hash of its weights file (as the
    /// manifest records it; [`Manifest::verify`] proves the file matches).
    pub fn id(&self) -> ModelId {
        ModelId {
            name: self.name.clone(),
            version: self.version.clone(),
            hash: self
                .files
                .model
                .sha256
                .chars()
                .take(ModelId::HASH_LEN)
                .collect(),
        }
    }

    /// Checks the files' sha256 against the manifest.
    pub fn verify(&self, dir: &Path) -> Result<(), ModelError> {
        self.read_files(dir, true).map(drop)
    }

    /// Reads the weights and the tokenizer once, checking each against its sha256 when
    /// `verify`; the model is built from these bytes, never by reopening the files.
    pub fn read_files(&self, dir: &Path, verify: bool) -> Result<ModelFiles, ModelError> {
        let read = |f: &ManifestFile| -> Result<Vec<u8>, ModelError> {
            let path = self.file_in(dir, f)?;
            let bytes = std::fs::read(&path).map_err(|e| ModelError::Missing {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if verify {
                let actual = sha256_hex(&bytes);
                if actual != f.sha256 {
                    return Err(ModelError::Checksum {
                        path,
                        expected: f.sha256.clone(),
                        actual,
                    });
                }
            }
            Ok(bytes)
        };
        Ok(ModelFiles {
            weights: read(&self.files.model)?,
            tokenizer: read(&self.files.tokenizer)?,
        })
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// A model version's identity, recorded with every prediction: `NAME@VERSION` plus a short hash
/// of its weights, so that weights re-exported under the same version are a different identity
/// (never deduplicated away as if they were the old ones). Written `NAME@VERSION#HASH`.
///
/// Guarantee: a `ModelId` holds only names and versions that are one plain directory name each
/// ([`ModelId::valid_part`]) — parsed from the command line or read from a control record alike
/// — so `store/NAME/VERSION` can never leave the model store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(try_from = "ModelIdFields")]
pub struct ModelId {
    pub name: String,
    pub version: String,
    /// First [`ModelId::HASH_LEN`] hex digits of the weights file's sha256.
    pub hash: String,
}

/// A `ModelId` as written in a control record, before its parts are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelIdFields {
    name: String,
    version: String,
    hash: String,
}

impl TryFrom<ModelIdFields> for ModelId {
    type Error = String;
    fn try_from(f: ModelIdFields) -> Result<Self, String> {
        ModelId::new(&f.name, &f.version, &f.hash)
    }
}

impl ModelId {
    pub const HASH_LEN: usize = 12;
    /// Longest name or version.
    pub const PART_MAX: usize = 64;

    /// The one rule for a name and a version: `[A-Za-z0-9_][A-Za-z0-9._-]{0,63}` — a single
    /// directory name that is never `.`, `..`, absolute or hidden.
    pub fn valid_part(p: &str) -> bool {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= Self::PART_MAX
            && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    }

    /// Checks each part; `hash` is empty (to be resolved) or hex digits (at most a sha256).
    pub fn new(name: &str, version: &str, hash: &str) -> Result<Self, String> {
        let show = |p: &str| -> String {
            let short: String = p.chars().take(Self::PART_MAX).collect();
            if short.len() < p.len() {
                format!("{short:?}…")
            } else {
                format!("{short:?}")
            }
        };
        if !Self::valid_part(name) || !Self::valid_part(version) {
            return Err(format!(
                "model name {} / version {}: each must be 1–{} letters, digits, `.`, `_` or `-`, not starting with `.` or `-` (they are directory names in the model store)",
                show(name),
                show(version),
                Self::PART_MAX
            ));
        }
        if hash.len() > 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "weights hash {} of {name}@{version}: expected hex digits (the first {} of the weights' sha256)",
                show(hash),
                Self::HASH_LEN
            ));
        }
        Ok(ModelId {
            name: name.into(),
            version: version.into(),
            hash: hash.to_ascii_lowercase(),
        })
    }

    /// `NAME@VERSION` (what analysts filter on; the hash tells re-exports apart).
    pub fn version_label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Parses `NAME@VERSION` (hash empty: to be resolved from the model store) or
    /// `NAME@VERSION#HASH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (nv, hash) = s.split_once('#').unwrap_or((s, ""));
        let Some((n, v)) = nv.split_once('@') else {
            return Err(format!(
                "`{s}`: write a model version as NAME@VERSION (letters, digits, . _ -), optionally #WEIGHTS_HASH"
            ));
        };
        ModelId::new(n, v, hash).map_err(|e| format!("`{s}`: {e}"))
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)?;
        if !self.hash.is_empty() {
            write!(f, "#{}", self.hash)?;
        }
        Ok(())
    }
}

/// Index of the largest probability.
pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fills_to_the_longest_row_with_a_zero_mask() {
        let a: Vec<u32> = vec![0, 10, 2];
        let b: Vec<u32> = vec![0, 2];
        let p = PaddedBatch::new([a.as_slice(), b.as_slice()].into_iter(), 1);
        assert_eq!((p.rows, p.cols), (2, 3));
        assert_eq!(p.ids, vec![0, 10, 2, 0, 2, 1]);
        assert_eq!(p.mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(p.padded_tokens(), 6);
    }

    #[test]
    fn model_ids_are_plain_directory_names_whether_parsed_or_read_from_a_record() {
        assert!(ModelId::parse("demo@1").is_ok());
        assert!(ModelId::parse("camembert_base@2026.11-a#ABCdef012345").is_ok());
        for bad in [
            "@1",
            "demo@",
            "../x@1",
            "demo@..",
            "demo@.",
            ".hidden@1",
            "-x@1",
            "/etc@1",
            "a/b@1",
            "demo@1/..",
            "demo@1#xyz",
            "demo",
        ] {
            assert!(ModelId::parse(bad).is_err(), "{bad} was accepted");
        }
        let long = "a".repeat(65);
        assert!(ModelId::parse(&format!("{long}@1")).is_err());
        let record = |name: &str, version: &str| {
            serde_json::from_value::<ModelId>(serde_json::json!({
                "name": name, "version": version, "hash": "fdfbc5efb4a5"
            }))
        };
        assert!(record("demo", "1").is_ok());
        for (n, v) in [
            ("/tmp/evil", "1"),
            ("..", "1"),
            ("demo", "../../x"),
            ("demo", ""),
        ] {
            let e = record(n, v).unwrap_err().to_string();
            assert!(e.contains("directory names"), "{n}/{v}: {e}");
        }
        let id = ModelId::parse("demo@1#fdfbc5efb4a5").unwrap();
        let back: ModelId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id, "the wire form is unchanged");
    }

    #[test]
    fn device_spec_parses_known_forms_only() {
        assert_eq!(DeviceSpec::parse("auto"), Ok(DeviceSpec::Auto));
        assert_eq!(DeviceSpec::parse("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        assert!(DeviceSpec::parse("gpu").is_err());
    }

    #[test]
    fn warmup_shapes_stay_within_the_limits() {
        let shapes = warmup_shapes(64, 4096, 128);
        assert_eq!(shapes, vec![(1, 16), (64, 16), (64, 48), (32, 128)]);
        for (r, c) in warmup_shapes(8, 100, 40) {
            assert!(r <= 8 && c <= 40 && (r * c <= 100 || r == 1), "{r}x{c}");
        }
    }

    #[test]
    fn precision_parses_known_forms_only() {
        assert_eq!(Precision::parse("bf16"), Ok(Precision::Bf16));
        assert!(Precision::parse("half").is_err());
    }

    #[test]
    fn model_ids_parse_and_print_with_their_weights_hash() {
        let id = ModelId::parse("mine@2#ABCDEF012345").unwrap();
        assert_eq!((id.name.as_str(), id.version.as_str()), ("mine", "2"));
        assert_eq!(id.to_string(), "mine@2#abcdef012345");
        assert_eq!(id.version_label(), "mine@2");
        assert_eq!(ModelId::parse("mine@2").unwrap().hash, "");
        for bad in ["mine", "@2", "mine@", "../x@1", "a@1#xyz"] {
            assert!(ModelId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argmax_picks_the_largest() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }
}
