//! Risk alerts and incidents (`risk_alert`, `risk_incident`): the risk worker's writes and the
//! window of stored alerts it correlates new ones with. An alert's id is deterministic (its
//! kind, chain and what it is about), so an evaluation run again stores nothing twice; what
//! an evaluation no longer finds is deleted (the feed trigger records the retraction).

use chainfold_domain::messages::Alert;
use chainfold_domain::risk::{AlertKind, AlertRef, Incident};
use sqlx::{Postgres, Transaction};

/// Deletes the stored alerts that `alerts` replace: same id, other evidence, and for a block
/// alert only from its own block or an earlier one (a forecast is always replaced: a forecast
/// recomputed with its whole hour supersedes one made on part of it).
pub async fn delete_replaced(
    tx: &mut Transaction<'_, Postgres>,
    alerts: &[Alert],
) -> sqlx::Result<()> {
    let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
    let evidence: Vec<serde_json::Value> = alerts.iter().map(|a| a.evidence.clone()).collect();
    let blocks: Vec<i64> = alerts.iter().map(|a| a.block_number as i64).collect();
    sqlx::query!(
        "DELETE FROM risk_alert a
         USING UNNEST($1::text[], $2::jsonb[], $3::int8[]) AS n(id, evidence, block)
         WHERE a.id = n.id AND a.evidence <> n.evidence
           AND (a.kind = 'LIQUIDITY_SHORTAGE' OR n.block <= a.block_number)",
        &ids,
        &evidence,
        &blocks
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes the chain's alerts of `kinds` in blocks `from..=to` that are not among `keep`: what
/// an evaluation of those blocks no longer finds.
pub async fn delete_unfound_in_blocks(
    tx: &mut Transaction<'_, Postgres>,
    chain_id: i64,
    (from, to): (i64, i64),
    kinds: &[AlertKind],
    keep: &[String],
) -> sqlx::Result<()> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
    sqlx::query!(
        "DELETE FROM risk_alert WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
           AND kind = ANY($4) AND NOT (id = ANY($5))",
        chain_id,
        from,
        to,
        &kinds,
        keep
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes the alerts with ids in `evaluated` that are not among `keep`.
pub async fn delete_unfound(
    tx: &mut Transaction<'_, Postgres>,
    evaluated: &[String],
    keep: &[String],
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM risk_alert WHERE id = ANY($1) AND NOT (id = ANY($2))",
        evaluated,
        keep
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores `alert` unless its id is stored; `true` when it is new.
pub async fn insert(tx: &mut Transaction<'_, Postgres>, a: &Alert) -> sqlx::Result<bool> {
    let inserted = sqlx::query!(
        "INSERT INTO risk_alert (id, kind, severity, chain_id, block_number, tx_hashes,
            addresses, pools, evidence, detector_version, source_published_at, usd, block_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING",
        a.id,
        a.kind.as_str(),
        a.severity.as_str(),
        a.chain_id as i64,
        a.block_number as i64,
        &a.tx_hashes,
        &a.addresses,
        &a.pools,
        a.evidence,
        a.detector_version,
        a.source_published_at,
        a.usd,
        a.block_time
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The stored alerts whose event time (block time, else publication, else detection) is
/// within `from..=to` (unix seconds), by time and id: what new alerts are correlated with.
pub async fn in_window(
    tx: &mut Transaction<'_, Postgres>,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<AlertRef>> {
    let rows = sqlx::query!(
        r#"SELECT id, kind, severity, chain_id,
                  extract(epoch FROM coalesce(block_time, source_published_at, detected_at))::int8
                      AS "at!",
                  addresses, tx_hashes
           FROM risk_alert
           WHERE coalesce(block_time, source_published_at, detected_at)
                 BETWEEN to_timestamp($1::float8) AND to_timestamp($2::float8)
           ORDER BY coalesce(block_time, source_published_at, detected_at), id"#,
        from as f64,
        to as f64
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(AlertRef {
                id: r.id,
                kind: r.kind.parse().map_err(anyhow::Error::msg)?,
                severity: r.severity.parse().map_err(anyhow::Error::msg)?,
                chain_id: r.chain_id as u64,
                at: r.at,
                addresses: r.addresses,
                tx_hashes: r.tx_hashes,
            })
        })
        .collect()
}

/// Stores `incident` (replacing its earlier state) and deletes the incidents it absorbed
/// (those whose id, an earliest alert, is now one of its members).
pub async fn upsert_incident(
    tx: &mut Transaction<'_, Postgres>,
    incident: &Incident,
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM risk_incident WHERE id = ANY($1) AND id <> $2",
        &incident.alert_ids,
        incident.id
    )
    .execute(&mut **tx)
    .await?;
    let chains: Vec<i64> = incident.chain_ids.iter().map(|c| *c as i64).collect();
    sqlx::query!(
        "INSERT INTO risk_incident (id, alert_ids, chain_ids, stages, severity, first_at, last_at)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8), to_timestamp($7::float8))
         ON CONFLICT (id) DO UPDATE SET alert_ids = EXCLUDED.alert_ids,
             chain_ids = EXCLUDED.chain_ids, stages = EXCLUDED.stages,
             severity = EXCLUDED.severity, first_at = EXCLUDED.first_at,
             last_at = EXCLUDED.last_at, updated_at = now()",
        incident.id,
        &incident.alert_ids,
        &chains,
        &incident.stages,
        incident.severity.as_str(),
        incident.first_at as f64,
        incident.last_at as f64
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How far a risk group has evaluated a chain: per (topic, partition), the next offset its
/// sealed stretches covered.
pub type Through = std::collections::BTreeMap<(String, i32), i64>;

/// Stores `group`'s progress on `chain` in `tx` (with the alerts it covers): `through` replaces
/// the stored bound, the last block never goes back.
pub async fn save_progress(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    chain_id: i64,
    through: &Through,
    last_block: Option<i64>,
) -> sqlx::Result<()> {
    let through: Vec<serde_json::Value> = through
        .iter()
        .map(|((t, p), n)| serde_json::json!({"topic": t, "partition": p, "next_offset": n}))
        .collect();
    sqlx::query!(
        "INSERT INTO risk_progress (group_id, chain_id, through, last_block)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (group_id, chain_id) DO UPDATE SET through = EXCLUDED.through,
             last_block = greatest(risk_progress.last_block, EXCLUDED.last_block),
             updated_at = now()",
        group,
        chain_id,
        serde_json::Value::Array(through),
        last_block
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `group`'s stored progress on `chain` (empty before its first evaluation).
pub async fn progress(pool: &sqlx::PgPool, group: &str, chain_id: i64) -> sqlx::Result<Through> {
    let through = sqlx::query_scalar!(
        "SELECT through FROM risk_progress WHERE group_id = $1 AND chain_id = $2",
        group,
        chain_id
    )
    .fetch_optional(pool)
    .await?;
    let mut out = Through::new();
    for t in through
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
    {
        if let (Some(topic), Some(partition), Some(next)) = (
            t["topic"].as_str(),
            t["partition"].as_i64(),
            t["next_offset"].as_i64(),
        ) {
            out.insert((topic.to_owned(), partition as i32), next);
        }
    }
    Ok(out)
}

/// A stored incident.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRow {
    pub id: String,
    pub alert_ids: Vec<String>,
    pub chain_ids: Vec<i64>,
    pub stages: Vec<String>,
    pub severity: String,
    pub first_at: chrono::DateTime<chrono::Utc>,
    pub last_at: chrono::DateTime<chrono::Utc>,
}

/// The incidents that involve `chain_id`, latest first, at most `limit`.
pub async fn incidents_of_chain(
    pool: &sqlx::PgPool,
    chain_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<IncidentRow>> {
    sqlx::query_as!(
        IncidentRow,
        "SELECT id, alert_ids, chain_ids, stages, severity, first_at, last_at FROM risk_incident
         WHERE $1 = ANY(chain_ids) ORDER BY last_at DESC, id LIMIT $2",
        chain_id,
        limit
    )
    .fetch_all(pool)
    .await
}

/// The transaction that acted on alert `alert_id` (`risk_action`), if one has.
pub async fn action_tx(pool: &sqlx::PgPool, alert_id: &str) -> sqlx::Result<Option<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT tx_hash FROM risk_action WHERE alert_id = $1",
        alert_id
    )
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// An action taken on an alert: liquidity provisioned, or the error that prevented it.
#[derive(Debug, Clone, PartialEq)]
pub struct Action<'a> {
    pub alert_id: &'a str,
    pub chain_id: i64,
    pub reserve: &'a str,
    pub amount: f64,
    pub tx_hash: Option<String>,
    pub tx_block: Option<i64>,
    pub error: Option<String>,
}

/// Records a provisioning `action` (the latest attempt per alert).
pub async fn record_provision(pool: &sqlx::PgPool, action: &Action<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO risk_action (alert_id, chain_id, action, reserve, amount, tx_hash, tx_block, error)
         VALUES ($1, $2, 'provision', $3, $4, $5, $6, $7)
         ON CONFLICT (alert_id) DO UPDATE SET tx_hash = EXCLUDED.tx_hash,
             tx_block = EXCLUDED.tx_block, error = EXCLUDED.error, acted_at = now()",
        action.alert_id,
        action.chain_id,
        action.reserve,
        action.amount,
        action.tx_hash,
        action.tx_block,
        action.error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The chain's first alert of `kind` naming one of `tx_hashes`: (block, severity).
pub async fn first_naming_tx(
    pool: &sqlx::PgPool,
    chain_id: i64,
    kind: AlertKind,
    tx_hashes: &[String],
) -> sqlx::Result<Option<(i64, String)>> {
    let row = sqlx::query!(
        "SELECT block_number, severity FROM risk_alert
         WHERE chain_id = $1 AND kind = $2 AND tx_hashes && $3 ORDER BY block_number LIMIT 1",
        chain_id,
        kind.as_str(),
        tx_hashes
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.block_number, r.severity)))
}

/// The chain's first alert of `kind` on one of `pools`: (block, severity).
pub async fn first_on_pools(
    pool: &sqlx::PgPool,
    chain_id: i64,
    kind: AlertKind,
    pools: &[String],
) -> sqlx::Result<Option<(i64, String)>> {
    let row = sqlx::query!(
        "SELECT block_number, severity FROM risk_alert
         WHERE chain_id = $1 AND kind = $2 AND pools && $3 ORDER BY block_number LIMIT 1",
        chain_id,
        kind.as_str(),
        pools
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.block_number, r.severity)))
}
