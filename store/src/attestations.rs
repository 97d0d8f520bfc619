//! Signed off-chain attestations (`attestation`) the scorer takes into a score, idempotent by
//! their id.

use std::collections::HashMap;

use chainfold_domain::credit::Attestation;
use sqlx::{PgPool, Postgres, Transaction};

/// Stores `attestation` (read at `kafka_partition`/`kafka_offset`) unless its id is stored.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    a: &Attestation,
    kafka_partition: i32,
    kafka_offset: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO attestation (id, chain_id, wallet, kind, value, issuer, issued_at, expires_at,
                                  kafka_partition, kafka_offset, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
        a.id().to_string(),
        a.chain_id as i64,
        format!("{:#x}", a.wallet),
        a.kind,
        a.value,
        a.issuer,
        a.issued_at,
        a.expires_at,
        kafka_partition,
        kafka_offset,
        a.signature
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The attestations of each wallet (aligned `chains`/`wallets`), oldest first.
pub async fn of_wallets(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<HashMap<(u64, String), Vec<Attestation>>> {
    let rows = sqlx::query!(
        "SELECT a.chain_id, a.wallet, a.kind, a.value, a.issuer, a.issued_at, a.expires_at,
                a.signature
         FROM UNNEST($1::int8[], $2::text[]) AS w(chain_id, wallet)
         JOIN attestation a ON a.chain_id = w.chain_id AND a.wallet = w.wallet
         ORDER BY a.chain_id, a.wallet, a.issued_at, a.id",
        chains,
        wallets
    )
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<(u64, String), Vec<Attestation>> = HashMap::new();
    for r in rows {
        let address = r.wallet.parse().unwrap_or_default();
        out.entry((r.chain_id as u64, r.wallet))
            .or_default()
            .push(Attestation {
                schema_version: chainfold_domain::SCHEMA_VERSION,
                chain_id: r.chain_id as u64,
                wallet: address,
                kind: r.kind,
                value: r.value,
                issuer: r.issuer,
                issued_at: r.issued_at,
                expires_at: r.expires_at,
                signature: r.signature,
            });
    }
    Ok(out)
}
