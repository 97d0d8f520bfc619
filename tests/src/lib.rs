//! Whole-pipeline tests live in `tests/`.
