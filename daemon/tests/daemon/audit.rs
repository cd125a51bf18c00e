//! The audit log as an auditor checks it: `herald audit verify` on a real
//! store, after tampering with its sled files the way someone with write
//! access to the state directory would, and on exports of `herald log
//! --format json` edited by hand.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::helpers::*;

/// A stopped herald's directory with a delivered post: 3 accounts, so the
/// log holds scheduled, attempt and delivered records for each.
async fn delivered_log() -> (TestDir, herald_sandbox::WebhookReceiver) {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(2);
    let accounts = ["a-hook", "b-hook", "c-hook"];
    let mut config = daemon_section();
    for a in accounts {
        config += &webhook_account(a, &format!("{}/{a}", hook.base_url()));
    }
    config += &post_at("flood-warning", "River levels are rising: keep away from the embankment.", &accounts, at);
    dir.write_config(&config);
    let herald = dir.start().await;
    assert!(hook.wait_until(DEADLINE + std::time::Duration::from_secs(2), |r| r.len() >= 3).await, "not delivered");
    // Delivered means recorded: wait for the records, then verify through the daemon.
    eventually("3 delivered records", DEADLINE, || dir.log_from_daemon(&["--event", "delivered"]).len() == 3).await;
    let out = dir.ask_daemon(&["audit", "verify"]);
    assert!(out.status.success(), "verify through the daemon: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("intact: "), "{}", text(&out.stdout));
    herald.stop().await;
    (dir, hook)
}

/// The raw lines of `herald log --format json`.
fn export(dir: &TestDir) -> Vec<String> {
    let out = dir.cli(&["log", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn verify_file(dir: &TestDir, lines: &[String], extra: &[&str]) -> Output {
    let path = dir.path().join("export.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let mut args = vec!["audit", "verify", "--file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    // Neither the config nor the store is needed: point --config at nothing.
    blocking(|| {
        std::process::Command::new(herald_binary())
            .args(&args)
            .args(["--config", "/nonexistent/herald.toml"])
            .output()
            .unwrap()
    })
}

/// The command failed as tampering (exit 2), naming `seq` and `problem`.
fn assert_broken(out: &Output, seq: u64, problem: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected a broken log, got {}: {stderr}", out.status);
    assert!(
        stderr.contains(&format!("broken at seq {seq}: {problem}:")),
        "expected seq {seq} {problem}, got: {stderr}"
    );
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_kind_of_tampering_in_an_export() {
    let (dir, _hook) = delivered_log().await;
    let lines = export(&dir);
    assert!(lines.len() >= 9, "{lines:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["prev_hash"].as_str().map(str::len), Some(64), "{l}");
        assert_eq!(v["hash"].as_str().map(str::len), Some(64), "{l}");
    }
    let out = verify_file(&dir, &lines, &[]);
    assert!(out.status.success(), "an untouched export: {}", text(&out.stderr));
    let delivered = lines.iter().position(|l| l.contains("\"event\":\"delivered\"")).unwrap();
    let seq = seq_of(&lines[delivered]);

    // A range, given the hash of the record before it.
    let prev = serde_json::from_str::<Value>(&lines[2]).unwrap()["hash"].as_str().unwrap().to_string();
    let out = verify_file(&dir, &lines[3..7], &["--prev", &prev]);
    assert!(out.status.success(), "a range with --prev: {}", text(&out.stderr));
    assert_broken(&verify_file(&dir, &lines[3..7], &[]), 1, "missing");

    let mut edited = lines.clone();
    edited[delivered] = edited[delivered].replace("\"state\":\"delivered\"", "\"state\":\"failed\"");
    assert_ne!(edited, lines);
    assert_broken(&verify_file(&dir, &edited, &[]), seq, "altered");

    let mut deleted = lines.clone();
    deleted.remove(4);
    assert_broken(&verify_file(&dir, &deleted, &[]), 5, "missing");

    let mut inserted = lines.clone();
    inserted.insert(5, lines[3].clone());
    assert_broken(&verify_file(&dir, &inserted, &[]), 4, "inserted");

    let mut reordered = lines.clone();
    reordered.swap(3, 6);
    assert_broken(&verify_file(&dir, &reordered, &[]), 4, "reordered");
}

/// A copy of the stopped store to tamper with, and its sled database.
fn tampered(dir: &TestDir, name: &str, tamper: impl FnOnce(&sled::Tree)) -> PathBuf {
    let copy = dir.path().join(name);
    copy_dir(&dir.state_dir(), &copy);
    {
        let db = sled::open(copy.join("db")).unwrap();
        tamper(&db.open_tree("audit").unwrap());
        db.flush().unwrap();
    }
    copy
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn get(tree: &sled::Tree, seq: u64) -> String {
    String::from_utf8(tree.get(key(seq)).unwrap().unwrap().to_vec()).unwrap()
}

/// A record with its `seq` field changed (the rest of its bytes kept).
fn renumbered(record: &str, from: u64, to: u64) -> String {
    record.replacen(&format!("{{\"seq\":{from},"), &format!("{{\"seq\":{to},"), 1)
}

fn verify_state(dir: &TestDir, state: &Path) -> Output {
    dir.cli(&["audit", "verify", "--state-dir", state.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_kind_of_tampering_in_the_store() {
    let (dir, _hook) = delivered_log().await;
    let out = dir.cli(&["audit", "verify"]);
    assert!(out.status.success(), "the untouched store: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(READ_STORE), "{}", text(&out.stderr));
    let lines = export(&dir);
    let last = lines.len() as u64;
    let delivered =
        lines.iter().map(|l| seq_of(l)).find(|s| lines[*s as usize - 1].contains("\"event\":\"delivered\""));
    let delivered = delivered.unwrap();

    // A failed attempt edited into a success, bytes changed in place.
    let edited = tampered(&dir, "edited", |t| {
        let r = get(t, delivered).replace("\"state\":\"delivered\"", "\"state\":\"failed\"");
        t.insert(key(delivered), r.as_bytes()).unwrap();
    });
    assert_broken(&verify_state(&dir, &edited), delivered, "altered");

    // Seq 5 deleted and the rest renumbered so that no gap shows.
    let deleted = tampered(&dir, "deleted", |t| {
        for seq in 5..last {
            let next = renumbered(&get(t, seq + 1), seq + 1, seq);
            t.insert(key(seq), next.as_bytes()).unwrap();
        }
        t.remove(key(last)).unwrap();
    });
    assert_broken(&verify_state(&dir, &deleted), 5, "missing");

    // A copy of seq 2 inserted as seq 4, the rest moved up by one.
    let inserted = tampered(&dir, "inserted", |t| {
        for seq in (4..=last).rev() {
            let moved = renumbered(&get(t, seq), seq, seq + 1);
            t.insert(key(seq + 1), moved.as_bytes()).unwrap();
        }
        let copy = renumbered(&get(t, 2), 2, 4);
        t.insert(key(4), copy.as_bytes()).unwrap();
    });
    assert_broken(&verify_state(&dir, &inserted), 4, "inserted");

    // Two records swapped.
    let reordered = tampered(&dir, "reordered", |t| {
        let (four, six) = (get(t, 4), get(t, 6));
        t.insert(key(4), six.as_bytes()).unwrap();
        t.insert(key(6), four.as_bytes()).unwrap();
    });
    assert_broken(&verify_state(&dir, &reordered), 4, "reordered");
}

/// The test's own user name and uid, or `nobody` when the test runs as root
/// (the CLI then runs as `nobody` in group `nogroup`, which the daemon is
/// told to give its socket to: a non-root member of herald's group).
pub(super) fn other_user() -> (Option<&'static str>, &'static str, u32) {
    if rustix::process::getuid().is_root() && std::path::Path::new("/usr/bin/setpriv").exists() {
        (Some("nogroup"), "nobody", 65534)
    } else {
        let uid = rustix::process::getuid().as_raw();
        (None, Box::leak(name_of(uid).into_boxed_str()), uid)
    }
}

/// A user's name in /etc/passwd.
fn name_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').nth(2) == Some(uid.to_string().as_str()))
        .map(|l| l.split(':').next().unwrap().to_string())
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Run a herald command as [`other_user`].
pub(super) fn cli_as_other(dir: &TestDir, args: &[&str]) -> Output {
    let (group, _, _) = other_user();
    if group.is_none() {
        return dir.cli(args);
    }
    blocking(|| {
        std::process::Command::new("/usr/bin/setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", herald_binary()])
            .args(args)
            .arg("--config")
            .arg(dir.config())
            .env_remove("HERALD_CONFIG")
            .output()
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_action_records_the_unix_user_who_asked_and_why() {
    use std::os::unix::fs::PermissionsExt;
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let (group, name, uid) = other_user();
    // The other user must reach the config and the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = "control_socket = \"run/herald.sock\"\n".to_string();
    if let Some(g) = group {
        daemon += &format!("socket_group = \"{g}\"\n");
    }
    let config = daemon_section().replace("[retry]", &format!("{daemon}\n[retry]"))
        + &webhook_account("a-hook", &hook.url())
        + &post_at("wrong-number", "Call 110 if you are in danger.", &["a-hook"], in_secs(600))
        + &post_at("later", "Hang up on callers who ask for bank codes.", &["a-hook"], in_secs(600));
    dir.write_config(&config);
    let herald = dir.start().await;

    let out = cli_as_other(&dir, &["cancel", "--post", "wrong-number", "--reason", "the hotline number is wrong"]);
    assert!(out.status.success(), "cancel as {name}: {} {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains(ASKED_DAEMON), "{}", text(&out.stderr));
    let mine = dir.log_from_daemon(&["--actor", name]);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    let r = &mine[0];
    assert_eq!((r.event.as_str(), r.post.as_str()), ("cancelled", "wrong-number"));
    assert_eq!(r.raw["actor"]["name"], name, "{}", r.raw);
    assert_eq!(r.raw["actor"]["uid"], uid, "{}", r.raw);
    assert_eq!(r.raw["actor"]["via"], "control_socket", "{}", r.raw);
    assert!(r.reason.as_deref().unwrap_or_default().contains("the hotline number is wrong"), "{}", r.raw);
    herald.stop().await;

    // Without a daemon, the CLI opens the store itself: the actor is its own user.
    let out = dir.cli(&["cancel", "--post", "later", "--reason", "campaign withdrawn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let me = rustix::process::getuid().as_raw();
    let offline: Vec<Record> = dir.log_args(&["--event", "cancelled", "--post", "later"]);
    assert_eq!(offline.len(), 1, "{offline:#?}");
    assert_eq!(offline[0].raw["actor"]["uid"], me, "{}", offline[0].raw);
    assert_eq!(offline[0].raw["actor"]["via"], "store", "{}", offline[0].raw);
    assert!(dir.log_args(&["--actor", "no-such-user"]).is_empty());
}

/// What a `config_applied` / `config_refused` record says: event, actor
/// name, files as (path, digest), summary, errors.
type ConfigRecord = (String, String, Vec<(String, String)>, String, Vec<String>);

fn config_records(dir: &TestDir) -> Vec<ConfigRecord> {
    dir.log_args(&["--event", "config_applied", "--event", "config_refused"])
        .into_iter()
        .map(|r| {
            let c = &r.raw["config"];
            let files = c["files"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| (f["path"].as_str().unwrap().to_string(), f["sha256"].as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let errors = c["errors"]
                .as_array()
                .map(|es| es.iter().map(|e| e.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let actor = r.raw["actor"]["name"].as_str().unwrap_or_default().to_string();
            (r.event.clone(), actor, files, c["summary"].as_str().unwrap_or_default().to_string(), errors)
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_start_and_reload_records_which_files_made_the_config() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let main = daemon_section().replace("[retry]", "include = [\"posts.d/*.toml\"]\n\n[retry]")
        + &webhook_account("a-hook", &hook.url());
    dir.write_config(&main);
    let campaign = post_at("campaign", "Keep away from the river.", &["a-hook"], in_secs(600));
    dir.write("posts.d/campaign.toml", &campaign);
    let mut herald = dir.start().await;

    let started = config_records(&dir);
    assert_eq!(started.len(), 1, "{started:?}");
    let (event, actor, files, summary, _) = &started[0];
    assert_eq!((event.as_str(), actor.as_str()), ("config_applied", "herald run"));
    let digest_of = |files: &[(String, String)], name: &str| {
        files
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{name} in {files:?}"))
    };
    assert_eq!(digest_of(files, "herald.toml"), sha256_hex(main.as_bytes()));
    assert_eq!(digest_of(files, "campaign.toml"), sha256_hex(campaign.as_bytes()));
    assert!(summary.contains("1 added"), "{summary}");

    // The campaign file changes: the reload records its new digest, the main file's is the same.
    let changed = post_at("campaign", "Keep away from the river and the bridges.", &["a-hook"], in_secs(600));
    dir.write("posts.d/campaign.toml", &changed);
    let out = dir.ask_daemon(&["reload", "--reason", "bridges added"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = config_records(&dir);
    assert_eq!(after.len(), 2, "{after:?}");
    let (event, actor, files, summary, _) = &after[1];
    assert_eq!(event, "config_applied");
    assert_eq!(*actor, name_of(rustix::process::getuid().as_raw()), "the user who ran `herald reload`");
    assert_ne!(digest_of(files, "campaign.toml"), digest_of(&after[0].2, "campaign.toml"));
    assert_eq!(digest_of(files, "campaign.toml"), sha256_hex(changed.as_bytes()));
    assert_eq!(digest_of(files, "herald.toml"), digest_of(&after[0].2, "herald.toml"));
    assert!(summary.contains("1 changed"), "{summary}");
    let reload = &dir.log_args(&["--event", "config_applied"])[1];
    assert_eq!(reload.reason.as_deref(), Some("bridges added"));
    assert_eq!(reload.raw["actor"]["via"], "control_socket");

    // A broken campaign file, by SIGHUP: refused, recorded with its error.
    dir.write("posts.d/campaign.toml", &changed.replace("targets", "tragets"));
    herald.signal("HUP");
    herald.wait_for_log("keeping the running config").await;
    let refused = config_records(&dir);
    assert_eq!(refused.len(), 3, "{refused:?}");
    let (event, actor, _, _, errors) = &refused[2];
    assert_eq!((event.as_str(), actor.as_str()), ("config_refused", "SIGHUP"));
    assert!(errors.iter().any(|e| e.contains("campaign.toml")), "{errors:?}");
    herald.stop().await;
}

/// The anchors (`SEQ:HASH`) herald published to its log (the journal under
/// systemd) so far.
fn anchors_in(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("audit head"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("anchor=")).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_head_exposes_a_log_rewritten_whole() {
    let hook = receiver(None).await;
    let alerts = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section().replace("[retry]", "audit_head_interval = \"1s\"\n\n[retry]")
        + &format!("[alerts]\nwebhook = \"{}\"\n\n", alerts.url())
        + &webhook_account("a-hook", &hook.url())
        + &post_at("flood-warning", "River levels are rising.", &["a-hook"], in_secs(1));
    dir.write_config(&config);
    let mut herald = dir.start().await;
    assert!(hook.wait_until(DEADLINE, |r| !r.is_empty()).await, "not delivered");
    // Published at start, then every interval: at least twice by now or soon.
    herald.wait_for_log_count("audit head", 2).await;
    assert!(
        alerts
            .wait_until(DEADLINE, |r| r.iter().any(|p| p.body.as_ref().is_some_and(|b| b["kind"] == "audit_head")))
            .await,
        "no audit_head alert"
    );
    let stderr = herald.stop().await;
    let anchors = anchors_in(&stderr);
    let at_stop = anchors.last().expect("a head published at stop").clone();
    let recorded = dir.log_args(&["--event", "audit_head"]);
    assert!(recorded.len() >= 3, "start, interval, stop: {recorded:#?}");
    assert!(
        recorded
            .last()
            .unwrap()
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("head {at_stop} published at stop")),
        "{:?}",
        recorded.last()
    );
    let alert = alerts.received().into_iter().find_map(|p| p.body.filter(|b| b["kind"] == "audit_head")).unwrap();
    let alerted = format!("{}:{}", alert["seq"], alert["hash"].as_str().unwrap());
    assert!(anchors.contains(&alerted), "the alert carries a head from the journal: {alerted} in {anchors:?}");

    let out = dir.cli(&["audit", "verify", "--head", &at_stop]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("still extends the anchored head {at_stop}")), "{}", text(&out.stdout));

    // Someone with write access rewrites the log whole: the delivered
    // record becomes failed, and every hash after it is recomputed.
    {
        let db = sled::open(dir.state_dir().join("db")).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let mut prev = herald::audit_chain::ChainHead::empty().hash;
        for entry in audit.iter() {
            let (key, bytes) = entry.unwrap();
            let mut record: herald::model::AuditRecord = serde_json::from_slice(&bytes).unwrap();
            if record.event == herald::model::Event::Delivered {
                record.state = Some(herald::model::State::Failed);
            }
            let sealed = herald::audit_chain::seal(&mut record, &prev);
            prev = record.hash.clone().unwrap();
            audit.insert(key, sealed).unwrap();
        }
        db.flush().unwrap();
    }
    let out = dir.cli(&["audit", "verify"]);
    assert!(out.status.success(), "a chain recomputed whole is consistent: {}", text(&out.stderr));
    let out = dir.cli(&["audit", "verify", "--head", &at_stop]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the log was rewritten"), "{}", text(&out.stderr));
}
