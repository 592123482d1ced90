//! `[train] max_pairs` / `uqcast train --max-pairs`: training on pairs drawn
//! over a span longer than it holds, reading only their steps.

use std::process::Command;

use crate::errors::fails_with;
use crate::pipeline::write_pipeline;
use crate::{stderr, stdout, synth, uqcast};

/// The model's recorded training span (`m.json`'s `data.training`).
fn training_span(dir: &std::path::Path) -> serde_json::Value {
    let meta = std::fs::read_to_string(dir.join("model/m.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    meta["data"]["training"].clone()
}

/// What a training span says was drawn: first and last time, steps read,
/// pairs trained on and in the span.
fn drawn(span: &serde_json::Value) -> [serde_json::Value; 5] {
    ["first", "last", "steps", "pairs", "pairs_in_span"].map(|k| span[k].clone())
}

#[test]
fn a_span_longer_than_memory_trains_on_the_pairs_drawn_from_it() {
    let dir = tempfile::tempdir().unwrap();
    // 40 six-hourly steps (one file) of 2,652 cells: 39 pairs, the
    // last step without a partner; 5.3 kB a step held (packed).
    synth(&dir.path().join("data"), 40, "nc4", &[]);
    let config = write_pipeline(dir.path(), 2, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("iterations = 150", "iterations = 20\nmax_pairs = 6");
    std::fs::write(&config, text).unwrap();
    let c = config.to_str().unwrap();
    // 150 kB for the span: all 40 steps (212 kB) do not
    // fit, the steps of six pairs (at most 12, 64 kB) do, and so does the
    // query for the span's times.
    let train = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .env("UQCAST_QUERY_MEMORY_GB", "0.00015")
            .args(["train", "--config", c])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("(6 pairs drawn from the span's 39 from 2020-01-"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("(6 pairs drawn from the span's 39);"),
        "{}",
        stderr(&o)
    );
    let span = training_span(dir.path());
    assert_eq!(span["pairs"], 6, "{span}");
    assert_eq!(span["pairs_in_span"], 39, "{span}");
    assert_eq!(span["unpaired"], 1, "{span}");
    let steps = span["steps"].as_u64().unwrap();
    assert!(
        (7..=12).contains(&steps),
        "only the pairs' steps read: {span}"
    );
    // One pair from each sixth of the span: the first from its first 6
    // pairs (starting by 2020-01-02T06:00), the last from its last 7
    // (starting at 2020-01-09T00:00 or later).
    assert!(
        span["first"].as_str().unwrap() <= "2020-01-02T06:00Z",
        "{span}"
    );
    assert!(
        span["last"].as_str().unwrap() >= "2020-01-09T06:00Z",
        "{span}"
    );

    // The same seed draws the same pairs: the same model, bit for bit.
    let model = std::fs::read(dir.path().join("model/m.safetensors")).unwrap();
    let again = train(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(drawn(&training_span(dir.path())), drawn(&span));
    let retrained = std::fs::read(dir.path().join("model/m.safetensors")).unwrap();
    assert!(retrained == model, "the same pairs train the same model");

    // A source query that may drop steps by their values or time: the
    // span's times are queried rather than taken from the catalog. With
    // every step kept, the same times, so the same pairs.
    let source = dir.path().join("source.sql");
    let shipped = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, format!("{shipped} WHERE t2m > 0")).unwrap();
    let o = train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(drawn(&training_span(dir.path())), drawn(&span));
    // Steps from 2020-01-05 on: 24 steps, 23 pairs, of which 6 are drawn.
    std::fs::write(
        &source,
        format!("{shipped} WHERE valid_time >= '2020-01-05T00:00:00Z'"),
    )
    .unwrap();
    let o = train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let late = training_span(dir.path());
    assert_eq!(
        (late["pairs"].as_u64(), late["pairs_in_span"].as_u64()),
        (Some(6), Some(23))
    );
    assert!(
        late["first"].as_str().unwrap() >= "2020-01-05T00:00Z",
        "{late}"
    );
    std::fs::write(&source, shipped).unwrap();
    // The same span by --since, its times from the catalog: the same pairs.
    let o = train(&["--since", "2020-01-05T00:00Z"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(drawn(&training_span(dir.path())), drawn(&late));

    // Every pair: the whole span is read, and does not fit.
    let whole = train(&["--max-pairs", "39"]);
    let err = stderr(&whole);
    assert_eq!(whole.status.code(), Some(1), "{err}");
    for part in [
        "the training span does not fit in the memory a query may hold",
        "train on fewer steps (--since, --until) or pairs (--max-pairs, train.max_pairs)",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    // Given 300 kB, more than the 40 steps take packed (212 kB) but not
    // as read (424 kB), it trains on all 39, none drawn.
    let o = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .env("UQCAST_QUERY_MEMORY_GB", "0.0003")
        .args(["train", "--config", c, "--max-pairs", "1000"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("(39 pairs from 2020-01-01T00:00Z")
            && stdout(&o).contains(", 1 step without a partner 6 h later skipped,"),
        "{}",
        stdout(&o)
    );
    let span = training_span(dir.path());
    assert!(span.get("pairs_in_span").is_none(), "{span}");
    assert_eq!(
        (span["steps"].as_u64(), span["unpaired"].as_u64()),
        (Some(40), Some(1))
    );

    // Bad values are refused before anything is read.
    let o = uqcast(&["train", "--config", c, "--max-pairs", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-pairs"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("max_pairs = 6", "max_pairs = 0")).unwrap();
    fails_with(
        &["train", "--config", c],
        &["pipeline.toml: train.max_pairs: must be at least 1"],
    );
}
