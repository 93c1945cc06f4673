//! The open-file limit the ingest needs: every connection on either listener and every pool
//! connection is a descriptor, and past the limit `accept` fails and report intake stops
//! (issue 13, finding 4). systemd's default soft limit is 1,024 with a far higher hard one,
//! so the ingest raises its soft limit to the hard one (as systemd's own documentation asks of
//! programs that need more and do not use `select`) and warns when even that is too low.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Config;

/// Descriptors beside connections: listeners, log and PKI files, the runtime's own, and
/// Alertmanager's connection, with room to spare.
const OTHER_FILES: u64 = 64;

/// Where the kernel caps any one process by default (`fs.nr_open`), used as the target when
/// the hard limit is unlimited.
const KERNEL_DEFAULT_NR_OPEN: u64 = 1 << 20;

/// Descriptors the configuration can hold open at once.
pub fn needed(config: &Config) -> u64 {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    as_u64(config.max_connections)
        .saturating_add(as_u64(config.ops_max_connections))
        .saturating_add(as_u64(config.db_pool_size))
        .saturating_add(OTHER_FILES)
}

/// What to do about a soft and hard limit (`None`: unlimited) given what is `needed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The soft limit is enough as it is.
    Enough,
    /// Raise the soft limit to `to` (the hard limit); `enough` tells whether that suffices.
    Raise { to: u64, enough: bool },
}

pub fn plan(soft: Option<u64>, hard: Option<u64>, needed: u64) -> Plan {
    match soft {
        None => Plan::Enough,
        Some(soft) if soft >= needed => Plan::Enough,
        Some(soft) => {
            let to = hard.unwrap_or(KERNEL_DEFAULT_NR_OPEN).max(soft);
            Plan::Raise {
                to,
                enough: to >= needed,
            }
        }
    }
}

/// What [`ensure`] found and did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Enough {
        soft: Option<u64>,
    },
    Raised {
        from: u64,
        to: u64,
    },
    /// Still below `needed` after raising what could be raised.
    TooLow {
        soft: u64,
        hard: Option<u64>,
    },
    /// setrlimit refused (a sandbox, a seccomp filter): the soft limit stays.
    RaiseFailed {
        soft: u64,
        error: String,
    },
}

/// Raises the soft open-file limit when it is below `needed`, as far as the hard limit allows.
pub fn ensure(needed: u64) -> Outcome {
    let limit = getrlimit(Resource::Nofile);
    match (plan(limit.current, limit.maximum, needed), limit.current) {
        (Plan::Enough, soft) => Outcome::Enough { soft },
        (Plan::Raise { to, enough }, Some(from)) => {
            let raised = Rlimit {
                current: Some(to),
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Err(e) => Outcome::RaiseFailed {
                    soft: from,
                    error: e.to_string(),
                },
                Ok(()) if enough => Outcome::Raised { from, to },
                Ok(()) => Outcome::TooLow {
                    soft: to,
                    hard: limit.maximum,
                },
            }
        }
        // `plan` raises only a finite soft limit.
        (Plan::Raise { .. }, None) => Outcome::Enough { soft: None },
    }
}

/// [`ensure`] for `config`, logged: a warning names `LimitNOFILE` when the limit stays too low.
pub fn check(config: &Config) {
    let needed = needed(config);
    match ensure(needed) {
        Outcome::Enough { soft } => tracing::debug!(?soft, needed, "open-file limit is enough"),
        Outcome::Raised { from, to } => tracing::info!(
            from,
            to,
            needed,
            "raised the open-file soft limit to the hard limit"
        ),
        Outcome::TooLow { soft, hard } => tracing::warn!(
            limit = soft,
            ?hard,
            needed,
            "the open-file limit is below what max_connections + ops_max_connections + \
             db_pool_size need; raise it (systemd: LimitNOFILE={needed} or more)"
        ),
        Outcome::RaiseFailed { soft, error } => tracing::warn!(
            limit = soft,
            needed,
            %error,
            "the open-file limit is below what max_connections + ops_max_connections + \
             db_pool_size need and cannot be raised; raise it (systemd: LimitNOFILE={needed} \
             or more)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_only_when_short() {
        // systemd's defaults: 1,024 soft, 524,288 hard.
        assert_eq!(
            plan(Some(1024), Some(524_288), 900),
            Plan::Enough,
            "enough as it is"
        );
        assert_eq!(
            plan(Some(1024), Some(524_288), 900 + 256),
            Plan::Raise {
                to: 524_288,
                enough: true
            }
        );
        assert_eq!(
            plan(Some(1024), Some(1024), 2048),
            Plan::Raise {
                to: 1024,
                enough: false
            }
        );
        assert_eq!(plan(None, None, u64::MAX), Plan::Enough);
        assert_eq!(
            plan(Some(100), None, 1000),
            Plan::Raise {
                to: KERNEL_DEFAULT_NR_OPEN,
                enough: true
            }
        );
    }

    #[test]
    fn the_defaults_need_the_listeners_and_the_pool() {
        let c = Config::default();
        assert_eq!(needed(&c), 512 + 256 + 16 + OTHER_FILES);
    }

    #[test]
    fn ensure_leaves_a_sufficient_limit_alone() {
        // Nothing asks for less than one descriptor; the limit is never lowered.
        let before = getrlimit(Resource::Nofile);
        assert!(matches!(ensure(1), Outcome::Enough { .. }));
        assert_eq!(getrlimit(Resource::Nofile).current, before.current);
    }
}
