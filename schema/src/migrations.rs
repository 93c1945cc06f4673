//! The database schema as an ordered list of SQL migrations, embedded so that every ingest binary
//! carries the schema it needs. Only the ingest applies them; this crate never talks to a database.

/// One forward-only migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing, starting at 1; recorded in `schema_migrations`.
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Append only: an applied migration is never edited.
pub const ALL: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "identity_events",
        sql: include_str!("../migrations/0002_identity_events.sql"),
    },
    Migration {
        version: 3,
        name: "history",
        sql: include_str!("../migrations/0003_history.sql"),
    },
    Migration {
        version: 4,
        name: "alerts",
        sql: include_str!("../migrations/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "hot_path",
        sql: include_str!("../migrations/0005_hot_path.sql"),
    },
    Migration {
        version: 6,
        name: "row_packing",
        sql: include_str!("../migrations/0006_row_packing.sql"),
    },
    Migration {
        version: 7,
        name: "dashboard",
        sql: include_str!("../migrations/0007_dashboard.sql"),
    },
    Migration {
        version: 8,
        name: "search",
        sql: include_str!("../migrations/0008_search.sql"),
    },
    Migration {
        version: 9,
        name: "identity",
        sql: include_str!("../migrations/0009_identity.sql"),
    },
    Migration {
        version: 10,
        name: "certificate_expiry",
        sql: include_str!("../migrations/0010_certificate_expiry.sql"),
    },
    Migration {
        version: 11,
        name: "labels",
        sql: include_str!("../migrations/0011_labels.sql"),
    },
    Migration {
        version: 12,
        name: "acks_mutes",
        sql: include_str!("../migrations/0012_acks_mutes.sql"),
    },
    Migration {
        version: 13,
        name: "reopen",
        sql: include_str!("../migrations/0013_reopen.sql"),
    },
    Migration {
        version: 14,
        name: "reliability",
        sql: include_str!("../migrations/0014_reliability.sql"),
    },
    Migration {
        version: 15,
        name: "verdicts",
        sql: include_str!("../migrations/0015_verdicts.sql"),
    },
    Migration {
        version: 16,
        name: "drive_predictive",
        sql: include_str!("../migrations/0016_drive_predictive.sql"),
    },
    Migration {
        version: 17,
        name: "samples_in_bodies",
        sql: include_str!("../migrations/0017_samples_in_bodies.sql"),
    },
    Migration {
        version: 18,
        name: "seen_minute",
        sql: include_str!("../migrations/0018_seen_minute.sql"),
    },
    Migration {
        version: 19,
        name: "health_per_statement",
        sql: include_str!("../migrations/0019_health_per_statement.sql"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one() {
        for (i, m) in ALL.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "migration {} is out of order",
                m.name
            );
            assert!(!m.sql.trim().is_empty(), "migration {} is empty", m.name);
        }
    }
}
