//! Scoring: wallet credit scores from the position model (ONNX, served with `ort`) and the
//! behaviour scorecard, and the decisions they drive.
//!
//! [`model`] loads the position model; [`profiles`] keeps each wallet's credit profile (an incremental fold) in Postgres (trained by `scoring/train/`, card in
//! `scoring/MODEL_CARD.md`); [`worker`] is `chainfold score`, the streaming scorer;
//! [`backtest`] is `chainfold backtest`, a chosen model version over a replayed window into its
//! own result set; [`risk`] is `chainfold risk`, the attack detectors on the stream; [`report`]
//! is `chainfold report`, the detectors' quality report; [`stress`] is `chainfold stress`, the
//! shock grid and VaR on live positions.

pub mod anomaly;
pub mod backtest;
pub mod model;
pub mod profiles;
pub mod report;
pub mod risk;
pub mod stress;
pub mod worker;
