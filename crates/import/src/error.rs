//! Import errors: each names the file and, where one is at fault, the tensor or config key.

use std::path::PathBuf;

/// Why a checkpoint could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {hint}", path.display())]
    NotFound { path: PathBuf, hint: String },
    #[error("{}: no checkpoint found (expected model.safetensors, model.safetensors.index.json or one *.safetensors file)", dir.display())]
    NoCheckpoint { dir: PathBuf },
    #[error("{}: not supported yet: {what}", path.display())]
    NotSupported { path: PathBuf, what: String },
    #[error("{}: {}{msg}", file.display(), tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Safetensors {
        file: PathBuf,
        tensor: Option<String>,
        msg: String,
    },
    #[error("{}: bad shard index: {msg}", file.display())]
    Index { file: PathBuf, msg: String },
    #[error("{}: {msg}", file.display())]
    Config { file: PathBuf, msg: String },
    #[error("{}: `{key}` = {value} is not a plausible value: {why}", file.display())]
    BadDim {
        file: PathBuf,
        key: String,
        value: String,
        why: String,
    },
    #[error("{}: cannot tell the architecture: {msg}", dir.display())]
    UnknownArchitecture { dir: PathBuf, msg: String },
    #[error("{}: tensor `{tensor}` is missing ({arch} needs it)", file.display())]
    MissingTensor {
        file: PathBuf,
        tensor: String,
        arch: &'static str,
    },
    #[error("{}: tensor `{tensor}` has shape {got:?}, but the config implies {expected:?}", file.display())]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: tensor `{tensor}` has dtype {dtype}, which attnopt does not read (not supported yet)", file.display())]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{}: the source checkpoint changed since this folder was optimised: {}: {why}; optimise the source model again", manifest.display(), file.display())]
    SourceChanged {
        manifest: PathBuf,
        file: PathBuf,
        why: String,
    },
    #[error("{}: {guesses}; a wrong guess gives wrong numbers without any error. Add the missing settings to config.json, or pass --accept-guesses to use the guesses (`attnopt inspect` lists them)", dir.display())]
    Guessed { dir: PathBuf, guesses: String },
    #[error("{}: building the graph failed: {source}", dir.display())]
    Graph {
        dir: PathBuf,
        source: attnopt_ir::GraphError,
    },
}
