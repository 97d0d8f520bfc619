//! Credit scoring: wallet credit scores from the position model (ONNX, served with `ort`) and
//! the behaviour scorecard, and the lending decisions they drive.
//!
//! - [`model`]: loads the position model (trained by `scoring/train/`, card in
//!   `scoring/MODEL_CARD.md`).
//! - [`profiles`]: each wallet's credit profile, an incremental fold kept in Postgres.
//! - [`worker`]: `chainfold score`, the streaming scorer (scores, decisions, outbox).
//! - [`backtest`]: `chainfold backtest`, a chosen model version over a replayed window into its
//!   own result set.
//!
//! Risk (detectors, stress, the anomaly model, the report) is the `chainfold-risk` crate.

pub mod backtest;
pub mod model;
pub mod profiles;
pub mod worker;
