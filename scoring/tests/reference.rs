//! Rust inference equals the Python pipeline's onnxruntime outputs on the saved reference batch
//! (`scoring/models/position-v1/reference.json`), to the last f32 ulp.

use std::path::Path;

use chainfold_scoring::model::{PositionModel, POSITION_FEATURES};

#[test]
fn rust_inference_equals_the_python_reference_batch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/position-v1");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference batch"),
    )
    .expect("json");
    let names: Vec<&str> = reference["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    assert_eq!(names, POSITION_FEATURES);
    let rows: Vec<[f32; 4]> = reference["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let v: Vec<f32> = r
                .as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect();
    let expected: Vec<f32> = reference["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    assert!(rows.len() >= 100);
    let mut model = PositionModel::load(&dir).expect("model loads");
    assert_eq!(model.version, "position-v1");
    assert_eq!(
        model.sha256,
        "804ec31e351e750a4b550cbaae6f94bc9d02a77d5e9a993c717188ca8cb61cb4"
    );
    let got = model.predict(&rows).expect("inference");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        let ulps = (g.to_bits() as i64 - e.to_bits() as i64).abs();
        assert!(ulps <= 1, "row {i}: rust {g} python {e} ({ulps} ulp)");
    }
    // One row at a time gives the same answers as the batch.
    let single = model.predict(&rows[..1]).expect("inference");
    assert_eq!(single[0], got[0]);
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let err = PositionModel::load(Path::new("/nonexistent/position-v9")).expect_err("no file");
    let text = format!("{err:#}");
    assert!(
        text.contains("could not read model /nonexistent/position-v9/position_model.onnx")
            || text.contains("ORT_DYLIB_PATH"),
        "{text}"
    );
}
