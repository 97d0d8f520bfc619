//! Risk: what `chainfold risk` and `chainfold stress` do.
//!
//! - [`worker`]: `chainfold risk`, the streaming risk worker: on each chain's seals it runs the
//!   block detectors (sandwiches, flash-loan attacks, drains, pool anomalies) and the liquidity
//!   shortage forecasts, stores alerts and incidents, and publishes them on `chainfold.risk.v1`.
//! - [`stress`]: `chainfold stress`, the shock grid in exact decimals and Monte Carlo VaR over a
//!   chain's live lending positions.
//! - [`anomaly`]: the pool anomaly model (ONNX, served with `ort`) and its causal features.
//!
//! The offline report that measures these detectors on recorded data is a tool of its own
//! (`report/`, `chainfold report`), so this role reads no recorded data sets.

pub mod anomaly;
pub mod stress;
pub mod worker;
