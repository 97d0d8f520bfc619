//! Credit scores (`credit_score`): the scorer's writes and the reads it makes of its own rows.
//! A score row is unique per (chain, wallet, event), so a replayed batch stores nothing twice;
//! the feed trigger turns each delete into a retraction for subscribers. The API's point
//! reads of scores are here ([`ScoreRow`]); its Redis copies are in `latest`, its feed in
//! `feeds`, its pages in the API's collection engine.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::projection::copy::{copy_in_binary_rows, is_unique_violation};
use crate::projection::StoreError;

/// One score to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewScore {
    pub chain_id: i64,
    pub wallet: String,
    pub score: i32,
    /// The band's stored name (`EXCELLENT` … `VERY_POOR`).
    pub band: String,
    pub probability_of_liquidation: Option<f64>,
    /// The reasons as JSON text (an array), stored as `json` (as written): the scorer
    /// serializes them once, straight from its type, for this row and its published message
    /// alike.
    pub reasons: String,
    pub computed_at: DateTime<Utc>,
    /// The event that triggered it, and where that event is in the log.
    pub event_id: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// How far the projector had folded the event's partition when the score was computed.
    pub projector_next_offset: i64,
    pub block_number: Option<i64>,
    pub health_factor: Option<f64>,
}

/// Scores to store as columns, for one `UNNEST` statement.
#[derive(Debug, Default)]
pub struct NewScores {
    chain_id: Vec<i64>,
    wallet: Vec<String>,
    score: Vec<i32>,
    band: Vec<String>,
    probability: Vec<Option<f64>>,
    reasons: Vec<String>,
    computed_at: Vec<DateTime<Utc>>,
    event_id: Vec<String>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    projector_next: Vec<i64>,
    block: Vec<Option<i64>>,
    health: Vec<Option<f64>>,
}

impl NewScores {
    pub fn push(&mut self, s: NewScore) {
        self.chain_id.push(s.chain_id);
        self.wallet.push(s.wallet);
        self.score.push(s.score);
        self.band.push(s.band);
        self.probability.push(s.probability_of_liquidation);
        self.reasons.push(s.reasons);
        self.computed_at.push(s.computed_at);
        self.event_id.push(s.event_id);
        self.topic.push(s.kafka_topic);
        self.partition.push(s.kafka_partition);
        self.offset.push(s.kafka_offset);
        self.projector_next.push(s.projector_next_offset);
        self.block.push(s.block_number);
        self.health.push(s.health_factor);
    }

    pub fn len(&self) -> usize {
        self.chain_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chain_id.is_empty()
    }

    /// The wallets and event ids, by position (moved out, for a caller that stored the rows
    /// and keeps their keys).
    pub fn into_wallets_and_events(self) -> (Vec<String>, Vec<String>) {
        (self.wallet, self.event_id)
    }
}

impl FromIterator<NewScore> for NewScores {
    fn from_iter<I: IntoIterator<Item = NewScore>>(iter: I) -> Self {
        let mut all = NewScores::default();
        for s in iter {
            all.push(s);
        }
        all
    }
}

/// Stores `scores` computed by model `model_version` (`model_sha256`); a score already stored
/// (same chain, wallet and event: a replay) is skipped, and a score the batch holds twice is
/// stored once (the first). Returns the positions in `scores` of the rows that were new, in
/// ascending order (a caller takes its own copies of those rows by position, no keys cloned).
///
/// A batch of [`COPY_MIN`] scores or more goes in as one `COPY` inside a savepoint: the scorer
/// never reads an offset twice (its offsets commit with its scores), so a stored score comes
/// back only after a rebalance race or a rebuild's overlap, and then the `COPY` fails on the
/// unique key, rolls back to the savepoint and the batch takes the `INSERT … ON CONFLICT DO
/// NOTHING` statement. Measured: BENCHMARKS.md, "Scoring at volume".
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    model_version: &str,
    model_sha256: &str,
    scores: &NewScores,
) -> sqlx::Result<Vec<usize>> {
    if scores.len() >= COPY_MIN {
        if let Some(new) = copy(tx, model_version, model_sha256, scores).await? {
            return Ok(new);
        }
    }
    insert_rows(tx, model_version, model_sha256, scores).await
}

/// Batches smaller than this take the `INSERT … ON CONFLICT` statement.
pub const COPY_MIN: usize = 64;

/// The `COPY` of [`insert`]: `None` (nothing written) when a score was stored already.
async fn copy(
    tx: &mut Transaction<'_, Postgres>,
    model_version: &str,
    model_sha256: &str,
    s: &NewScores,
) -> sqlx::Result<Option<Vec<usize>>> {
    // Each (chain, wallet, event) once, the first kept, as `ON CONFLICT DO NOTHING` keeps it.
    let mut seen = std::collections::HashSet::with_capacity(s.len());
    let first: Vec<usize> = (0..s.len())
        .filter(|&i| seen.insert((s.chain_id[i], s.wallet[i].as_str(), s.event_id[i].as_str())))
        .collect();
    sqlx::query!("SAVEPOINT chainfold_copy")
        .execute(&mut **tx)
        .await?;
    let copied = copy_in_binary_rows(
        tx,
        "COPY credit_score (chain_id, wallet, score, band, probability_of_liquidation, reasons,
             model_version, model_sha256, computed_at, event_id, kafka_topic, kafka_partition,
             kafka_offset, projector_next_offset, block_number, health_factor)
         FROM STDIN (FORMAT binary)",
        16,
        first.iter().copied(),
        |data, i| {
            data.int8(s.chain_id[i])
                .text(&s.wallet[i])
                .int4(s.score[i])
                .text(&s.band[i])
                .float8(s.probability[i])
                .text(&s.reasons[i])
                .text(model_version)
                .text(model_sha256)
                .time(Some(s.computed_at[i]))
                .text(&s.event_id[i])
                .text(&s.topic[i])
                .int4(s.partition[i])
                .int8(s.offset[i])
                .int8(s.projector_next[i])
                .opt_int8(s.block[i])
                .float8(s.health[i]);
        },
    )
    .await;
    match copied {
        Ok(()) => {
            sqlx::query!("RELEASE SAVEPOINT chainfold_copy")
                .execute(&mut **tx)
                .await?;
            Ok(Some(first))
        }
        Err(StoreError::Database(err)) if is_unique_violation(&err) => {
            sqlx::query!("ROLLBACK TO SAVEPOINT chainfold_copy")
                .execute(&mut **tx)
                .await?;
            tracing::debug!("a scores COPY met a stored score; the batch takes the INSERT");
            Ok(None)
        }
        Err(StoreError::Database(err)) => Err(err),
        Err(StoreError::Fenced(_)) => unreachable!("a COPY checks no offsets"),
    }
}

/// The `INSERT … ON CONFLICT DO NOTHING` of [`insert`].
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    model_version: &str,
    model_sha256: &str,
    scores: &NewScores,
) -> sqlx::Result<Vec<usize>> {
    let rows = sqlx::query!(
        r#"INSERT INTO credit_score (chain_id, wallet, score, band, probability_of_liquidation,
               reasons, model_version, model_sha256, computed_at, event_id, kafka_topic,
               kafka_partition, kafka_offset, projector_next_offset, block_number, health_factor)
           SELECT c, w, s, b, p, r::json, $6, $7, at, e, tp, pa, o, pn, bl, hf
           FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::text[], $5::float8[],
                $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::int4[],
                $13::int8[], $14::int8[], $15::int8[], $16::float8[])
                AS t(c, w, s, b, p, r, at, e, tp, pa, o, pn, bl, hf)
           ON CONFLICT (chain_id, wallet, event_id) DO NOTHING
           RETURNING chain_id, wallet, event_id"#,
        &scores.chain_id,
        &scores.wallet,
        &scores.score,
        &scores.band,
        &scores.probability as &[Option<f64>],
        model_version,
        model_sha256,
        &scores.reasons,
        &scores.computed_at,
        &scores.event_id,
        &scores.topic,
        &scores.partition,
        &scores.offset,
        &scores.projector_next,
        &scores.block as &[Option<i64>],
        &scores.health as &[Option<f64>]
    )
    .fetch_all(&mut **tx)
    .await?;
    // Each returned key at the first position that holds it (the row `ON CONFLICT` kept).
    let mut first = std::collections::HashMap::with_capacity(scores.len());
    for i in (0..scores.len()).rev() {
        first.insert(
            (
                scores.chain_id[i],
                scores.wallet[i].as_str(),
                scores.event_id[i].as_str(),
            ),
            i,
        );
    }
    let mut new: Vec<usize> = rows
        .iter()
        .filter_map(|r| {
            first
                .get(&(r.chain_id, r.wallet.as_str(), r.event_id.as_str()))
                .copied()
        })
        .collect();
    new.sort_unstable();
    Ok(new)
}

/// The band of each wallet's latest score: (chain, wallet, band), wallets without a score left
/// out.
pub async fn latest_bands(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<Vec<(i64, String, String)>> {
    let rows = sqlx::query!(
        r#"SELECT t.c AS "chain_id!", t.w AS "wallet!", s.band
           FROM UNNEST($1::int8[], $2::text[]) AS t(c, w)
           CROSS JOIN LATERAL (SELECT band FROM credit_score
                               WHERE chain_id = t.c AND wallet = t.w
                               ORDER BY id DESC LIMIT 1) s"#,
        chains,
        wallets
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.chain_id, r.wallet, r.band))
        .collect())
}

/// Deletes the scores of retracted events, each given as (chain, event id, block): only a score
/// computed at that block goes (the event's canonical replacement keeps its own). Returns the
/// (chain, wallet) of each deleted score.
pub async fn retract(
    tx: &mut Transaction<'_, Postgres>,
    chains: &[i64],
    events: &[String],
    blocks: &[i64],
) -> sqlx::Result<Vec<(i64, String)>> {
    let rows = sqlx::query!(
        "DELETE FROM credit_score c
         USING UNNEST($1::int8[], $2::text[], $3::int8[]) AS r(chain_id, event_id, block_number)
         WHERE c.chain_id = r.chain_id AND c.event_id = r.event_id
           AND c.block_number = r.block_number
         RETURNING c.chain_id, c.wallet",
        chains,
        events,
        blocks
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.chain_id, r.wallet)).collect())
}

/// A `credit_score` row as the API serves it: read from Postgres, or as the JSON of its Redis
/// copy (`latest`, whose `SCORE_COLUMNS` are these fields). The scorer's outbox relay reads it
/// with the reasons as the exact JSON text stored (`Reasons = String`, [`records`]).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Deserialize)]
pub struct ScoreRow<Reasons = serde_json::Value> {
    pub id: i64,
    pub chain_id: i64,
    pub wallet: String,
    pub score: i32,
    pub health_factor: Option<f64>,
    pub band: String,
    pub probability_of_liquidation: Option<f64>,
    pub reasons: Reasons,
    pub model_version: String,
    pub model_sha256: String,
    pub computed_at: Option<DateTime<Utc>>,
    pub event_id: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub block_number: Option<i64>,
}

/// The id of the latest score (0 without scores): where a score feed starting now begins.
pub async fn last_id(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT coalesce(max(id), 0) AS "id!" FROM credit_score"#)
        .fetch_one(pool)
        .await
}

/// Each wallet's latest score with an id of at most `upto`, of `chain_id` and `wallets`
/// (`None`: all).
pub async fn latest_at(
    pool: &PgPool,
    upto: i64,
    chain_id: Option<i64>,
    wallets: Option<&[String]>,
) -> sqlx::Result<Vec<ScoreRow>> {
    sqlx::query_as!(
        ScoreRow,
        "SELECT DISTINCT ON (chain_id, wallet) id, chain_id, wallet, health_factor, score, band,
                probability_of_liquidation, reasons, model_version, model_sha256, computed_at,
                event_id, kafka_topic, kafka_partition, kafka_offset, block_number
         FROM credit_score
         WHERE id <= $1 AND ($2::int8 IS NULL OR chain_id = $2)
           AND ($3::text[] IS NULL OR wallet = ANY($3))
         ORDER BY chain_id, wallet, id DESC",
        upto,
        chain_id,
        wallets
    )
    .fetch_all(pool)
    .await
}

/// The latest score of each (chain, wallet) of `chains`/`wallets` (aligned) that has one,
/// through the (chain_id, wallet, id DESC) index.
pub async fn latest_of(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<Vec<ScoreRow>> {
    sqlx::query_as!(
        ScoreRow,
        r#"SELECT s.id AS "id!", s.chain_id AS "chain_id!", s.wallet AS "wallet!",
                  s.health_factor, s.score AS "score!", s.band AS "band!",
                  s.probability_of_liquidation, s.reasons AS "reasons!",
                  s.model_version AS "model_version!", s.model_sha256 AS "model_sha256!",
                  s.computed_at, s.event_id AS "event_id!", s.kafka_topic AS "kafka_topic!",
                  s.kafka_partition AS "kafka_partition!", s.kafka_offset AS "kafka_offset!",
                  s.block_number
           FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
           CROSS JOIN LATERAL (SELECT id, chain_id, wallet, health_factor, score, band,
                                      probability_of_liquidation, reasons, model_version,
                                      model_sha256, computed_at, event_id, kafka_topic,
                                      kafka_partition, kafka_offset, block_number
                               FROM credit_score
                               WHERE chain_id = k.c AND wallet = k.w
                               ORDER BY id DESC LIMIT 1) s"#,
        chains,
        wallets
    )
    .fetch_all(pool)
    .await
}

/// The stored score of each (chain, wallet, event) of `chains`/`wallets`/`events` (aligned), in
/// their order, with its reasons as the exact JSON text stored (the `json` column keeps it as
/// written): what its scores-topic record is rendered from. `None` where none is stored
/// (retracted by a reorg; a key asked twice is found at its first place only). One statement,
/// through the (chain_id, wallet, event_id) unique index.
pub async fn records(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
    events: &[String],
) -> sqlx::Result<Vec<Option<ScoreRow<String>>>> {
    // Each stored row once, at the first place its key is asked, in the order of those places.
    let found = sqlx::query_as!(
        ScoreRow,
        r#"SELECT f.id AS "id!", f.chain_id AS "chain_id!", f.wallet AS "wallet!",
                  f.score AS "score!", f.health_factor, f.band AS "band!",
                  f.probability_of_liquidation, f.reasons AS "reasons!",
                  f.model_version AS "model_version!", f.model_sha256 AS "model_sha256!",
                  f.computed_at, f.event_id AS "event_id!", f.kafka_topic AS "kafka_topic!",
                  f.kafka_partition AS "kafka_partition!", f.kafka_offset AS "kafka_offset!",
                  f.block_number
           FROM (SELECT DISTINCT ON (s.id) s.id, s.chain_id, s.wallet, s.score,
                        s.health_factor, s.band, s.probability_of_liquidation,
                        s.reasons::text AS reasons, s.model_version, s.model_sha256,
                        s.computed_at, s.event_id, s.kafka_topic, s.kafka_partition,
                        s.kafka_offset, s.block_number, k.i
                 FROM UNNEST($1::int8[], $2::text[], $3::text[]) WITH ORDINALITY AS k(c, w, e, i)
                 JOIN credit_score s ON s.chain_id = k.c AND s.wallet = k.w AND s.event_id = k.e
                 ORDER BY s.id, k.i) f
           ORDER BY f.i"#,
        chains,
        wallets,
        events
    )
    .fetch_all(pool)
    .await?;
    // A place takes the next row when the row is its key's: that row's first place is this one
    // (a later first place would not be next, an earlier one was taken there).
    let mut found = found.into_iter().peekable();
    Ok(chains
        .iter()
        .zip(wallets)
        .zip(events)
        .map(|((c, w), e)| {
            found.next_if(|r| r.chain_id == *c && &r.wallet == w && &r.event_id == e)
        })
        .collect())
}
