//! Scoring: wallet credit scores, pool risk signals and lending decisions from ONNX models.
//!
//! Deliberately empty until the scoring issue: the crate exists so the workspace layout, the
//! dependency direction (`domain ← scoring`) and the `chainfold score` role have their place.
//! Nothing here is called yet.
