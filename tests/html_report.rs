//! `optimize --report report.html`: one self-contained page (no script, no fetched resource),
//! with the per-layer table, both charts and one layer's graph before and after; rendered in
//! headless Chromium, it logs nothing to the console and its screenshot is not blank.
//!
//! Chromium (Debian's `chromium`) is installed by `.ci/run`, which sets
//! `ATTNOPT_REQUIRE_CHROMIUM=1`; elsewhere the rendering half is skipped with a message when it
//! is missing.

use std::path::Path;
use std::process::Command;

use attnopt::optimize::{optimize, OptimizeOptions};
use attnopt::Model;

fn page() -> (String, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert");
    let model = Model::load(&dir).unwrap();
    let opts = OptimizeOptions {
        allow: vec!["hydra".into()],
        budget: Some(0.5),
        ..OptimizeOptions::default()
    };
    let opt = optimize(&model, &opts, &mut |_| {}).unwrap();
    let html = attnopt::html_report::page(model.graph(), &opt.graph, &opt.report);
    (html, opt.report.layers.len())
}

#[test]
fn the_page_holds_everything_and_fetches_nothing() {
    let (html, layers) = page();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<tr><td class=\"num\">").count(), layers);
    // Two charts and two drawings of the featured layer.
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    assert!(html.contains("FLOPs per layer before and after"));
    assert!(html.contains("error per layer against the budget"));
    assert!(
        html.contains("aria-label=\"layer 0 before\"")
            && html.contains("aria-label=\"layer 0 after\"")
    );
    assert!(html.contains("budget 5e-1"), "the budget line");
    for banned in [
        "<script", "<link", "<img", " src=", " href=", "url(", "@import",
    ] {
        assert!(
            !html.contains(banned),
            "the page must be self-contained: {banned}"
        );
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn the_page_renders_in_headless_chromium_without_errors() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("ATTNOPT_REQUIRE_CHROMIUM").is_none(),
            "chromium is required here but not found"
        );
        eprintln!("SKIPPED: no chromium to render the report with (apt-get install chromium)");
        return;
    };
    let (html, _) = page();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, html).unwrap();
    let shot = dir.path().join("shot.png");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1800",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{browser} failed: {log}");
    // The page has no script: any console message is Chromium reporting a problem with it
    // (an SVG attribute it could not parse, a resource it tried to fetch).
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged: {console:#?}");
    // Not blank: a good share of non-white pixels and many colours (table, bars, boxes).
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let inked = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&c| c < 200))
        .count();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    let share = inked as f64 / pixels.len() as f64;
    println!(
        "{}×{}: {:.1} % inked, {} colours",
        info.width,
        info.height,
        100.0 * share,
        colours.len()
    );
    assert!(share > 0.02, "the screenshot is nearly blank ({share})");
    assert!(colours.len() > 20, "too few colours: {}", colours.len());
}
