//! The audit trail's verification as QueryAudit reports it.
//!
//! Verifying reads the whole trail file and checks one HMAC per record
//! (`amaos_mesh::audit::verify_trail`): its cost grows with the trail, not
//! with the page asked for. So the result is kept and shared: callers
//! arriving together wait for one verification, and a trail is verified
//! again only once the last result is older than [`MIN_INTERVAL`] — or ten
//! times as long as the last verification took, so that however long the
//! trail grows and however often it is queried, verifying takes at most
//! about a tenth of one core. The file is read on a blocking thread.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use amaos_mesh::Config;
use amaos_mesh::audit::{TrailSettings, Verdict, verify_trail};
use amaos_proto::auth::v1::{AuditChainState, AuditVerification};
use amaos_proto::time::timestamp;

/// The shortest time between two verifications of the trail.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The verification of one trail, cached.
pub struct TrailCheck {
    settings: TrailSettings,
    path: PathBuf,
    also_in: Vec<PathBuf>,
    min_interval: Duration,
    /// The last result, when it was found, and how long it took.
    last: tokio::sync::Mutex<Option<(Instant, Duration, AuditVerification)>>,
}

impl TrailCheck {
    /// The check of `config`'s trail, keyed and anchored as `config` says
    /// (the key file is also looked for beside the trail, as `amaos audit
    /// verify` does). A zero `min_interval` verifies on every call.
    pub fn new(config: &Config, min_interval: Duration) -> Self {
        let path = config.audit_file();
        let also_in = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| vec![d.to_owned()])
            .unwrap_or_default();
        Self {
            settings: TrailSettings::from_config(config),
            path,
            also_in,
            min_interval,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The trail's verification, at most `min_interval` (or ten times the
    /// last verification's duration) old.
    pub async fn current(&self) -> AuditVerification {
        let mut last = self.last.lock().await;
        if let Some((at, took, result)) = &*last
            && !self.min_interval.is_zero()
            && at.elapsed() < self.min_interval.max(*took * 10)
        {
            return result.clone();
        }
        let started = Instant::now();
        let result = self.verify().await;
        *last = Some((Instant::now(), started.elapsed(), result.clone()));
        result
    }

    async fn verify(&self) -> AuditVerification {
        let settings = self.settings.clone();
        let path = self.path.clone();
        let also_in = self.also_in.clone();
        let runtime = tokio::runtime::Handle::current();
        let report = tokio::task::spawn_blocking(move || {
            runtime.block_on(verify_trail(&settings, &path, &also_in))
        })
        .await
        .unwrap_or_else(|e| Err(format!("verification stopped: {e}")));
        let mut out = AuditVerification {
            checked_at: Some(timestamp(SystemTime::now())),
            ..Default::default()
        };
        let report = match report {
            Ok(report) => report,
            Err(reason) => {
                out.set_state(AuditChainState::Unverifiable);
                out.reason = reason;
                return out;
            }
        };
        out.records_checked = report.records;
        out.reason = report.detail;
        match report.verdict {
            Verdict::Intact(_) => {
                out.ok = true;
                out.set_state(AuditChainState::Intact);
            }
            Verdict::BrokenAt(index) => {
                out.set_state(AuditChainState::Broken);
                out.first_bad_index = index;
                out.reason = format!("record {index}: {}", out.reason);
            }
            Verdict::Legacy { records, legacy } => {
                out.set_state(AuditChainState::Legacy);
                let note = format!(
                    "the first {legacy} of {records} records are unkeyed (written before the trail was keyed) and could have been rewritten"
                );
                out.reason = join(note, &out.reason);
            }
            Verdict::Unanchored(_) => out.set_state(AuditChainState::Unanchored),
        }
        out
    }
}

fn join(first: String, then: &str) -> String {
    if then.is_empty() {
        first
    } else {
        format!("{first}; {then}")
    }
}

/// What a caller who is not a platform admin is told: the verdict and when,
/// not the trail's size or where its files are (the trail holds every
/// tenant's records).
pub fn for_tenant(full: AuditVerification) -> AuditVerification {
    AuditVerification {
        ok: full.ok,
        state: full.state,
        checked_at: full.checked_at,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amaos_mesh::audit::{AuditLog, Entry};

    fn config(dir: &std::path::Path) -> Config {
        Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    fn append(log: &AuditLog, n: usize) {
        for i in 0..n {
            log.append(Entry {
                principal: "p",
                tenant: "t",
                action: "keys.create",
                object: &format!("k{i}"),
                allowed: true,
            })
            .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_intact_trail_verifies_and_an_edited_one_names_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let log = AuditLog::open_configured(&config).unwrap();
        append(&log, 5);
        let check = TrailCheck::new(&config, Duration::ZERO);
        let result = check.current().await;
        assert!(result.ok, "{result:?}");
        assert_eq!(result.state(), AuditChainState::Intact);
        assert_eq!(result.records_checked, 5);
        assert!(result.checked_at.is_some());

        let path = config.audit_file();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"k2\"", "\"k9\"", 1)).unwrap();
        let result = check.current().await;
        assert!(!result.ok);
        assert_eq!(result.state(), AuditChainState::Broken);
        assert_eq!(result.first_bad_index, 2);
        assert!(result.reason.starts_with("record 2: "), "{}", result.reason);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_result_is_reused_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let log = AuditLog::open_configured(&config).unwrap();
        append(&log, 2);
        let check = TrailCheck::new(&config, Duration::from_secs(3600));
        let first = check.current().await;
        append(&log, 3);
        let again = check.current().await;
        assert_eq!(again, first);
        assert_eq!(again.records_checked, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_trail_that_cannot_be_read_is_unverifiable() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let check = TrailCheck::new(&config, Duration::ZERO);
        // No file and no checkpoint.
        let result = check.current().await;
        assert!(!result.ok);
        assert_eq!(result.state(), AuditChainState::Unverifiable);
        assert!(!result.reason.is_empty());
    }

    #[test]
    fn tenants_hear_the_verdict_only() {
        let full = AuditVerification {
            ok: false,
            state: AuditChainState::Broken as i32,
            records_checked: 10,
            first_bad_index: 3,
            reason: "record 3: /var/lib/amaos/audit.log".into(),
            checked_at: Some(timestamp(SystemTime::now())),
        };
        let told = for_tenant(full.clone());
        assert_eq!(told.state, full.state);
        assert_eq!(told.checked_at, full.checked_at);
        assert_eq!((told.records_checked, told.first_bad_index), (0, 0));
        assert!(told.reason.is_empty());
    }
}
