//! Reads back an appliance's previous report from the time series, for the rules judged by
//! change, when its kept rule state is missing or stale (written before it existed, or by an
//! older replica). The engine ([`crate::engine::Previous`]) does the rest.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::StorageError;
use crate::alerts::AlertsConfig;
use crate::engine::{History, trend_window};
use crate::model::{DriveSample, NicRow};

/// The previous reports of appliances `known` (id, collected at), and filesystem points back to
/// the fill trend's window before `earliest`.
pub(super) async fn load_history(
    tx: &Transaction<'_>,
    earliest: DateTime<Utc>,
    known: &[(i32, DateTime<Utc>)],
    config: &AlertsConfig,
) -> Result<History, StorageError> {
    let mut out = History::default();
    if known.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i32> = known.iter().map(|k| k.0).collect();
    let at: Vec<DateTime<Utc>> = known.iter().map(|k| k.1).collect();
    let drives = tx
        .prepare_cached(
            "SELECT s.appliance_id, s.drive_id, s.reallocated_sectors, s.pending_sectors,
                    s.offline_uncorrectable, s.crc_errors, s.nvme_media_errors,
                    s.scsi_grown_defects, s.error_log_entries
             FROM drive_samples s
             JOIN unnest($1::int[], $2::timestamptz[]) AS k(a, t)
               ON s.appliance_id = k.a AND s.collected_at = k.t",
        )
        .await?;
    let nics = tx
        .prepare_cached(
            "SELECT s.appliance_id, s.name, s.rx_errors, s.tx_errors, s.rx_dropped,
                    s.tx_dropped
             FROM nic_samples s
             JOIN unnest($1::int[], $2::timestamptz[]) AS k(a, t)
               ON s.appliance_id = k.a AND s.collected_at = k.t",
        )
        .await?;
    let filesystems = tx
        .prepare_cached(
            "SELECT appliance_id, mount_point, collected_at, bytes_used
             FROM filesystem_samples
             WHERE appliance_id = ANY($1) AND collected_at >= $2
             ORDER BY collected_at",
        )
        .await?;
    let since = earliest
        .checked_sub_signed(trend_window(config))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let filling = config.filesystem_filling.enabled;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&ids, &at];
    let (drive_rows, nic_rows, fs_rows) = tokio::try_join!(
        tx.query(&drives, &params),
        tx.query(&nics, &params),
        async {
            if filling {
                tx.query(&filesystems, &[&ids, &since]).await
            } else {
                Ok(Vec::new())
            }
        },
    )?;
    out.drives = drive_rows
        .iter()
        .map(|r| {
            let sample = DriveSample {
                reallocated_sectors: r.get(2),
                pending_sectors: r.get(3),
                offline_uncorrectable: r.get(4),
                crc_errors: r.get(5),
                nvme_media_errors: r.get(6),
                scsi_grown_defects: r.get(7),
                error_log_entries: r.get(8),
                ..DriveSample::default()
            };
            (r.get(0), r.get(1), sample)
        })
        .collect();
    out.nics = nic_rows
        .iter()
        .map(|r| {
            let nic = NicRow {
                name: r.get(1),
                rx_bytes: None,
                tx_bytes: None,
                rx_errors: r.get(2),
                tx_errors: r.get(3),
                rx_dropped: r.get(4),
                tx_dropped: r.get(5),
            };
            (r.get(0), nic)
        })
        .collect();
    out.filesystems = fs_rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(out)
}
