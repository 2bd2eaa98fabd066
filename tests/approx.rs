//! `--allow hydra --budget E`: approximate conversions are measured, kept within the budget, and
//! the reported errors agree with an independent interpreter run of the written model folder.

use std::collections::BTreeMap;

use attnopt::optimize::{optimize, OptimizeOptions};
use attnopt::{Model, RunOptions};

#[path = "support/models.rs"]
mod models;
use models::{fixture, golden_inputs, relative};

struct Outcome {
    converted: Vec<u32>,
    alone: BTreeMap<u32, f64>,
    final_error: f64,
}

/// Optimises `name` with hydra allowed (calibrating on the golden inputs), writes the folder,
/// reloads it, reruns both models independently and checks the report's final error.
fn run_case(name: &str, budget: Option<f64>) -> Outcome {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let opts = OptimizeOptions {
        allow: vec!["hydra".into()],
        budget,
        calib: Some(dir.join("golden.safetensors")),
        ..OptimizeOptions::default()
    };
    let opt = optimize(&model, &opts, &mut |_| {}).unwrap();
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("optimised");
    attnopt::save::save(&model, &opt, &folder, &Default::default()).unwrap();

    // Independent check: the written folder, loaded and run like a user would.
    let reloaded = Model::load(&folder).unwrap();
    let inputs = golden_inputs(&model, &dir);
    let want = model
        .run(
            inputs.clone(),
            RunOptions {
                all_layers: true,
                ..Default::default()
            },
        )
        .unwrap();
    let got = reloaded
        .run(
            inputs,
            RunOptions {
                all_layers: true,
                ..Default::default()
            },
        )
        .unwrap();
    let measured = relative(&got["last_hidden_state"], &want["last_hidden_state"]);
    let reported = opt
        .report
        .final_error
        .expect("errors are measured when hydra is allowed")
        .relative;
    println!("{name} budget {budget:?}: reported {reported:.6e}, independent {measured:.6e}");
    assert!(
        (measured - reported).abs() <= 1e-4 * reported.max(1e-6),
        "{name}: report says {reported}, the written model gives {measured}"
    );
    for l in &opt.report.layers {
        if let Some(e) = l.error {
            let m = relative(
                &got[&format!("layer.{}", l.layer)],
                &want[&format!("layer.{}", l.layer)],
            );
            assert!(
                (m - e.layer_output.relative).abs() <= 1e-4 * m.max(1e-6),
                "{name} layer {}: {m} vs {}",
                l.layer,
                e.layer_output.relative
            );
        }
        assert!(
            !l.converted.is_empty() || l.reason.is_some(),
            "layer {} has neither a conversion nor a reason",
            l.layer
        );
    }
    if let Some(b) = budget {
        // The exact rewrites' float rounding (~1e-7) is there even when nothing is converted.
        assert!(
            reported <= b + 1e-6,
            "{name}: final error {reported} exceeds the budget {b}"
        );
    }
    Outcome {
        converted: opt
            .report
            .layers
            .iter()
            .filter(|l| !l.converted.is_empty())
            .map(|l| l.layer)
            .collect(),
        alone: opt
            .report
            .layers
            .iter()
            .filter_map(|l| {
                let e = l.error_alone.get("hydra")?;
                Some((l.layer, e.final_output.relative))
            })
            .collect(),
        final_error: reported,
    }
}

fn budget_converts_only_what_fits(name: &str) {
    // The default budget (1 %) is safe: on these random-weight fixtures every conversion
    // costs far more, so nothing is converted.
    let default = run_case(name, None);
    assert!(
        default.converted.is_empty(),
        "{name}: {:?}",
        default.converted
    );
    assert!(default.final_error < 1e-6);
    // With an unlimited budget every eligible layer is converted.
    let all = run_case(name, Some(f64::INFINITY));
    assert_eq!(
        all.converted,
        vec![0, 1],
        "{name}: both layers are eligible softmax attention"
    );
    // A budget just above the cheapest single conversion, below converting everything, allows
    // exactly one layer.
    let cheapest = all.alone.values().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        cheapest < all.final_error,
        "{name}: converting both should cost more than one"
    );
    let one = run_case(name, Some(cheapest * 1.001));
    assert_eq!(
        one.converted.len(),
        1,
        "{name}: budget {cheapest} should allow one layer, got {:?}",
        one.converted
    );
    // A zero budget converts nothing and changes nothing beyond rounding.
    let none = run_case(name, Some(0.0));
    assert!(none.converted.is_empty());
    assert!(none.final_error < 1e-6);
}

#[test]
fn bert_budget_converts_only_what_fits() {
    budget_converts_only_what_fits("bert");
}

#[test]
fn vit_budget_converts_only_what_fits() {
    budget_converts_only_what_fits("vit");
}

/// Layers the rule cannot express say why, and nothing is converted silently.
#[test]
fn ineligible_layers_say_why() {
    let model = Model::load(&fixture("llama")).unwrap();
    let opts = OptimizeOptions {
        allow: vec!["hydra".into()],
        ..OptimizeOptions::default()
    };
    let opt = optimize(&model, &opts, &mut |_| {}).unwrap();
    for l in &opt.report.layers {
        assert!(l.converted.is_empty());
        let why = l.reason.as_deref().unwrap_or("");
        assert!(why.contains("rotary"), "layer {}: {why}", l.layer);
    }
    // Without --allow, softmax layers say the approximation is not enabled.
    let opt = optimize(
        &Model::load(&fixture("bert")).unwrap(),
        &OptimizeOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    for l in &opt.report.layers {
        assert_eq!(
            l.reason.as_deref(),
            Some("softmax; approximate rule hydra not enabled (--allow hydra)")
        );
    }
}

/// The output-projection refit after a softmax → Hydra conversion: fitted on calibration
/// activations (seeded random inputs, 64 tokens), it lowers every converted layer's error on
/// the held-out calibration rows, and the whole model's error against the original on inputs
/// the fit never saw (the golden inputs), compared with the same conversion without it.
#[test]
fn refit_lowers_the_error_of_converted_layers() {
    let dir = fixture("bert");
    let model = Model::load(&dir).unwrap();
    let inputs = golden_inputs(&model, &dir);
    let want = model.run(inputs.clone(), RunOptions::default()).unwrap();
    let mut errors = vec![];
    for refit in [false, true] {
        let opts = OptimizeOptions {
            allow: vec!["hydra".into()],
            budget: Some(f64::INFINITY),
            calib_seq: 64,
            refit,
            ..OptimizeOptions::default()
        };
        let opt = optimize(&model, &opts, &mut |_| {}).unwrap();
        for l in &opt.report.layers {
            assert!(!l.converted.is_empty(), "layer {} not converted", l.layer);
            match (refit, l.fit.get(attnopt::optimize::REFIT).copied()) {
                (false, fit) => assert!(fit.is_none()),
                (true, Some(f)) => assert!(
                    f.kept && f.error_after < f.error_before && f.rows_held_out > 0,
                    "layer {}: {f:?}",
                    l.layer
                ),
                (true, None) => panic!("layer {}: no fit", l.layer),
            }
        }
        let out = tempfile::tempdir().unwrap();
        let folder = out.path().join("optimised");
        attnopt::save::save(&model, &opt, &folder, &Default::default()).unwrap();
        let got = Model::load(&folder)
            .unwrap()
            .run(inputs.clone(), RunOptions::default())
            .unwrap();
        errors.push(relative(
            &got["last_hidden_state"],
            &want["last_hidden_state"],
        ));
    }
    println!(
        "golden inputs, final relative error: without refit {:.3e}, with {:.3e}",
        errors[0], errors[1]
    );
    assert!(errors[1] < errors[0], "{errors:?}");
}

/// `--layers`: exactly the named layers are converted (no default budget applies to them, an
/// explicit one does), the others say why not, and a layer that does not exist is an error.
#[test]
fn layers_names_exactly_the_layers_to_convert() {
    let model = Model::load(&fixture("bert")).unwrap();
    let opts = |budget| OptimizeOptions {
        allow: vec!["hydra".into()],
        layers: Some(vec![1]),
        budget,
        ..OptimizeOptions::default()
    };
    let opt = optimize(&model, &opts(None), &mut |_| {}).unwrap();
    let by_layer = |r: &attnopt::report::Report, l: u32| r.layers[l as usize].clone();
    assert_eq!(by_layer(&opt.report, 1).converted, ["hydra-padded"]);
    assert!(
        by_layer(&opt.report, 1)
            .error
            .unwrap()
            .layer_output
            .relative
            > 1e-2,
        "lossy"
    );
    assert!(by_layer(&opt.report, 0).converted.is_empty());
    assert_eq!(
        by_layer(&opt.report, 0).reason.as_deref(),
        Some("not in --layers")
    );
    assert_eq!(opt.report.budget, None);
    // An explicit budget still holds.
    let opt = optimize(&model, &opts(Some(1e-6)), &mut |_| {}).unwrap();
    assert!(by_layer(&opt.report, 1).converted.is_empty());
    assert!(by_layer(&opt.report, 1).reason.unwrap().contains("budget"));
    let mut missing = opts(None);
    missing.layers = Some(vec![7]);
    let e = optimize(&model, &missing, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--layers 7: there is no layer 7 (the model's layers are 0 to 1)"),
        "{e}"
    );
}
