//! `[daemon]`: where state lives and how the daemon behaves (main file only).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<Spanned<String>>,
    time_zone: Option<Spanned<String>>,
    include: Option<Vec<Spanned<String>>>,
    concurrency: Option<Spanned<i64>>,
    cache_mb: Option<Spanned<i64>>,
    shutdown_deadline: Option<Spanned<String>>,
    schedule_ahead: Option<Spanned<String>>,
    audit_head_interval: Option<Spanned<String>>,
    control_socket: Option<String>,
    socket_group: Option<String>,
    metrics_listen: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    accounts_include: Option<Vec<Spanned<String>>>,
    approval: Option<super::super::ApprovalMode>,
    approvers_group: Option<Spanned<String>>,
    author_may_approve: Option<bool>,
}

impl Loader {
    pub(super) fn daemon_settings(&mut self, idx: usize, item: Option<Item>) -> Option<DaemonSettings> {
        let span = item.as_ref().and_then(Item::span);
        let raw: RawDaemon = match item {
            None => {
                self.diags.error(&self.files[idx], None, "missing [daemon] section; it needs at least `state_dir`");
                return None;
            }
            Some(item) => match from_item(item) {
                Ok(raw) => raw,
                Err(e) => {
                    self.de_error(idx, span, "in [daemon]", &e);
                    return None;
                }
            },
        };
        let mark = self.mark();
        let file = &self.files[idx];
        let state_dir = match raw.state_dir {
            Some(dir) if !dir.get_ref().trim().is_empty() => file.dir().join(dir.get_ref()),
            Some(dir) => {
                self.diags.error(file, span_of(&dir), "`state_dir` is empty; give a folder herald may write to");
                PathBuf::new()
            }
            None => {
                self.diags.error(
                    file,
                    span.clone(),
                    "[daemon] needs `state_dir`, the folder where herald keeps its state",
                );
                PathBuf::new()
            }
        };
        let time_zone = match raw.time_zone {
            Some(tz) => match parse_tz(tz.get_ref()) {
                Ok(tz) => tz,
                Err(msg) => {
                    self.diags.error(file, span_of(&tz), msg);
                    Tz::UTC
                }
            },
            None => Tz::UTC,
        };
        let concurrency = raw.concurrency.map_or(Some(64), |c| {
            self.in_range(idx, "concurrency", *c.get_ref(), span_of(&c), 1..=10_000, "1 to 10000")
        });
        let cache_mb = raw
            .cache_mb
            .map_or(Some(64), |c| self.in_range(idx, "cache_mb", *c.get_ref(), span_of(&c), 1..=65_536, "1 to 65536"));
        let shutdown_deadline = self.duration(idx, raw.shutdown_deadline.as_ref(), Duration::from_secs(30));
        let schedule_ahead = self.duration(idx, raw.schedule_ahead.as_ref(), DEFAULT_SCHEDULE_AHEAD);
        let audit_head_interval = self.duration(idx, raw.audit_head_interval.as_ref(), DEFAULT_AUDIT_HEAD_INTERVAL);
        if let Some(v) = raw.audit_head_interval.as_ref().filter(|_| audit_head_interval.is_zero()) {
            self.diags.error(&self.files[idx], span_of(v), "`audit_head_interval` must be longer than 0s".to_string());
        }
        let include = raw.include.unwrap_or_default().into_iter().map(Spanned::into_inner).collect();
        let accounts_include = raw.accounts_include.unwrap_or_default().into_iter().map(Spanned::into_inner).collect();
        let file = &self.files[idx];
        let metrics_listen = match &raw.metrics_listen {
            Some(addr) => match addr.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = format!(
                        "`metrics_listen` is `{}`; expected an address and port such as \"127.0.0.1:9464\"",
                        addr.get_ref()
                    );
                    self.diags.error(file, span_of(addr), msg);
                    None
                }
            },
            None => None,
        };
        let log_level = match raw.log_level {
            Some(level) if ["error", "warn", "info", "debug", "trace"].contains(&level.get_ref().as_str()) => {
                Some(level.into_inner())
            }
            Some(level) => {
                let msg = format!("`log_level` is `{}`; expected error, warn, info, debug or trace", level.get_ref());
                self.diags.error(file, span_of(&level), msg);
                None
            }
            None => None,
        };
        let control_socket = raw.control_socket.map(|p| file.dir().join(p));
        if let Some(group) = &raw.approvers_group
            && group.get_ref().trim().is_empty()
        {
            self.diags.error(file, span_of(group), "`approvers_group` is empty; name the group whose members approve");
        }
        let (Some(concurrency), Some(cache_mb)) = (concurrency, cache_mb) else { return None };
        self.valid_since(mark).then_some(DaemonSettings {
            state_dir,
            time_zone,
            include,
            accounts_include,
            concurrency: concurrency as usize,
            cache_mb: cache_mb as u64,
            shutdown_deadline,
            schedule_ahead,
            audit_head_interval,
            control_socket,
            socket_group: raw.socket_group,
            metrics_listen,
            log_level,
            approval: raw.approval.unwrap_or_default(),
            approvers_group: raw.approvers_group.map(Spanned::into_inner),
            author_may_approve: raw.author_may_approve.unwrap_or(false),
        })
    }
}
