//! Scoring: wallet credit scores, pool risk signals and lending decisions from ONNX models.
//!
//! So far: [`model`], the position model (trained by `scoring/train/`, card in
//! `scoring/MODEL_CARD.md`) served with `ort`; the scoring worker, scorecard and decisions come
//! next.

pub mod model;
pub mod worker;
