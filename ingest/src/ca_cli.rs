//! `phonehome-ingest ca …`: the fleet CA on the operations host (init, server and appliance
//! certificates) and the identity actions that need the database (enrolment tokens,
//! revocation, the CRL).

use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use phonehome_ingest::config::Config;
use phonehome_ingest::storage::identity::RevokeTarget;
use phonehome_pki::{self as pki, ca};
use phonehome_schema::Serial;

/// Prefix of enrolment tokens.
pub const ENROL_TOKEN_PREFIX: &str = "phe_";

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a two-tier CA in --dir: a root (ca.crt, root.key) and the issuing CA the ingest
    /// signs with (issuing.crt, issuing.key). Move root.key off this host afterwards: the
    /// running ingest never needs it. Refuses to overwrite an existing CA.
    Init {
        /// Directory for the CA files.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "phonehome fleet CA")]
        name: String,
        /// The root's lifetime in days.
        #[arg(long, default_value_t = 7300)]
        days: i64,
        /// The issuing CA's lifetime in days (at most the root's).
        #[arg(long, default_value_t = 1825)]
        issuing_days: i64,
    },
    /// Issue the ingest's TLS server certificate (server.crt, server.key in --dir); replace
    /// the files the ingest reads and it uses the new certificate without a restart.
    IssueServer {
        /// Directory holding the CA; the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address appliances use to reach the ingest; repeat for several.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// File name stem of the certificate and key.
        #[arg(long, default_value = "server")]
        stem: String,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Issue an appliance's client certificate and key here, for factories that image the key
    /// onto the appliance (otherwise prefer `issue-token` and `phonehome-collector enroll`).
    IssueAppliance {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The appliance's serial number, exactly as its collector reports it.
        #[arg(long)]
        serial: String,
        /// Where to write appliance-SERIAL.crt and .key (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = pki::DEFAULT_APPLIANCE_DAYS)]
        days: i64,
        /// The appliance key's type: ed25519 (cheapest handshakes), or p256 for keys that a
        /// TPM or HSM must hold.
        #[arg(long, value_enum, default_value_t)]
        key_type: pki::KeyType,
    },
    /// Print a one-time enrolment token for one serial (stored hashed; shown only now).
    IssueToken {
        /// The appliance's serial number, exactly as its collector reports it.
        #[arg(long)]
        serial: String,
        /// How long the token stays usable: 30d, 12h, 45m (a bare number is days).
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: chrono::Duration,
    },
    /// Revoke an appliance's certificates (--serial: every one issued until now, including
    /// offline ones never seen) or one certificate (--certificate: its SHA-256 fingerprint).
    /// Every ingest replica refuses them within `revocation_refresh_secs`; the CRL in --dir is
    /// rewritten.
    Revoke {
        /// The CA directory, where crl.pem is written (needs the issuing CA).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(
            long,
            conflicts_with = "certificate",
            required_unless_present = "certificate"
        )]
        serial: Option<String>,
        /// SHA-256 fingerprint, hex (colons allowed, as `openssl x509 -fingerprint -sha256`
        /// prints it).
        #[arg(long)]
        certificate: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write the issuing CA's CRL (also served at GET /v1/crl).
    Crl {
        #[arg(long)]
        dir: PathBuf,
        /// Where to write it (default: DIR/crl.pem).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `30d`, `12h`, `45m`, or a number of days.
pub fn parse_ttl(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 'd'),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30d, 12h or 45m"))?;
    if n <= 0 {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    let d = match unit {
        'd' => chrono::Duration::try_days(n),
        'h' => chrono::Duration::try_hours(n),
        'm' => chrono::Duration::try_minutes(n),
        other => return Err(format!("{s:?}: unknown unit {other:?} (d, h or m)")),
    };
    d.filter(|d| *d <= chrono::Duration::days(3650))
        .ok_or_else(|| format!("{s:?} is longer than ten years"))
}

fn wrote(cert: &std::path::Path, key: &std::path::Path) {
    println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
}

/// Runs a CA command; `config` is read only by the commands that need the database.
pub fn run(config: Option<PathBuf>, command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init {
            dir,
            name,
            days,
            issuing_days,
        } => {
            let f = ca::init_ca(&dir, &name, days, issuing_days)?;
            wrote(&f.root_cert, &f.root_key);
            wrote(&f.issuing.cert, &f.issuing.key);
            println!(
                "trust {} on the ingest (tls.ca_cert) and the appliances; give the ingest this \
                 directory as pki.ca_dir; then move {} to offline storage (it is needed only to \
                 make a new issuing CA)",
                f.root_cert.display(),
                f.root_key.display()
            );
        }
        CaCommand::IssueServer {
            dir,
            names,
            stem,
            days,
        } => {
            let f = ca::issue_server(&dir, &names, &stem, days)?;
            wrote(&f.cert, &f.key);
        }
        CaCommand::IssueAppliance {
            dir,
            serial,
            out,
            days,
            key_type,
        } => {
            let serial = Serial::parse(&serial).with_context(|| format!("--serial {serial:?}"))?;
            let out = out.unwrap_or_else(|| dir.clone());
            let f = ca::issue_appliance(&dir, &out, &serial, days, key_type)?;
            wrote(&f.cert, &f.key);
        }
        CaCommand::IssueToken { serial, ttl } => {
            let serial = Serial::parse(&serial).with_context(|| format!("--serial {serial:?}"))?;
            let config = Config::load(config.as_deref())?;
            crate::runtime()?.block_on(async {
                let storage = crate::admin_storage(&config).await?;
                let token = phonehome_ingest::auth::generate_with_prefix(ENROL_TOKEN_PREFIX)?;
                let expires = Utc::now() + ttl;
                storage
                    .create_enrolment_token(&serial, &token.secret, expires, &crate::cli_actor())
                    .await
                    .context("store the token")?;
                eprintln!(
                    "enrolment token for {serial}, single use, valid until {} (shown once):",
                    expires.to_rfc3339()
                );
                println!("{}", token.secret);
                Ok::<_, anyhow::Error>(())
            })?;
        }
        CaCommand::Revoke {
            dir,
            serial,
            certificate,
            reason,
        } => {
            let target = match (serial, certificate) {
                (Some(s), None) => RevokeTarget::Serial(
                    Serial::parse(&s).with_context(|| format!("--serial {s:?}"))?,
                ),
                (None, Some(fp)) => RevokeTarget::Certificate(parse_fingerprint(&fp)?),
                _ => anyhow::bail!("give exactly one of --serial and --certificate"),
            };
            let config = Config::load(config.as_deref())?;
            crate::runtime()?.block_on(async {
                let storage = crate::admin_storage(&config).await?;
                let done = storage
                    .revoke(&target, &crate::cli_actor(), &reason)
                    .await
                    .context("record the revocation")?;
                println!(
                    "revoked at {} ({} certificate(s) known to the ingest); every replica refuses it within {} s",
                    done.revoked_at.to_rfc3339(),
                    done.known_certificates,
                    config.pki.revocation_refresh_secs
                );
                if let Some(dir) = dir.or(config.pki.ca_dir.clone()) {
                    let out = dir.join(ca::CRL_FILE);
                    write_crl(&storage, &config, &dir, &out).await?;
                }
                Ok::<_, anyhow::Error>(())
            })?;
        }
        CaCommand::Crl { dir, out } => {
            let config = Config::load(config.as_deref())?;
            let out = out.unwrap_or_else(|| dir.join(ca::CRL_FILE));
            crate::runtime()?.block_on(async {
                let storage = crate::admin_storage(&config).await?;
                write_crl(&storage, &config, &dir, &out).await
            })?;
        }
    }
    Ok(())
}

async fn write_crl(
    storage: &phonehome_ingest::storage::Storage,
    config: &Config,
    dir: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut settings = config.pki.issuing(&config.tls.ca_cert);
    settings.ca_dir = Some(dir.to_path_buf());
    let pem = phonehome_ingest::certs::make_crl(storage, &std::sync::Arc::new(settings))
        .await
        .map_err(|e| anyhow::anyhow!("make the CRL: {e}"))?;
    // Written beside and renamed: a web server publishing the file never serves half of it.
    let tmp = out.with_extension("pem.tmp");
    std::fs::write(&tmp, &pem).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// A SHA-256 fingerprint in hex, with or without colons.
fn parse_fingerprint(s: &str) -> anyhow::Result<[u8; 32]> {
    pki::parse_fingerprint(s).ok_or_else(|| {
        anyhow::anyhow!("--certificate {s:?} is not a SHA-256 fingerprint (64 hex digits)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_fingerprints_parse_or_say_why() {
        assert_eq!(parse_ttl("30d"), Ok(chrono::Duration::days(30)));
        assert_eq!(parse_ttl("12h"), Ok(chrono::Duration::hours(12)));
        assert_eq!(parse_ttl("7"), Ok(chrono::Duration::days(7)));
        assert!(parse_ttl("0d").is_err());
        assert!(parse_ttl("3w").unwrap_err().contains("unit"));
        assert!(parse_ttl("100000d").is_err());
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(parse_fingerprint(&fp).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abc").is_err());
    }
}
