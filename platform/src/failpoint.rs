//! Crash points for the fault tests: `CHAINFOLD_FAILPOINTS="project.after_commit=0.2,…"` makes
//! a process abort (as abruptly as SIGKILL: no destructor, flush or commit runs) when it passes
//! a named point, with the given probability each time. Unset (production), [`hit`] is one
//! atomic load.
//!
//! The points sit inside the windows a crash is most likely to break: between a Postgres commit
//! and what follows it (Kafka offsets, Redis, the outbox relay), between a relay's broker
//! acknowledgement and its delete, between an ingest publish and its checkpoint.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The environment variable naming the armed points.
pub const ENV: &str = "CHAINFOLD_FAILPOINTS";

fn armed() -> &'static HashMap<String, f64> {
    static ARMED: OnceLock<HashMap<String, f64>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .ok()
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    })
}

/// `name=probability` pairs, comma separated; a bare name means probability 1.
pub fn parse(spec: &str) -> HashMap<String, f64> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('=') {
            Some((name, prob)) => prob
                .trim()
                .parse()
                .ok()
                .map(|v| (name.trim().to_owned(), v)),
            None => Some((p.to_owned(), 1.0)),
        })
        .collect()
}

/// Aborts the process if `name` is armed and its coin comes up.
pub fn hit(name: &str) {
    let armed = armed();
    if armed.is_empty() {
        return;
    }
    if let Some(p) = armed.get(name) {
        if rand::random::<f64>() < *p {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_and_without_a_probability() {
        let armed = parse("project.after_commit=0.25, score.before_commit ,bad=x");
        assert_eq!(armed.get("project.after_commit"), Some(&0.25));
        assert_eq!(armed.get("score.before_commit"), Some(&1.0));
        assert!(!armed.contains_key("bad"));
    }
}
