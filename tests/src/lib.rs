//! Whole-pipeline tests live in `tests/`, the pipeline benchmark in `benches/`; this library is
//! empty so the package can hold them.
