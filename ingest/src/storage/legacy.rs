//! Moves reports kept by the walking skeleton's schema (`reports_legacy`, jsonb bodies keyed by
//! serial) into the history model, through the same batch writer new reports take, so they get
//! their time series, membership and versions too. Runs under the migration lock; resumable,
//! because a report moved twice is a duplicate and stored once.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use phonehome_schema::Report;

use super::rows;
use super::{Conn, Storage, StorageError};

const CHUNK: i64 = 200;

pub(super) async fn convert(storage: &Storage, client: &Conn) -> Result<(), StorageError> {
    let present: bool = client
        .query_one("SELECT to_regclass('reports_legacy') IS NOT NULL", &[])
        .await?
        .get(0);
    if !present {
        return Ok(());
    }
    // Current state is rebuilt from the reports themselves: "nothing kept yet" makes the first
    // moved report of each appliance its first report.
    client
        .batch_execute(
            "UPDATE appliances SET report_count = 0
             WHERE report_count <> 0 AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.appliance_id = appliances.id)",
        )
        .await?;
    let mut moved = 0u64;
    loop {
        let rows = client
            .query(
                "SELECT id, body::text, cert_sha256, received_at FROM reports_legacy
                 ORDER BY collected_at, id LIMIT $1",
                &[&CHUNK],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut prepared = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            let body: String = row.get(1);
            let cert: Vec<u8> = row.get(2);
            let received_at: DateTime<Utc> = row.get(3);
            let report: Report = serde_json::from_str(&body).map_err(|e| {
                StorageError::Config(format!(
                    "reports_legacy row {id} no longer reads as a report ({e}); it is left in \
                     place: fix or delete it, then restart"
                ))
            })?;
            let compressed = storage
                .codec()
                .compress(body.as_bytes())
                .map_err(|e| StorageError::Config(format!("zstd: {e}")))?;
            prepared.push(rows::prepare(
                &report,
                &cert,
                received_at,
                compressed,
                &storage.settings().alerts,
            ));
            ids.push(id);
        }
        let refs: Vec<&rows::PreparedReport> = prepared.iter().collect();
        storage.core.write_batch(&refs).await?;
        client
            .execute("DELETE FROM reports_legacy WHERE id = ANY($1)", &[&ids])
            .await?;
        moved = moved.saturating_add(ids.len() as u64);
    }
    client.batch_execute("DROP TABLE reports_legacy").await?;
    tracing::info!(reports = moved, "moved reports into the history model");
    Ok(())
}
