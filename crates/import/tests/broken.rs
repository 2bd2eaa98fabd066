//! Untrusted-input corpus: broken checkpoints must give a typed [`ImportError`] naming the
//! file (and the tensor or config key at fault), never a panic, an out-of-bounds read or an
//! allocation sized by a lying header.
//!
//! Each test copies a fixture folder into a temporary directory, breaks it in one specific
//! way (raw bytes and JSON are written directly, so headers can lie), calls
//! `attnopt_import::load`, and checks the error variant and its message. Run with
//! `--nocapture` to see every message.

use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use attnopt_import::ImportError;
use serde_json::{json, Map, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers: fixture copies, a tiny safetensors reader/writer, error checks.
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A private copy of `fixtures/{name}` (weights, config, index; no goldens).
fn copy_fixture(name: &str) -> TempDir {
    let tmp = TempDir::new().expect("temp dir");
    for entry in fs::read_dir(fixture(name)).expect("fixture folder") {
        let path = entry.expect("fixture entry").path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file == "golden.safetensors" || file == "meta.json" {
            continue;
        }
        fs::copy(&path, tmp.path().join(&file)).expect("copy fixture file");
    }
    tmp
}

/// One tensor of a safetensors file, with its bytes.
#[derive(Clone, Debug)]
struct T {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

/// The header (as JSON) and data area of a well-formed safetensors file.
fn read_raw(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let b = fs::read(path).expect("read safetensors");
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).expect("header");
    (header, b[8 + n..].to_vec())
}

/// Writes `len` (which may lie) + `header` + `data`.
fn write_bytes(path: &Path, len: u64, header: &[u8], data: &[u8]) {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    fs::write(path, out).expect("write safetensors");
}

/// Writes a header (which may lie about offsets, shapes, dtypes) with its true length.
fn write_raw(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    write_bytes(path, h.len() as u64, &h, data);
}

/// The tensors of a well-formed file, in storage order.
fn read_st(path: &Path) -> Vec<T> {
    let (header, data) = read_raw(path);
    let mut ts: Vec<(u64, T)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(name, info)| {
            let offs: Vec<u64> = serde_json::from_value(info["data_offsets"].clone()).unwrap();
            let t = T {
                name: name.clone(),
                dtype: info["dtype"].as_str().unwrap().into(),
                shape: serde_json::from_value(info["shape"].clone()).unwrap(),
                bytes: data[offs[0] as usize..offs[1] as usize].to_vec(),
            };
            (offs[0], t)
        })
        .collect();
    ts.sort_by_key(|(s, _)| *s);
    ts.into_iter().map(|(_, t)| t).collect()
}

/// Writes an honest safetensors file: offsets laid out contiguously in the given order.
fn write_st(path: &Path, tensors: &[T]) {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        data.extend_from_slice(&t.bytes);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    write_raw(path, &header, &data);
}

/// Rewrites `path` after `f` edits its tensors.
fn edit_st(path: &Path, f: impl FnOnce(&mut Vec<T>)) {
    let mut ts = read_st(path);
    f(&mut ts);
    write_st(path, &ts);
}

/// Rewrites `path`'s header after `f` edits it; the data area is kept byte for byte.
fn edit_header(path: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let (mut header, data) = read_raw(path);
    f(&mut header);
    write_raw(path, &header, &data);
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    f(&mut v);
    fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn tensor_mut<'a>(ts: &'a mut [T], name: &str) -> &'a mut T {
    ts.iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

/// `load(path)` must fail without panicking; the error is returned.
fn load_err(path: &Path) -> ImportError {
    match std::panic::catch_unwind(AssertUnwindSafe(|| attnopt_import::load(path))) {
        Err(_) => panic!("load panicked on {}", path.display()),
        Ok(Ok(_)) => panic!("load accepted the broken checkpoint {}", path.display()),
        Ok(Err(e)) => e,
    }
}

/// Checks that the message names `file` (full path) and each of `names`; prints it.
fn check_msg(case: &str, tmp: &TempDir, e: &ImportError, file: &Path, names: &[&str]) {
    let msg = e.to_string();
    let shown = msg.replace(&tmp.path().display().to_string(), "<tmp>");
    println!("[{case}] {shown}");
    assert!(
        msg.contains(&file.display().to_string()),
        "[{case}] message does not name {}: {msg}",
        file.display()
    );
    for n in names {
        assert!(
            msg.contains(n),
            "[{case}] message does not name `{n}`: {msg}"
        );
    }
}

/// `load` fails with `ImportError::Safetensors` on `file`; returns the tensor it blamed.
fn safetensors_err(case: &str, tmp: &TempDir, file: &Path) -> Option<String> {
    let e = load_err(tmp.path());
    check_msg(case, tmp, &e, file, &[]);
    match &e {
        ImportError::Safetensors {
            file: f, tensor, ..
        } => {
            assert_eq!(f, file, "[{case}] wrong file");
            if let Some(t) = tensor {
                let msg = e.to_string();
                assert!(msg.contains(&format!("`{t}`")), "[{case}] {msg}");
            }
            tensor.clone()
        }
        other => panic!("[{case}] expected ImportError::Safetensors, got {other:?}"),
    }
}

/// Like [`safetensors_err`], but the error must blame tensor `want`.
fn safetensors_err_on(case: &str, tmp: &TempDir, file: &Path, want: &str) {
    let got = safetensors_err(case, tmp, file);
    assert_eq!(
        got.as_deref(),
        Some(want),
        "[{case}] blamed the wrong tensor"
    );
}

const BERT_QB: &str = "encoder.layer.0.attention.self.query.bias";

fn weights_file(tmp: &TempDir) -> PathBuf {
    tmp.path().join("model.safetensors")
}

// ---------------------------------------------------------------------------------------------
// The safetensors container: lengths, header, offsets.
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_file() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    fs::write(&f, b"").unwrap();
    assert_eq!(safetensors_err("empty file", &tmp, &f), None);
}

#[test]
fn shorter_than_length_prefix() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    fs::write(&f, [1u8, 2, 3]).unwrap();
    assert_eq!(safetensors_err("3-byte file", &tmp, &f), None);
}

#[test]
fn truncated_mid_header() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let b = fs::read(&f).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    fs::write(&f, &b[..8 + n / 2]).unwrap();
    assert_eq!(safetensors_err("truncated mid-header", &tmp, &f), None);
}

#[test]
fn truncated_mid_data() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let b = fs::read(&f).unwrap();
    // Cut inside the last tensor (`pooler.dense.weight`, the only one past this point).
    fs::write(&f, &b[..b.len() - 100]).unwrap();
    let t = safetensors_err("truncated mid-data", &tmp, &f);
    assert_eq!(t.as_deref(), Some("pooler.dense.weight"));
}

#[test]
fn truncated_early_blames_a_cut_tensor() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let (header, data) = read_raw(&f);
    let b = fs::read(&f).unwrap();
    let keep = data.len() / 2;
    fs::write(&f, &b[..b.len() - (data.len() - keep)]).unwrap();
    let t = safetensors_err("truncated at half the data", &tmp, &f).expect("a tensor");
    let end = header[&t]["data_offsets"][1].as_u64().unwrap() as usize;
    assert!(end > keep, "blamed `{t}`, which is not cut");
}

#[test]
fn header_length_huge() {
    for (case, n) in [
        ("header length 2^60", 1u64 << 60),
        ("header length u64::MAX", u64::MAX),
        (
            "header length 100_000_001 (> safetensors limit)",
            100_000_001,
        ),
    ] {
        let tmp = copy_fixture("bert");
        let f = weights_file(&tmp);
        let (header, data) = read_raw(&f);
        write_bytes(&f, n, &serde_json::to_vec(&header).unwrap(), &data);
        assert_eq!(safetensors_err(case, &tmp, &f), None);
    }
}

#[test]
fn header_length_past_end_of_file() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let (header, data) = read_raw(&f);
    let h = serde_json::to_vec(&header).unwrap();
    let file_len = (8 + h.len() + data.len()) as u64;
    write_bytes(&f, file_len, &h, &data);
    assert_eq!(safetensors_err("header length past EOF", &tmp, &f), None);
}

#[test]
fn header_not_json() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let h = b"this is not JSON at all";
    write_bytes(&f, h.len() as u64, h, &[0; 16]);
    assert_eq!(safetensors_err("header not JSON", &tmp, &f), None);
}

#[test]
fn header_not_utf8() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let h = b"{\"a\xff\xfe\": 1}";
    write_bytes(&f, h.len() as u64, h, &[]);
    assert_eq!(safetensors_err("header not UTF-8", &tmp, &f), None);
}

#[test]
fn header_json_not_an_object() {
    for (case, h) in [
        ("header is a JSON array", &b"[1, 2, 3]"[..]),
        ("header is a JSON string", &b"\"model\""[..]),
        ("header is JSON null", &b"null"[..]),
    ] {
        let tmp = copy_fixture("bert");
        let f = weights_file(&tmp);
        write_bytes(&f, h.len() as u64, h, &[]);
        assert_eq!(safetensors_err(case, &tmp, &f), None);
    }
}

#[test]
fn header_wrong_field_types() {
    type Edit = fn(&mut Value);
    let edits: [(&str, Edit); 6] = [
        ("shape is a string", |v| v["shape"] = json!("32")),
        ("shape has a negative dim", |v| v["shape"] = json!([-32])),
        ("dtype is a number", |v| v["dtype"] = json!(7)),
        ("data_offsets has three numbers", |v| {
            v["data_offsets"] = json!([0, 64, 128])
        }),
        ("data_offsets missing", |v| {
            v.as_object_mut().unwrap().remove("data_offsets");
        }),
        ("tensor info is a number", |v| *v = json!(12)),
    ];
    for (case, edit) in edits {
        let tmp = copy_fixture("bert");
        let f = weights_file(&tmp);
        edit_header(&f, |h| edit(h.get_mut(BERT_QB).unwrap()));
        safetensors_err_on(case, &tmp, &f, BERT_QB);
    }
}

#[test]
fn metadata_not_strings() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| {
        h.insert("__metadata__".into(), json!({"format": 1}));
    });
    assert_eq!(
        safetensors_err("__metadata__ value not a string", &tmp, &f),
        None
    );
}

#[test]
fn offsets_out_of_range() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    // The last tensor by offset points far past the data area.
    edit_header(&f, |h| {
        h["pooler.dense.weight"]["data_offsets"] = json!([1u64 << 40, (1u64 << 40) + 4096]);
    });
    safetensors_err_on("offsets past the data", &tmp, &f, "pooler.dense.weight");
}

#[test]
fn offsets_leave_a_gap() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let (mut header, mut data) = read_raw(&f);
    // Four unclaimed bytes before the last tensor; every range is in bounds and sized right.
    data.extend_from_slice(&[0; 4]);
    let offs = header["pooler.dense.weight"]["data_offsets"].clone();
    header["pooler.dense.weight"]["data_offsets"] =
        json!([offs[0].as_u64().unwrap() + 4, offs[1].as_u64().unwrap() + 4]);
    write_raw(&f, &header, &data);
    safetensors_err_on(
        "4-byte gap before a tensor",
        &tmp,
        &f,
        "pooler.dense.weight",
    );
}

#[test]
fn offsets_overflow_u64() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| {
        h["pooler.dense.weight"]["data_offsets"] = json!([u64::MAX - 10, u64::MAX]);
    });
    safetensors_err_on("offsets near u64::MAX", &tmp, &f, "pooler.dense.weight");
}

#[test]
fn offsets_overlap() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    // Two [32] F32 tensors share bytes 0..128; the one whose bytes are lost leaves a hole.
    edit_header(&f, |h| {
        h["embeddings.LayerNorm.weight"]["data_offsets"] = json!([0, 128]);
    });
    safetensors_err_on(
        "overlapping offsets",
        &tmp,
        &f,
        "embeddings.LayerNorm.weight",
    );
}

#[test]
fn offsets_end_before_start() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| {
        let offs = h[BERT_QB]["data_offsets"].clone();
        h[BERT_QB]["data_offsets"] = json!([offs[1], offs[0]]);
    });
    safetensors_err_on("data_offsets end < start", &tmp, &f, BERT_QB);
}

#[test]
fn byte_length_does_not_match_shape() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| h[BERT_QB]["shape"] = json!([33]));
    safetensors_err_on("shape [33] over 128 bytes", &tmp, &f, BERT_QB);

    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| h[BERT_QB]["dtype"] = json!("F64"));
    safetensors_err_on("dtype F64 over 128 bytes for [32]", &tmp, &f, BERT_QB);
}

#[test]
fn trailing_bytes_after_data() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let mut b = fs::read(&f).unwrap();
    b.extend_from_slice(&[0; 64]);
    fs::write(&f, b).unwrap();
    assert_eq!(safetensors_err("64 bytes after the data", &tmp, &f), None);
}

#[test]
fn duplicate_key_in_header() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    let (header, data) = read_raw(&f);
    let mut h = serde_json::to_string(&header).unwrap();
    // A second entry for the query bias, pointing at the key bias's bytes.
    let dup = format!(
        ",\"{BERT_QB}\":{{\"dtype\":\"F32\",\"shape\":[32],\"data_offsets\":{}}}}}",
        header["encoder.layer.0.attention.self.key.bias"]["data_offsets"]
    );
    h.pop();
    h.push_str(&dup);
    write_bytes(&f, h.len() as u64, h.as_bytes(), &data);
    let e = load_err(tmp.path());
    check_msg("duplicate JSON key", &tmp, &e, &f, &[]);
    assert!(matches!(e, ImportError::Safetensors { .. }), "{e:?}");
}

#[test]
fn huge_claimed_shape() {
    // numel = 2^80 overflows usize: nothing may be sized from it.
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| {
        h[BERT_QB]["shape"] = json!([1u64 << 40, 1u64 << 40])
    });
    safetensors_err_on("shape [2^40, 2^40]", &tmp, &f, BERT_QB);

    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_header(&f, |h| h[BERT_QB]["shape"] = json!([u64::MAX, u64::MAX, 2]));
    safetensors_err_on("shape [u64::MAX, u64::MAX, 2]", &tmp, &f, BERT_QB);
}

#[test]
fn huge_dims_in_zero_sized_tensor() {
    // A zero-element tensor is valid safetensors whatever its other dims; with no config.json
    // the templates guess dims from these shapes, so the guesses must be bounded too.
    let tmp = copy_fixture("bert");
    fs::remove_file(tmp.path().join("config.json")).unwrap();
    let f = weights_file(&tmp);
    edit_st(&f, |ts| {
        let t = tensor_mut(ts, "embeddings.word_embeddings.weight");
        t.shape = vec![0, 1 << 40];
        t.bytes.clear();
    });
    let e = load_err(tmp.path());
    check_msg(
        "bert, no config, word embeddings [0, 2^40]",
        &tmp,
        &e,
        &tmp.path().join("config.json"),
        &["hidden_size"],
    );
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");

    // GPT-2 sizes `n_inner` as 4 × the guessed width: 4 × 2^62 must not overflow.
    let tmp = copy_fixture("gpt2");
    fs::remove_file(tmp.path().join("config.json")).unwrap();
    let f = weights_file(&tmp);
    edit_st(&f, |ts| {
        let t = tensor_mut(ts, "wte.weight");
        t.shape = vec![0, 1 << 62];
        t.bytes.clear();
    });
    let e = load_err(tmp.path());
    check_msg(
        "gpt2, no config, wte [0, 2^62]",
        &tmp,
        &e,
        &tmp.path().join("config.json"),
        &["n_embd"],
    );
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");

    // Layer count guessed from a tensor name.
    let tmp = copy_fixture("bert");
    fs::remove_file(tmp.path().join("config.json")).unwrap();
    let f = weights_file(&tmp);
    edit_st(&f, |ts| {
        let mut t = ts[0].clone();
        t.name = "encoder.layer.99999999999.output.dense.bias".into();
        ts.push(t);
    });
    let e = load_err(tmp.path());
    check_msg(
        "bert, no config, tensor encoder.layer.99999999999.*",
        &tmp,
        &e,
        &tmp.path().join("config.json"),
        &["num_hidden_layers"],
    );
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");
}

#[test]
fn weights_path_is_a_directory() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    fs::remove_file(&f).unwrap();
    fs::create_dir(&f).unwrap();
    let e = load_err(tmp.path());
    check_msg(
        "model.safetensors is a directory",
        &tmp,
        &e,
        tmp.path(),
        &[],
    );
    assert!(matches!(e, ImportError::NoCheckpoint { .. }), "{e:?}");
}

/// A FIFO named like a checkpoint must not be opened: opening it would block forever.
#[cfg(unix)]
#[test]
fn weights_path_is_a_fifo() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    fs::remove_file(&f).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&f).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("mkfifo unavailable; skipped");
        return;
    }
    let e = load_err(tmp.path());
    check_msg("model.safetensors is a FIFO", &tmp, &e, tmp.path(), &[]);
    assert!(matches!(e, ImportError::NoCheckpoint { .. }), "{e:?}");

    let tmp = copy_fixture("llama");
    let f = tmp.path().join(SHARD2);
    fs::remove_file(&f).unwrap();
    if std::process::Command::new("mkfifo")
        .arg(&f)
        .status()
        .is_ok_and(|s| s.success())
    {
        let index = tmp.path().join("model.safetensors.index.json");
        index_err("shard 2 is a FIFO", &tmp, &index, &[SHARD2]);
    }
}

// ---------------------------------------------------------------------------------------------
// Dtypes.
// ---------------------------------------------------------------------------------------------

#[test]
fn unsupported_known_dtype() {
    for (dtype, size) in [
        ("F8_E4M3", 1),
        ("U16", 2),
        ("U32", 4),
        ("C64", 8),
        ("BOOL", 1),
    ] {
        let tmp = copy_fixture("bert");
        let f = weights_file(&tmp);
        edit_st(&f, |ts| {
            let t = tensor_mut(ts, BERT_QB);
            t.dtype = dtype.into();
            t.bytes.truncate(32 * size);
            t.bytes.resize(32 * size, 0);
        });
        let e = load_err(tmp.path());
        check_msg(&format!("dtype {dtype}"), &tmp, &e, &f, &[BERT_QB, dtype]);
        match e {
            ImportError::UnsupportedDtype {
                tensor, dtype: d, ..
            } => {
                assert_eq!(tensor, BERT_QB);
                assert_eq!(d, dtype);
            }
            other => panic!("dtype {dtype}: expected UnsupportedDtype, got {other:?}"),
        }
    }
}

#[test]
fn unknown_dtype_string() {
    for dtype in ["Q4", "f32", ""] {
        let tmp = copy_fixture("bert");
        let f = weights_file(&tmp);
        edit_header(&f, |h| h[BERT_QB]["dtype"] = json!(dtype));
        safetensors_err_on(&format!("dtype \"{dtype}\""), &tmp, &f, BERT_QB);
    }
}

// ---------------------------------------------------------------------------------------------
// The architecture's view: missing tensors, shapes against config.json.
// ---------------------------------------------------------------------------------------------

#[test]
fn needed_tensor_missing() {
    let name = "encoder.layer.1.output.dense.weight";
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_st(&f, |ts| ts.retain(|t| t.name != name));
    let e = load_err(tmp.path());
    check_msg("missing tensor", &tmp, &e, &f, &[name, "bert"]);
    match e {
        ImportError::MissingTensor { tensor, arch, .. } => {
            assert_eq!(tensor, name);
            assert_eq!(arch, "bert");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn shape_contradicts_config() {
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_json(&tmp.path().join("config.json"), |c| {
        c["hidden_size"] = json!(48)
    });
    let name = "embeddings.word_embeddings.weight";
    let e = load_err(tmp.path());
    check_msg("config hidden_size 48", &tmp, &e, &f, &[name]);
    match e {
        ImportError::ShapeMismatch {
            tensor,
            expected,
            got,
            ..
        } => {
            assert_eq!(tensor, name);
            assert_eq!(expected, vec![128, 48]);
            assert_eq!(got, vec![128, 32]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn transposed_weight() {
    let name = "encoder.layer.0.intermediate.dense.weight";
    let tmp = copy_fixture("bert");
    let f = weights_file(&tmp);
    edit_st(&f, |ts| tensor_mut(ts, name).shape = vec![32, 64]);
    let e = load_err(tmp.path());
    check_msg("transposed weight", &tmp, &e, &f, &[name]);
    match e {
        ImportError::ShapeMismatch {
            tensor,
            expected,
            got,
            ..
        } => {
            assert_eq!(tensor, name);
            assert_eq!((expected, got), (vec![64, 32], vec![32, 64]));
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn llama_shape_mismatch_names_its_shard() {
    let name = "model.layers.1.self_attn.k_proj.weight";
    let tmp = copy_fixture("llama");
    let f = tmp.path().join("model-00002-of-00003.safetensors");
    edit_st(&f, |ts| tensor_mut(ts, name).shape = vec![32, 16]);
    let e = load_err(tmp.path());
    check_msg("llama transposed k_proj in shard 2", &tmp, &e, &f, &[name]);
    assert!(matches!(e, ImportError::ShapeMismatch { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// config.json.
// ---------------------------------------------------------------------------------------------

/// Sets `key` = `value` in the fixture's config.json; the load must fail with `BadDim` on `key`.
fn bad_dim(fixture_name: &str, key: &str, value: Value) {
    let tmp = copy_fixture(fixture_name);
    let cfg = tmp.path().join("config.json");
    edit_json(&cfg, |c| c[key] = value.clone());
    let e = load_err(tmp.path());
    check_msg(
        &format!("{fixture_name} {key} = {value}"),
        &tmp,
        &e,
        &cfg,
        &[key],
    );
    match e {
        ImportError::BadDim { key: k, .. } => assert_eq!(k, key),
        other => panic!("{key} = {value}: expected BadDim, got {other:?}"),
    }
}

#[test]
fn absurd_config_dims() {
    bad_dim("bert", "hidden_size", json!(1_000_000_000_000u64));
    bad_dim("bert", "hidden_size", json!(1e12));
    bad_dim("bert", "hidden_size", json!(-32));
    bad_dim("bert", "hidden_size", json!("32"));
    bad_dim("bert", "hidden_size", json!(32.5));
    bad_dim("bert", "hidden_size", json!([32]));
    bad_dim("bert", "hidden_size", json!(0));
    bad_dim("bert", "num_hidden_layers", json!(1_000_000_000));
    bad_dim("bert", "num_attention_heads", json!(0));
    bad_dim("bert", "num_attention_heads", json!(-4));
    bad_dim("bert", "num_attention_heads", json!(5));
    bad_dim("bert", "intermediate_size", json!(u64::MAX));
    bad_dim("bert", "vocab_size", json!(1u64 << 40));
    bad_dim("bert", "max_position_embeddings", json!(true));
    bad_dim("bert", "layer_norm_eps", json!(-1e-12));
    bad_dim("bert", "layer_norm_eps", json!("small"));
    bad_dim("gpt2", "n_embd", json!(1u64 << 50));
    bad_dim("gpt2", "n_head", json!(3));
    bad_dim("vit", "patch_size", json!(7));
    bad_dim("vit", "image_size", json!(1u64 << 40));
    bad_dim("llama", "num_key_value_heads", json!(3));
    bad_dim("llama", "head_dim", json!(1u64 << 33));
    // transformers 4 configs keep rope_theta at the top level.
    let tmp = copy_fixture("llama");
    let cfg = tmp.path().join("config.json");
    edit_json(&cfg, |c| {
        c.as_object_mut().unwrap().remove("rope_parameters");
        c["rope_theta"] = json!(-10000.0);
    });
    let e = load_err(tmp.path());
    check_msg("llama rope_theta = -10000", &tmp, &e, &cfg, &["rope_theta"]);
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");
    bad_dim("gpt2", "n_layer", json!(0));
}

#[test]
fn absurd_nested_rope_theta() {
    let tmp = copy_fixture("llama");
    let cfg = tmp.path().join("config.json");
    edit_json(&cfg, |c| c["rope_parameters"]["rope_theta"] = json!(-1.0));
    let e = load_err(tmp.path());
    check_msg(
        "llama rope_parameters.rope_theta = -1",
        &tmp,
        &e,
        &cfg,
        &["rope_theta"],
    );
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");
}

#[test]
fn huge_integer_literal_in_config() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "\"hidden_size\": 32",
        "\"hidden_size\": 99999999999999999999999999999",
    );
    fs::write(&cfg, text).unwrap();
    let e = load_err(tmp.path());
    check_msg(
        "hidden_size 10^29 literal",
        &tmp,
        &e,
        &cfg,
        &["hidden_size"],
    );
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");
}

#[test]
fn unsupported_config_settings() {
    let cases: [(&str, &str, Value); 3] = [
        ("bert", "hidden_act", json!("mish")),
        ("bert", "position_embedding_type", json!("relative_key")),
        (
            "llama",
            "rope_parameters",
            json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
        ),
    ];
    for (fx, key, value) in cases {
        let tmp = copy_fixture(fx);
        let cfg = tmp.path().join("config.json");
        edit_json(&cfg, |c| c[key] = value.clone());
        let e = load_err(tmp.path());
        check_msg(&format!("{fx} {key} = {value}"), &tmp, &e, &cfg, &[]);
        assert!(matches!(e, ImportError::NotSupported { .. }), "{e:?}");
    }
}

#[test]
fn config_not_json() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    fs::write(&cfg, "{ \"hidden_size\": 32, oops").unwrap();
    let e = load_err(tmp.path());
    check_msg("config.json not JSON", &tmp, &e, &cfg, &[]);
    assert!(matches!(e, ImportError::Config { .. }), "{e:?}");
}

#[test]
fn config_not_utf8() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    fs::write(&cfg, b"{\"model_type\": \"\xff\"}").unwrap();
    let e = load_err(tmp.path());
    check_msg("config.json not UTF-8", &tmp, &e, &cfg, &[]);
    assert!(
        matches!(e, ImportError::Config { .. } | ImportError::Io { .. }),
        "{e:?}"
    );
}

#[test]
fn config_is_an_array() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    fs::write(&cfg, "[{\"model_type\": \"bert\"}]").unwrap();
    let e = load_err(tmp.path());
    check_msg("config.json an array", &tmp, &e, &cfg, &[]);
    assert!(matches!(e, ImportError::Config { .. }), "{e:?}");
}

#[test]
fn config_huge() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    // Sparse: the size is claimed, not written.
    let f = fs::OpenOptions::new().write(true).open(&cfg).unwrap();
    f.set_len(attnopt_import::checkpoint::MAX_JSON_BYTES + 1)
        .unwrap();
    drop(f);
    let e = load_err(tmp.path());
    check_msg("config.json 64 MiB + 1", &tmp, &e, &cfg, &[]);
    assert!(matches!(e, ImportError::Config { .. }), "{e:?}");
}

#[test]
fn config_missing_is_guessed() {
    let tmp = copy_fixture("bert");
    fs::remove_file(tmp.path().join("config.json")).unwrap();
    // Refused by default: a wrong guess would give wrong numbers silently.
    let e = load_err(tmp.path());
    assert!(matches!(e, ImportError::Guessed { .. }), "{e:?}");
    assert!(e.to_string().contains("--accept-guesses"), "{e}");
    let accept = attnopt_import::LoadOptions {
        accept_guesses: true,
        ..Default::default()
    };
    let m = std::panic::catch_unwind(AssertUnwindSafe(|| {
        attnopt_import::load_with(tmp.path(), &accept)
    }))
    .expect("no panic")
    .expect("bert without config.json imports with guesses when they are accepted");
    assert!(!m.unconfirmed.is_empty());
    println!("[no config.json] detection: {}", m.detection.reason);
    for g in &m.guesses {
        println!("[no config.json] guess: {g}");
    }
    assert_eq!(m.detection.arch, attnopt_import::Arch::Bert);
    assert!(
        m.detection
            .reason
            .contains("encoder.layer.0.attention.self.query.weight"),
        "{}",
        m.detection.reason
    );
    assert!(m.detection.reason.contains("no config.json"));
    assert!(!m.guesses.is_empty());
    assert!(
        m.guesses.iter().any(|g| g.contains("hidden_size")),
        "{:?}",
        m.guesses
    );
    assert_eq!((m.dims.hidden, m.dims.layers, m.dims.heads), (32, 2, 1));
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints (llama: 3 shards + model.safetensors.index.json).
// ---------------------------------------------------------------------------------------------

const SHARD1: &str = "model-00001-of-00003.safetensors";
const SHARD2: &str = "model-00002-of-00003.safetensors";
const SHARD3: &str = "model-00003-of-00003.safetensors";

fn edit_index(tmp: &TempDir, f: impl FnOnce(&mut Map<String, Value>)) -> PathBuf {
    let index = tmp.path().join("model.safetensors.index.json");
    edit_json(&index, |v| f(v["weight_map"].as_object_mut().unwrap()));
    index
}

fn index_err(case: &str, tmp: &TempDir, index: &Path, names: &[&str]) {
    let e = load_err(tmp.path());
    check_msg(case, tmp, &e, index, names);
    assert!(matches!(e, ImportError::Index { .. }), "[{case}] {e:?}");
}

#[test]
fn index_names_missing_shard() {
    let tmp = copy_fixture("llama");
    let t = "model.norm.weight";
    let index = edit_index(&tmp, |m| {
        m[t] = json!("model-00004-of-00003.safetensors");
    });
    index_err(
        "shard does not exist",
        &tmp,
        &index,
        &[t, "model-00004-of-00003.safetensors"],
    );

    let tmp = copy_fixture("llama");
    fs::remove_file(tmp.path().join(SHARD2)).unwrap();
    let index = tmp.path().join("model.safetensors.index.json");
    index_err("shard 2 deleted", &tmp, &index, &[SHARD2, "model.layers.0"]);
}

#[test]
fn index_shard_path_escapes() {
    for shard in [
        "../model-00003-of-00003.safetensors",
        "/etc/passwd",
        "sub/model.safetensors",
        "",
        ".",
        "..",
    ] {
        let tmp = copy_fixture("llama");
        let t = "model.norm.weight";
        let index = edit_index(&tmp, |m| m[t] = json!(shard));
        index_err(&format!("shard path {shard:?}"), &tmp, &index, &[t]);
    }
}

#[test]
fn index_shard_name_not_a_string() {
    let tmp = copy_fixture("llama");
    let t = "model.norm.weight";
    let index = edit_index(&tmp, |m| m[t] = json!(3));
    index_err("shard name a number", &tmp, &index, &[t]);
}

#[test]
fn index_lists_tensor_absent_from_its_shard() {
    // Stored in shard 3, listed in shard 1.
    let tmp = copy_fixture("llama");
    let t = "model.norm.weight";
    let index = edit_index(&tmp, |m| m[t] = json!(SHARD1));
    index_err(
        "listed in the wrong shard",
        &tmp,
        &index,
        &[t, SHARD1, SHARD3],
    );

    // Stored nowhere.
    let tmp = copy_fixture("llama");
    let t = "model.layers.7.self_attn.q_proj.weight";
    let index = edit_index(&tmp, |m| {
        m.insert(t.into(), json!(SHARD2));
    });
    index_err("listed but stored nowhere", &tmp, &index, &[t, SHARD2]);

    // Index right, shard lost the tensor.
    let tmp = copy_fixture("llama");
    let t = "model.layers.1.mlp.gate_proj.weight";
    edit_st(&tmp.path().join(SHARD2), |ts| ts.retain(|x| x.name != t));
    let index = tmp.path().join("model.safetensors.index.json");
    index_err("removed from its shard", &tmp, &index, &[t, SHARD2]);
}

#[test]
fn same_tensor_in_two_shards() {
    let tmp = copy_fixture("llama");
    let t = "model.embed_tokens.weight";
    let copy = read_st(&tmp.path().join(SHARD1))
        .into_iter()
        .find(|x| x.name == t)
        .unwrap();
    let f3 = tmp.path().join(SHARD3);
    edit_st(&f3, |ts| ts.push(copy));
    let e = load_err(tmp.path());
    check_msg("tensor in shards 1 and 3", &tmp, &e, &f3, &[t, SHARD1]);
    match e {
        ImportError::Safetensors { tensor, .. } => assert_eq!(tensor.as_deref(), Some(t)),
        other => panic!("expected Safetensors, got {other:?}"),
    }
}

#[test]
fn index_without_weight_map() {
    for (case, body) in [
        ("no weight_map", json!({"metadata": {"total_size": 53568}})),
        (
            "weight_map an array",
            json!({"weight_map": ["model-00001-of-00003.safetensors"]}),
        ),
        ("index an array", json!([])),
        ("weight_map empty", json!({"weight_map": {}})),
    ] {
        let tmp = copy_fixture("llama");
        let index = tmp.path().join("model.safetensors.index.json");
        fs::write(&index, serde_json::to_vec(&body).unwrap()).unwrap();
        index_err(case, &tmp, &index, &["weight_map"]);
    }
}

#[test]
fn index_not_json() {
    let tmp = copy_fixture("llama");
    let index = tmp.path().join("model.safetensors.index.json");
    fs::write(&index, "{\"weight_map\": {").unwrap();
    index_err("index not JSON", &tmp, &index, &[]);

    let tmp = copy_fixture("llama");
    let index = tmp.path().join("model.safetensors.index.json");
    let f = fs::OpenOptions::new().write(true).open(&index).unwrap();
    f.set_len(attnopt_import::checkpoint::MAX_JSON_BYTES + 1)
        .unwrap();
    drop(f);
    index_err("index 64 MiB + 1", &tmp, &index, &[]);
}

#[test]
fn one_shard_corrupt() {
    let tmp = copy_fixture("llama");
    let f = tmp.path().join(SHARD2);
    let b = fs::read(&f).unwrap();
    fs::write(&f, &b[..b.len() - 1]).unwrap();
    let t = safetensors_err("shard 2 truncated by 1 byte", &tmp, &f);
    assert!(t.is_some());
}

// ---------------------------------------------------------------------------------------------
// Folders without a usable checkpoint, and unknown architectures.
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_dir() {
    let tmp = TempDir::new().unwrap();
    let e = load_err(tmp.path());
    check_msg("empty folder", &tmp, &e, tmp.path(), &[]);
    assert!(matches!(e, ImportError::NoCheckpoint { .. }), "{e:?}");
}

#[test]
fn nonexistent_path() {
    let tmp = TempDir::new().unwrap();
    let p = tmp.path().join("no-such-model");
    let e = load_err(&p);
    check_msg(
        "path does not exist",
        &tmp,
        &e,
        &p,
        &["no such file or folder"],
    );
    assert!(matches!(e, ImportError::NotFound { .. }), "{e:?}");
}

#[test]
fn only_pytorch_bin() {
    let tmp = TempDir::new().unwrap();
    fs::copy(fixture("bert/config.json"), tmp.path().join("config.json")).unwrap();
    let bin = tmp.path().join("pytorch_model.bin");
    fs::write(&bin, b"PK\x03\x04 not really a zip").unwrap();
    let e = load_err(tmp.path());
    check_msg("only pytorch_model.bin", &tmp, &e, &bin, &[]);
    assert!(matches!(e, ImportError::NotSupported { .. }), "{e:?}");
}

#[test]
fn two_safetensors_without_index() {
    let tmp = copy_fixture("llama");
    fs::remove_file(tmp.path().join("model.safetensors.index.json")).unwrap();
    let e = load_err(tmp.path());
    check_msg("3 shards, no index", &tmp, &e, tmp.path(), &[]);
    assert!(matches!(e, ImportError::NotSupported { .. }), "{e:?}");
}

#[test]
fn unknown_model_type_and_tensor_names() {
    let tmp = copy_fixture("bert");
    edit_json(&tmp.path().join("config.json"), |c| {
        c["model_type"] = json!("mamba");
        c["architectures"] = json!(["MambaModel"]);
    });
    edit_st(&weights_file(&tmp), |ts| {
        for t in ts.iter_mut() {
            t.name = format!("backbone.{}", t.name.replace("layer", "blocks"));
        }
    });
    let e = load_err(tmp.path());
    check_msg(
        "model_type mamba, unknown names",
        &tmp,
        &e,
        tmp.path(),
        &["mamba"],
    );
    assert!(
        matches!(e, ImportError::UnknownArchitecture { .. }),
        "{e:?}"
    );
}

#[test]
fn model_type_contradicts_tensors() {
    // config.json says bert; the weights are GPT-2's.
    let tmp = copy_fixture("gpt2");
    fs::copy(fixture("bert/config.json"), tmp.path().join("config.json")).unwrap();
    let e = load_err(tmp.path());
    check_msg(
        "bert config, gpt2 weights",
        &tmp,
        &e,
        tmp.path(),
        &["encoder.layer.0.attention.self.query.weight"],
    );
    assert!(
        matches!(e, ImportError::UnknownArchitecture { .. }),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Memory stays bounded.
// ---------------------------------------------------------------------------------------------

/// Peak resident memory of this process, from /proc (Linux only).
fn peak_rss_bytes() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn memory_stays_bounded() {
    // Every lie about sizes at once, several times over: the peak must stay far below what any
    // of them claims (2^60-byte headers, 2^80-element tensors, 64 MiB JSON files).
    for _ in 0..3 {
        header_length_huge();
        header_length_past_end_of_file();
        huge_claimed_shape();
        huge_dims_in_zero_sized_tensor();
        offsets_out_of_range();
        offsets_overflow_u64();
        config_huge();
        index_not_json();
    }
    if let Some(peak) = peak_rss_bytes() {
        println!("[memory] peak RSS {} MiB", peak >> 20);
        assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
    }
}

/// A config value is quoted briefly (40 characters at most) in its error, however long it is.
#[test]
fn long_config_values_are_quoted_briefly() {
    let tmp = copy_fixture("bert");
    let cfg = tmp.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    json["hidden_size"] = serde_json::Value::String("x".repeat(10_000));
    fs::write(&cfg, json.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ImportError::BadDim { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hidden_size") && msg.len() < 400,
        "{} bytes: {msg}",
        msg.len()
    );
}
