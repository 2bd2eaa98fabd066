//! Writes a synthetic checkpoint of a real model's shapes to disk, its data zeros written as
//! sparse files (a few MB of disk for a 140 GB model), to measure the whole pipeline at scale:
//!
//! ```text
//! cargo run --release --example sparse_checkpoint -- llama70b DIR        # 80 layers, bf16, 28 shards
//! cargo run --release --example sparse_checkpoint -- llama7b DIR         # 32 layers, bf16, 13.5 GB
//! cargo run --release --example sparse_checkpoint -- llama1b DIR         # 16 layers, bf16, 2.5 GB
//! cargo run --release --example sparse_checkpoint -- bert-base 48 DIR    # f32, one file
//! /usr/bin/time -v attnopt optimize DIR -o OUT                          # time and peak RSS
//! ```

use std::path::PathBuf;

use attnopt_import::synthetic;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: sparse_checkpoint (llama70b [LAYERS] | llama7b | llama1b [LAYERS] | bert-base LAYERS) DIR";
    let (spec, dir) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["llama70b", dir] => (synthetic::llama70b_spec(80), dir),
        ["llama70b", layers, dir] => (synthetic::llama70b_spec(layers.parse().expect(usage)), dir),
        ["llama7b", dir] => (synthetic::llama_spec(&synthetic::LlamaShape::LLAMA_7B), dir),
        ["llama1b", dir] => (
            synthetic::llama_spec(&synthetic::LlamaShape::LLAMA3_1B),
            dir,
        ),
        ["llama1b", layers, dir] => (
            synthetic::llama_spec(&synthetic::LlamaShape {
                layers: layers.parse().expect(usage),
                ..synthetic::LlamaShape::LLAMA3_1B
            }),
            dir,
        ),
        ["bert-base", layers, dir] => (
            synthetic::bert_spec(layers.parse().expect(usage), 768, 12, 3072),
            dir,
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let dir = PathBuf::from(dir);
    // Shards of at most 5 GB, as transformers writes them.
    synthetic::write(&spec, &dir, 5_000_000_000).unwrap_or_else(|e| {
        eprintln!("writing {}: {e}", dir.display());
        std::process::exit(1);
    });
    let shards = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            })
            .count()
        })
        .unwrap_or(0);
    eprintln!(
        "wrote {} ({} tensors, {shards} shard(s))",
        dir.display(),
        spec.tensors.len()
    );
}
