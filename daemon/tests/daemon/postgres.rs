//! herald on PostgreSQL end to end: `[store] backend = "postgres"` with the
//! URL from the environment (`{ env = ... }`), a real `herald run` against
//! the sandbox's emulators, the CLI through the daemon and on the database
//! itself, a restart, a SIGKILL in a burst, a second daemon refused, and
//! the URL's password nowhere herald writes.
//!
//! Each test takes a fresh database from `HERALD_TEST_POSTGRES`
//! (`eval "$(bash .ci/postgres.sh start)"`); without it they say loudly
//! that they skipped (and fail under `HERALD_REQUIRE_POSTGRES=1`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use herald::store::postgres::testing::fresh_database;
use herald_sandbox::{Fault, WebhookReceiver};

use crate::helpers::*;
use crate::recall::{ALL, JPEG, accounts, live, post, sandbox};

/// The variable the configs read the URL from.
const URL_VAR: &str = "HERALD_TEST_DATABASE_URL";

/// `[store]` on PostgreSQL, the URL from [`URL_VAR`].
fn store_section() -> String {
    format!("\n[store]\nbackend = \"postgres\"\nurl = {{ env = \"{URL_VAR}\" }}\npool = 4\n")
}

/// The password in a test database's URL.
fn password_of(url: &str) -> String {
    let password = reqwest::Url::parse(url).expect("a URL").password().expect("a password").to_string();
    assert!(password.len() >= 8, "the test server's password is too short to search for: {password:?}");
    password
}

/// Everything herald printed in a test, to search for the password at the end.
#[derive(Default)]
struct Printed(Vec<(String, String)>);

impl Printed {
    fn keep(&mut self, what: &str, out: &std::process::Output) -> String {
        let both = text(&out.stdout) + &text(&out.stderr);
        self.0.push((what.to_string(), both.clone()));
        both
    }

    fn assert_never(&self, password: &str) {
        for (what, printed) in &self.0 {
            assert!(!printed.contains(password), "the database password is in the output of {what}:\n{printed}");
        }
    }
}

/// `herald ARGS` with the URL in the environment; must succeed; kept.
fn cli_ok(dir: &TestDir, url: &str, printed: &mut Printed, args: &[&str]) -> String {
    let out = dir.cli_with(args, &[(URL_VAR, url)]);
    let both = printed.keep(&format!("herald {args:?}"), &out);
    assert!(out.status.success(), "herald {args:?} failed ({}):\n{both}", out.status);
    text(&out.stdout)
}

/// What the CLI says when it reads the database itself.
const READ_DATABASE: &str = "(no herald daemon is running: reading the PostgreSQL database postgres://";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_delivers_everywhere_and_keeps_it_all_across_a_restart() {
    let Some(url) = blocking(fresh_database) else { return };
    let password = password_of(&url);
    let env = [(URL_VAR, url.as_str())];
    let mut printed = Printed::default();
    let sandbox = sandbox().await;
    // The webhook refuses the first request for good: `failed`, then `herald retry`.
    sandbox.webhook.fail_next(1, Fault::status_with_body(400, r#"{"error": "refused"}"#));
    let dir = TestDir::new();
    std::fs::write(dir.path().join("cover.jpg"), JPEG).unwrap();
    let config = daemon_section()
        + &store_section()
        + &accounts(&sandbox)
        + &post("alert", &ALL, in_secs(2))
        + &post_at("later", "Tomorrow's drill.", &["webhook"], in_secs(600));
    dir.write_config(&config);

    let check = printed.keep("herald check", &dir.cli_with(&["check"], &env));
    assert!(check.contains("store: postgres at postgres://herald_test@127.0.0.1:"), "{check}");
    assert!(check.contains("up to 4 connections; reachable, schema version "), "{check}");
    let herald = dir.start_with(&env).await;
    eventually("five platforms delivered, the webhook failed", Duration::from_secs(60), || {
        let counts = status_counts(&dir.ask_daemon_ok(&["status"]));
        counts.get("delivered") == Some(&5) && counts.get("failed") == Some(&1)
    })
    .await;

    // retry and cancel through the daemon.
    let failed = dir.log_from_daemon(&["--event", "failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    printed.keep("herald retry", &dir.ask_daemon(&["retry", &failed[0].delivery, "--reason", "fixed"]));
    printed.keep("herald cancel", &dir.ask_daemon(&["cancel", "--post", "later", "--reason", "drill moved"]));
    eventually("the retried delivery is delivered", Duration::from_secs(60), || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered") == Some(&6)
    })
    .await;
    assert_eq!(sandbox.webhook.accepted().len(), 1);
    for (platform, copies) in live(&sandbox) {
        assert_eq!(copies, 1, "{platform}: one copy published");
    }
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(status_counts(&status).get("cancelled"), Some(&1), "{status}");
    let verified = dir.ask_daemon_ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
    let before = dir.log_from_daemon(&[]);
    assert_gapless(&before);
    let stderr = herald.stop().await;
    printed.0.push(("the first run's log".into(), stderr));

    // Stopped: the CLI reads the database itself, and sees the same.
    let out = dir.cli_with(&["status"], &env);
    let said = printed.keep("herald status (no daemon)", &out);
    assert!(said.contains(READ_DATABASE), "{said}");
    assert_eq!(status_counts(&text(&out.stdout)), status_counts(&status));
    let offline = records(cli_ok(&dir, &url, &mut printed, &["log", "--format", "json"]).as_bytes());
    let offline_verify = cli_ok(&dir, &url, &mut printed, &["audit", "verify"]);
    assert!(offline_verify.contains("intact"), "{offline_verify}");
    // A recall on the database itself (its deletes run on a runtime, its store work outside one).
    let recalled =
        cli_ok(&dir, &url, &mut printed, &["recall", "--post", "alert", "--account", "webhook", "--reason", "test"]);
    assert!(recalled.contains("1 taken down"), "{recalled}");
    assert!(sandbox.webhook.accepted().iter().all(|p| p.recalled_at.is_some()), "the webhook's copy is recalled");

    // A restart keeps everything, and adds to the same log.
    let herald = dir.start_with(&env).await;
    let after = dir.log_from_daemon(&[]);
    assert_gapless(&after);
    let head = |records: &[Record]| -> Vec<(u64, String, String)> {
        records.iter().map(|r| (r.seq, r.event.clone(), r.delivery.clone())).collect()
    };
    assert_eq!(head(&after[..before.len()]), head(&before), "the log before the restart is unchanged");
    assert!(offline.len() >= before.len(), "the offline log lost records");
    assert_eq!(status_counts(&dir.ask_daemon_ok(&["status"])), status_counts(&status));
    let stderr = herald.stop().await;
    printed.0.push(("the second run's log".into(), stderr));
    printed.assert_never(&password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_a_daemon_killed_in_a_burst_loses_nothing() {
    const POSTS: usize = 30;
    const ACCOUNTS: [&str; 3] = ["city-a", "city-b", "city-c"];
    let Some(url) = blocking(fresh_database) else { return };
    let env = [(URL_VAR, url.as_str())];
    let hook = receiver(None).await;
    hook.set_latency(Duration::from_millis(300));
    let dir = TestDir::new();
    let base = in_secs(3);
    let mut config = daemon_section() + &store_section();
    for account in ACCOUNTS {
        config += &webhook_account(account, &format!("{}/{account}", hook.base_url()));
        config += "concurrency = 4\n";
    }
    for i in 0..POSTS {
        let at = base + chrono::Duration::seconds((i % 2) as i64);
        config += &post_at(&format!("post-{i:02}"), &format!("campaign message {i}"), &ACCOUNTS, at);
    }
    dir.write_config(&config);
    let herald = dir.start_with(&env).await;
    let total = POSTS * ACCOUNTS.len();
    assert!(hook.wait_until(Duration::from_secs(60), |r| r.len() >= 20).await, "{}", hook.received().len());
    let first_run = herald.kill().await;
    let at_kill = hook.received().len();
    assert!(at_kill < total, "everything was sent before the kill; stderr:\n{first_run}");

    let herald = dir.start_with(&env).await;
    eventually("herald records every delivery", Duration::from_secs(90), || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered").copied() == Some(total as u64)
    })
    .await;
    let records = dir.log_from_daemon(&[]);
    herald.stop().await;

    assert_gapless(&records);
    let ids = deliveries(&records);
    assert_eq!(ids.len(), total);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in hook.received() {
        *seen.entry(p.idempotency_key.clone().expect("an idempotency key")).or_default() += 1;
    }
    let id_set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let key_set: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(key_set, id_set, "the receiver's keys and the audit log's deliveries differ");
    let recovered: BTreeSet<&str> =
        records.iter().filter(|r| r.event == "recovered").map(|r| r.delivery.as_str()).collect();
    assert!(!recovered.is_empty(), "nothing was in flight at the kill ({at_kill} requests had arrived)");
    for (key, count) in &seen {
        assert!(*count == 1 || recovered.contains(key.as_str()), "key {key} was sent {count} times, never recovered");
    }
}

/// `herald ARGS` answered by the daemon of `dir` (the URL in the environment).
fn ask(dir: &TestDir, url: &str, args: &[&str]) -> (bool, String) {
    let out = dir.cli_with(args, &[(URL_VAR, url)]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(ASKED_DAEMON), "herald {args:?} did not ask the running daemon:\n{stderr}");
    (out.status.success(), text(&out.stdout) + &stderr)
}

/// The whole audit log, as `herald log --format json` shows it through the daemon of `dir`.
fn log_records(dir: &TestDir, url: &str) -> Vec<serde_json::Value> {
    let (ok, out) = ask(dir, url, &["log", "--format", "json"]);
    assert!(ok, "{out}");
    out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The log line of a delivery sent.
const DELIVERED_LINE: &str = " delivered delivery=";

/// Two daemons, one database (two hosts: two state directories): one
/// leads and sends, the other stands by and sends nothing, and says so in
/// `status`; when the leader is SIGKILLed, the standby takes the lease over
/// (after it expires) and delivers what falls due after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_a_second_daemon_stands_by_and_takes_over_when_the_leader_dies() {
    let Some(url) = blocking(fresh_database) else { return };
    let password = password_of(&url);
    let env = [(URL_VAR, url.as_str())];
    let hook = receiver(None).await;
    let config = daemon_section()
        + &store_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("first", "First.", &["wuhan-hook"], in_secs(4))
        + &post_at("after", "After.", &["wuhan-hook"], in_secs(14))
        + &post_at("later", "Later.", &["wuhan-hook"], in_secs(600));
    let (one, two) = (TestDir::new(), TestDir::new());
    // The same config on both hosts, but for where each serves its metrics.
    let ports = [free_port(), free_port()];
    let with_metrics =
        |port: u16| config.replace("[daemon]\n", &format!("[daemon]\nmetrics_listen = \"127.0.0.1:{port}\"\n"));
    one.write_config(&with_metrics(ports[0]));
    // The second host keeps its socket outside its state directory, which
    // herald makes itself: nothing of sled's is there to make it.
    two.write_config(
        &with_metrics(ports[1])
            .replace("state_dir = \"state\"\n", "state_dir = \"state\"\ncontrol_socket = \"run/herald.sock\"\n"),
    );
    let mut first = one.start_with(&env).await;
    let mut second = two.start_with(&env).await;
    second.wait_for_log("herald is ready: standby").await;
    let metrics = |port: u16| async move {
        let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
        body.lines()
            .filter(|l| l.starts_with("herald_leader ") || l.starts_with("herald_lease_epoch "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(ports[0]).await, ["herald_leader 1", "herald_lease_epoch 1"]);
    assert_eq!(metrics(ports[1]).await, ["herald_leader 0", "herald_lease_epoch 1"]);

    // The leader sends; the standby does not, and sees the whole schedule.
    first.wait_for_log(DELIVERED_LINE).await;
    let (ok, status) = ask(&two, &url, &["status"]);
    assert!(ok && status.contains("standby; the leader is "), "{status}");
    assert!(status.contains("1 delivered"), "{status}");
    let (ok, status) = ask(&one, &url, &["status"]);
    assert!(ok && status.contains("leader (epoch 1)"), "{status}");
    // Changes through a standby go to the leader, which answers (here: no such delivery).
    let (ok, said) = ask(&two, &url, &["retry", UNKNOWN]);
    assert!(!ok && said.contains(&format!("no delivery {UNKNOWN}")), "{said}");
    assert!(!second.stderr().contains(DELIVERED_LINE), "the standby sent while the leader lived");
    // A third host with no daemon: its CLI must not write behind the leader's back.
    let third = TestDir::new();
    third.write_config(&config);
    let out = third.cli_with(&["cancel", "--post", "later"], &env);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success() && said.contains("a herald daemon leads on"), "{said}");
    assert!(!said.contains(&password), "{said}");
    // A standby whose config differs from the applied one says so, and never reconciles it.
    third.write_config(&config.replace("body = \"Later.\"", "body = \"Later, edited on one host only.\""));
    let mut odd = third.start_with(&env).await;
    odd.wait_for_log("this host's config differs from the one the leader applied").await;
    let (ok, status) = ask(&third, &url, &["status"]);
    assert!(ok && status.contains("CONFIG DIFFERS from the one applied: 1 post(s) differ (first: later)"), "{status}");
    odd.stop().await;

    // The leader dies; the standby takes over and sends what falls due.
    let (first_pid, second_pid) = (first.pid(), second.pid());
    first.kill().await;
    // Every record from here on is the second daemon's: the first is dead.
    let at_kill = log_records(&two, &url).iter().map(|r| r["seq"].as_u64().unwrap()).max().unwrap();
    second.wait_for_log("took over: leading").await;
    let (ok, status) = ask(&two, &url, &["status"]);
    assert!(ok && status.contains("leader (epoch 2)"), "{status}");
    assert_eq!(metrics(ports[1]).await, ["herald_leader 1", "herald_lease_epoch 2"]);
    eventually("both due posts delivered", DEADLINE * 3, || hook.received().len() >= 2).await;
    let (ok, said) = ask(&two, &url, &["cancel", "--post", "later"]);
    assert!(ok, "the new leader takes changes: {said}");
    // One log, each record naming the daemon that wrote it.
    let records = log_records(&two, &url);
    let by = |pid: u32| {
        move |r: &&serde_json::Value| r["daemon"].as_str().is_some_and(|d| d.contains(&format!(" pid {pid} boot ")))
    };
    assert!(records.iter().all(|r| r["daemon"].is_string()), "a record names no daemon: {records:?}");
    let early: Vec<_> = records.iter().filter(|r| r["seq"].as_u64().unwrap() <= at_kill).collect();
    let late: Vec<_> = records.iter().filter(|r| r["seq"].as_u64().unwrap() > at_kill).collect();
    assert!(early.iter().any(|r| r["event"] == "delivered" && r["post"] == "first" && by(first_pid)(r)), "{early:?}");
    assert!(late.iter().all(by(second_pid)), "after the first daemon died: {late:?}");
    assert!(late.iter().any(|r| r["event"] == "cancelled" && r["post"] == "later"), "{late:?}");
    // `--daemon` picks one daemon's records (a pattern, as `--actor`).
    let pattern = format!("* pid {second_pid} boot *");
    let (ok, out) = ask(&two, &url, &["log", "--format", "json", "--daemon", &pattern]);
    assert!(ok, "{out}");
    let seconds: Vec<serde_json::Value> =
        out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(seconds.len() >= late.len() && seconds.iter().all(|r| by(second_pid)(&r)), "{seconds:?}");
    assert!(seconds.iter().any(|r| r["event"] == "cancelled" && r["post"] == "later"), "{seconds:?}");
    let (ok, said) = ask(&two, &url, &["audit", "verify"]);
    assert!(ok, "one chain across both daemons: {said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(two.state_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory is herald's own");
    let stderr = second.stop().await;
    assert!(!stderr.contains(&password), "{stderr}");
    let keys = accepted_keys(&hook.received());
    assert_eq!(keys.len(), 2, "each post once: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_check_and_run_naming_host_and_port() {
    const PASSWORD: &str = "unreachable-pw-5c1e";
    let port = free_port();
    let url = format!("postgres://herald:{PASSWORD}@127.0.0.1:{port}/herald");
    let env = [(URL_VAR, url.as_str())];
    let dir = TestDir::new();
    dir.write_config(&(daemon_section() + &store_section() + &webhook_account("hook", "http://127.0.0.1:9/")));

    let out = dir.cli_with(&["check"], &env);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "names host and port:\n{said}");
    assert!(said.contains("cannot reach"), "{said}");
    assert!(!said.contains(PASSWORD), "{said}");

    let mut herald = dir.spawn(&env);
    let status = herald.wait_exit().await;
    let stderr = herald.stderr();
    assert_eq!(status.code(), Some(1), "a failure systemd restarts (not 65 or 78):\n{stderr}");
    assert!(stderr.contains(&format!("cannot reach the PostgreSQL database herald@127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!stderr.contains("herald is ready"), "{stderr}");
}

/// A wrong password and an unknown database are said as such by `herald
/// check` and `herald run` (exit 1, so systemd tries again), never as
/// "cannot reach", and the password is in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_or_an_unknown_database_is_said_by_check_and_run() {
    let Some(url) = blocking(fresh_database) else { return };
    let password = password_of(&url);
    let name = url.rsplit('/').next().unwrap().to_string();
    let wrong = url.replace(&password, "wrong-pw-8d2e61aa");
    let missing = url.replace(&format!("/{name}"), "/no_such_database_q7");
    let dir = TestDir::new();
    dir.write_config(&(daemon_section() + &store_section() + &webhook_account("hook", "http://127.0.0.1:9/")));
    for (url, says) in [
        (&wrong, "refused the login for user herald_test: password authentication failed"),
        (&missing, "has no database no_such_database_q7"),
    ] {
        let env = [(URL_VAR, url.as_str())];
        let out = dir.cli_with(&["check"], &env);
        let said = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("PostgreSQL at herald_test@127.0.0.1:") && said.contains(says), "{said}");
        assert!(!said.contains("cannot reach"), "{said}");
        assert!(!said.contains(&password) && !said.contains("wrong-pw-8d2e61aa"), "{said}");

        let mut herald = dir.spawn(&env);
        let status = herald.wait_exit().await;
        let stderr = herald.stderr();
        assert_eq!(status.code(), Some(1), "a failure systemd restarts (not 65 or 78):\n{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(&password) && !stderr.contains("wrong-pw-8d2e61aa"), "{stderr}");
        assert!(!stderr.contains("herald is ready"), "{stderr}");
    }
}

/// `herald check` says how the database is reached: TLS verify-full with
/// the server's CA (and the daemon runs on it), plain text without options,
/// and a certificate from another CA fails the check naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_tls_verify_full_or_plain_text_and_a_wrong_ca_fails_it() {
    let Some(url) = blocking(fresh_database) else { return };
    let ca = herald::store::postgres::testing::ca().expect("a CA with the server");
    let password = password_of(&url);
    let dir = TestDir::new();
    dir.write_config(&(daemon_section() + &store_section() + &webhook_account("hook", "http://127.0.0.1:9/")));

    let out = dir.cli_with(&["check"], &[(URL_VAR, url.as_str())]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("store: postgres at postgres://herald_test@127.0.0.1:"), "{said}");
    assert!(said.contains(" (plain text), up to 4 connections; reachable"), "{said}");

    let tls = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let out = dir.cli_with(&["check"], &[(URL_VAR, tls.as_str())]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(" (TLS verify-full), up to 4 connections; reachable"), "{said}");
    assert!(!said.contains(&password) && !said.contains("sslrootcert"), "{said}");
    let herald = dir.start_with(&[(URL_VAR, tls.as_str())]).await;
    let status = dir.ask_daemon_ok(&["status"]);
    let stderr = herald.stop().await;
    assert!(!stderr.contains(&password), "{stderr}");
    assert!(!status.contains(&password), "{status}");

    // A CA of the test's own: the server's certificate is not from it.
    let other = dir.path().join("not-the-servers-ca.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA"])
        .arg("-keyout")
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .expect("openssl");
    assert!(made.status.success());
    let wrong_ca = format!("{url}?sslmode=verify-full&sslrootcert={}", other.display());
    let out = dir.cli_with(&["check"], &[(URL_VAR, wrong_ca.as_str())]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("TLS to the PostgreSQL database herald_test@127.0.0.1:"), "{said}");
    assert!(said.contains("is not signed by the CA in sslrootcert"), "{said}");
    assert!(!said.contains(&password), "{said}");

    // sslmode=prefer: refused when the config is read, at the url's place.
    let prefer = format!("{url}?sslmode=prefer");
    let out = dir.cli_with(&["check"], &[(URL_VAR, prefer.as_str())]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("herald.toml:") && said.contains("error: [store] `url` asks for sslmode=prefer"), "{said}");
    assert!(!said.contains(&password), "{said}");
}

/// `herald check` reads the store for three things (the store line, the
/// warnings on past one-shot posts, the approval states): it connects once
/// for all of them, so a database that does not answer costs one connect
/// timeout, not three. The "server" here counts the connections made to it
/// and closes each at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connects_to_the_database_once_for_everything_it_reads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let url = format!("postgres://herald:pw-0c7d41@127.0.0.1:{port}/herald");
    let env = [(URL_VAR, url.as_str())];
    let dir = TestDir::new();
    let daemon = daemon_section().replace("[retry]", "approvers_group = \"root\"\n\n[retry]");
    dir.write_config(
        &(daemon
            + &store_section()
            + &webhook_account("hook", "http://127.0.0.1:9/")
            + &post_at("past", "A one-shot post an hour ago.", &["hook"], in_secs(-3600))
            + &post_at("approved", "Needs a second person.", &["hook"], in_secs(3600))
            + "approval = \"required\"\n"),
    );

    let out = dir.cli_with(&["check"], &env);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    // All three parts asked the store, and were told why they could not read it.
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
    assert!(said.contains("is past; if herald has not handled it yet"), "{said}");
    assert!(said.contains("whether it is approved is not known here"), "{said}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "connections made by one `herald check`:\n{said}");
}

/// What the copy tests start from: a fresh database, and the history they
/// move, made on sled by a real daemon (still running).
struct History {
    url: String,
    password: String,
    printed: Printed,
    dir: TestDir,
    herald: Herald,
    hook: WebhookReceiver,
    refusing: WebhookReceiver,
    sled_config: String,
}

/// The history the copy tests move, made by a real daemon on sled: one
/// delivery delivered to `hook`, one failed by `refusing` (400 once), a
/// pause holding a due delivery, a planned occurrence. `None`: no test
/// server (said, as for every PostgreSQL test).
async fn sled_history() -> Option<History> {
    let url = blocking(fresh_database)?;
    let password = password_of(&url);
    let dir = TestDir::new();
    let (hook, refusing) = (receiver(None).await, receiver(None).await);
    refusing.fail_next(1, Fault::status_with_body(400, r#"{"error": "refused"}"#));
    let sled_config = daemon_section()
        + &webhook_account("hook", &hook.url())
        + &webhook_account("refusing", &refusing.url())
        + &post_at("sent", "Delivered on sled.", &["hook"], in_secs(1))
        + &post_at("refused", "Failed on sled.", &["refusing"], in_secs(1))
        + &post_at("held", "Held by a pause.", &["hook"], in_secs(4))
        + &post_at("planned", "Three hours ahead.", &["hook", "refusing"], in_secs(3 * 3600));
    dir.write_config(&sled_config);
    let herald = dir.start().await;
    dir.ask_daemon_ok(&["pause", "--post", "held", "--reason", "wait for the copy"]);
    eventually("one delivered, one failed", Duration::from_secs(60), || {
        let counts = status_counts(&dir.ask_daemon_ok(&["status"]));
        counts.get("delivered") == Some(&1) && counts.get("failed") == Some(&1)
    })
    .await;
    Some(History { url, password, printed: Printed::default(), dir, herald, hook, refusing, sled_config })
}

/// The log of the daemon in `dir` begins with `copied`, record for record (every field).
fn assert_log_begins_with(dir: &TestDir, copied: &[Record]) {
    let same = |r: &Record| r.raw.to_string();
    let log = dir.log_from_daemon(&[]);
    let before: Vec<String> = copied.iter().map(same).collect();
    let after: Vec<String> = log.iter().take(copied.len()).map(same).collect();
    assert_eq!(after, before, "the copied log is the original's, record for record");
}

/// The daemon in `dir`, on a copied store, delivers its third delivery;
/// its log, copied and new records, is gapless, longer than `more_than`
/// and its chain intact. Then it stops (its stderr kept in `printed`).
async fn delivers_on_the_copy(dir: &TestDir, herald: Herald, more_than: usize, printed: &mut Printed) {
    eventually("three deliveries delivered", Duration::from_secs(60), || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered") == Some(&3)
    })
    .await;
    let verified = dir.ask_daemon_ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
    let log = dir.log_from_daemon(&[]);
    assert_gapless(&log);
    assert!(log.len() > more_than, "new records follow the copied ones");
    let stderr = herald.stop().await;
    printed.0.push(("herald run on the copy".into(), stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_sled_history_to_postgres_where_herald_runs_on() {
    let Some(History { url, password, mut printed, dir, herald, hook, refusing, sled_config }) = sled_history().await
    else {
        return;
    };
    let env = [(URL_VAR, url.as_str())];
    // A config without [store] has nowhere to copy to; with it, a running
    // herald is refused (the state directory's lock) and nothing is written.
    let out = dir.cli(&["store", "copy", "--to", "postgres"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("[store] names no PostgreSQL database"), "{}", text(&out.stderr));
    dir.write_config(&(sled_config.clone() + &store_section()));
    let out = dir.cli_with(&["store", "copy", "--to", "postgres"], &env);
    let said = printed.keep("herald store copy while herald runs", &out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("herald is running: stop it first"), "{said}");
    herald.stop().await;
    dir.write_config(&sled_config);
    let sled_log = dir.log();
    let sled_status = dir.status();
    assert_eq!(status_counts(&sled_status).get("pending"), Some(&1), "{sled_status}");
    assert!(sled_status.contains("PAUSED"), "{sled_status}");
    dir.write_config(&(sled_config.clone() + &store_section()));

    let copied = cli_ok(&dir, &url, &mut printed, &["store", "copy", "--to", "postgres"]);
    assert!(copied.contains("audit chain of the copy: intact"), "{copied}");
    assert!(copied.contains("the copy is verified"), "{copied}");
    assert!(!copied.contains("DIFFERS"), "{copied}");
    let records = format!("{} ", sled_log.len());
    assert!(copied.lines().any(|l| l.starts_with("audit records") && l.contains(&records)), "{copied}");

    // A second copy into the same database is refused, and writes nothing.
    let again = dir.cli_with(&["store", "copy", "--to", "postgres"], &env);
    let said = printed.keep("a second herald store copy", &again);
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(said.contains("already holds herald data"), "{said}");

    // herald runs on PostgreSQL from where sled stopped.
    let herald = dir.start_with(&env).await;
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(status_counts(&status), status_counts(&sled_status), "{status}");
    assert!(status.contains("PAUSED"), "the pause came along:\n{status}");
    assert_log_begins_with(&dir, &sled_log);
    dir.ask_daemon_ok(&["resume", "--post", "held", "--reason", "copied"]);
    let failed = dir.log_from_daemon(&["--event", "failed"]);
    dir.ask_daemon_ok(&["retry", &failed[0].delivery, "--reason", "fixed"]);
    delivers_on_the_copy(&dir, herald, sled_log.len() + 3, &mut printed).await;
    assert_eq!(hook.accepted().len(), 2);
    assert_eq!(refusing.accepted().len(), 1);
    printed.assert_never(&password);
}

/// A delivery id that no store holds.
const UNKNOWN: &str = "0123456789abcdef0123456789abcdef";

/// The records of `event` in the whole log, read through the daemon of `dir`.
fn events(dir: &TestDir, url: &str, event: &str) -> Vec<serde_json::Value> {
    log_records(dir, url).into_iter().filter(|r| r["event"] == event).collect()
}

/// Two daemons on two hosts, A leading and B standing by. Every change made
/// through B's control socket (pause, resume, cancel, retry, approve,
/// recall) is carried out by A through the database (`forward`), takes
/// effect, and is recorded as the CLI user's, written by A; an error reads
/// the same through B as through A; with A stopped (SIGSTOP), B's CLI is
/// told plainly that no answer came, and the change is never carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_changes_through_a_standby_are_carried_out_by_the_leader() {
    use std::os::unix::fs::MetadataExt;
    let Some(url) = blocking(fresh_database) else { return };
    let env = [(URL_VAR, url.as_str())];
    let hook = receiver(None).await;
    // The first post is refused for good (400): `failed`, then `herald retry` through B.
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "refused"}"#));
    let config = daemon_section().replace("[retry]", "approvers_group = \"root\"\n\n[retry]")
        + &store_section()
        + &webhook_account("hook", &hook.url())
        + &post_at("refused", "Refused once.", &["hook"], in_secs(1))
        + &post_at("held", "Held by a pause.", &["hook"], in_secs(8))
        + &post_at("checked", "Needs a second person.", &["hook"], in_secs(2))
        + "approval = \"required\"\n"
        + &post_at("later", "Later.", &["hook"], in_secs(600));
    let (one, two) = (TestDir::new(), TestDir::new());
    one.write_config(&config);
    two.write_config(&config);
    let me = std::fs::metadata(one.path()).unwrap().uid();
    let first = one.start_with(&env).await;
    // B gives up on an answer after 3 s (30 s in production): before A's lease
    // expires while A is stopped below, so that B does not take the lead itself.
    let mut second = two.start_with(&[(URL_VAR, url.as_str()), ("HERALD_TEST_FORWARD_WAIT_MS", "3000")]).await;
    second.wait_for_log("herald is ready: standby").await;
    let by_the_leader = |r: &serde_json::Value| {
        r["daemon"].as_str().is_some_and(|d| d.contains(&format!(" pid {} boot ", first.pid())))
            && r["actor"]["via"] == "control_socket"
            && r["actor"]["uid"] == me
    };

    // pause: A holds the due post.
    let (ok, said) = ask(&two, &url, &["pause", "--post", "held", "--reason", "wrong number"]);
    assert!(ok, "{said}");
    let paused = events(&one, &url, "paused");
    assert!(paused.len() == 1 && by_the_leader(&paused[0]), "{paused:?}");
    assert!(paused[0]["reason"].as_str().unwrap().contains("wrong number"), "{paused:?}");
    eventually("the leader holds the paused post", Duration::from_secs(60), || {
        ask(&one, &url, &["status"]).1.contains("PAUSED: due deliveries held: 1")
    })
    .await;

    // retry: the refused delivery goes out again.
    eventually("the refused post failed", Duration::from_secs(60), || !events(&one, &url, "failed").is_empty()).await;
    let failed = events(&one, &url, "failed")[0]["delivery"].as_str().unwrap().to_string();
    let (ok, said) = ask(&two, &url, &["retry", &failed, "--reason", "fixed"]);
    assert!(ok, "{said}");

    // approve: the post that needs approval goes out (the group check is B's, of B's peer).
    let (ok, said) = ask(&two, &url, &["approve", "--post", "checked", "--reason", "read it"]);
    assert!(ok && said.contains("approved: post checked"), "{said}");

    // resume: the held post goes out.
    let (ok, said) = ask(&two, &url, &["resume", "--post", "held", "--reason", "number fixed"]);
    assert!(ok, "{said}");
    // cancel: the later post never goes out.
    let (ok, said) = ask(&two, &url, &["cancel", "--post", "later", "--reason", "drill moved"]);
    assert!(ok, "{said}");
    eventually("refused, checked and held delivered", Duration::from_secs(60), || {
        status_counts(&ask(&one, &url, &["status"]).1).get("delivered") == Some(&3)
    })
    .await;
    let status = ask(&one, &url, &["status"]).1;
    assert_eq!(status_counts(&status).get("cancelled"), Some(&1), "{status}");
    assert!(!status.contains("PAUSED"), "{status}");
    for event in ["requeued", "approved", "resumed", "cancelled"] {
        let found = events(&one, &url, event);
        assert!(found.len() == 1 && by_the_leader(&found[0]), "{event}: {found:?}");
    }

    // recall: A cancels what has not gone out, B takes the copy down with its own account.
    let (ok, said) = ask(&two, &url, &["recall", "--post", "held", "--reason", "wrong number after all"]);
    assert!(ok && said.contains("1 taken down"), "{said}");
    let held: Vec<_> = hook
        .accepted()
        .into_iter()
        .filter(|p| p.body.as_ref().is_some_and(|b| b.to_string().contains("Held by a pause.")))
        .collect();
    assert!(held.len() == 1 && held[0].recalled_at.is_some(), "the held post's copy is recalled: {held:?}");
    let recalled = events(&one, &url, "recalled");
    assert!(recalled.len() == 1 && recalled[0]["post"] == "held", "{recalled:?}");
    assert_eq!(recalled[0]["actor"]["uid"], me, "{recalled:?}");
    assert!(
        recalled[0]["daemon"].as_str().unwrap().contains(&format!(" pid {} boot ", second.pid())),
        "the deleting daemon records the outcome: {recalled:?}"
    );

    // An error reads the same, and exits the same, through either daemon.
    let asked = |dir: &TestDir| {
        let out = dir.cli_with(&["retry", UNKNOWN], &env);
        (
            out.status.code(),
            text(&out.stderr).lines().filter(|l| !l.contains(ASKED_DAEMON)).collect::<Vec<_>>().join("\n"),
        )
    };
    let (on_leader, on_standby) = (asked(&one), asked(&two));
    assert!(on_leader.1.contains(&format!("no delivery {UNKNOWN}")), "{on_leader:?}");
    assert_ne!(on_leader.0, Some(0));
    assert_eq!(on_standby, on_leader);

    // The leader stopped: B's CLI hears that nothing came back, and the change is withdrawn.
    first.signal("STOP");
    let (ok, said) = ask(&two, &url, &["pause", "--all", "--reason", "while the leader is stopped"]);
    first.signal("CONT");
    assert!(!ok, "{said}");
    assert!(said.contains("forwarded to the leader ") && said.contains("within 3 s"), "{said}");
    assert!(said.contains("withdrawn, not carried out"), "{said}");
    // The next change is carried out; the withdrawn one never is.
    let (ok, said) = ask(&two, &url, &["pause", "--post", "later", "--reason", "after the stop"]);
    assert!(ok, "{said}");
    let paused = events(&one, &url, "paused");
    assert_eq!(paused.len(), 2, "{paused:?}");
    assert!(paused[1]["reason"].as_str().unwrap().contains("after the stop"), "{paused:?}");
    let (ok, said) = ask(&two, &url, &["audit", "verify"]);
    assert!(ok, "one chain: {said}");
    second.stop().await;
    first.stop().await;
    assert_eq!(accepted_keys(&hook.accepted()).len(), 3, "each sent post once");
}

/// The way back: a history made on sled, moved onto PostgreSQL, where a
/// daemon writes on (its name in each record), then copied back into a new
/// sled store with `herald store copy --to sled`, refused first while a
/// daemon leads on the database, without `--state-dir`, and into the old
/// state directory (which holds a store). herald runs on the copy: the same
/// schedule, the same log record for record (the daemon's name kept), the
/// chain intact, the pause kept, and the held delivery delivered on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_to_sled_brings_a_postgres_history_back_where_herald_runs_on() {
    let Some(History { url, password, mut printed, dir, herald, hook, refusing, sled_config }) = sled_history().await
    else {
        return;
    };
    let env = [(URL_VAR, url.as_str())];
    let pg_config = sled_config.clone() + &store_section();
    herald.stop().await;
    dir.write_config(&pg_config);
    cli_ok(&dir, &url, &mut printed, &["store", "copy", "--to", "postgres"]);

    // On PostgreSQL a daemon retries the failed delivery, which is delivered.
    let herald = dir.start_with(&env).await;
    let failed = dir.log_from_daemon(&["--event", "failed"]);
    dir.ask_daemon_ok(&["retry", &failed[0].delivery, "--reason", "fixed"]);
    eventually("the retried delivery is delivered", Duration::from_secs(60), || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered") == Some(&2)
    })
    .await;
    // Refused while the daemon leads on the database; nothing is created.
    let back = dir.path().join("back");
    let back_arg = back.to_str().unwrap();
    let out = dir.cli_with(&["store", "copy", "--to", "sled", "--state-dir", back_arg], &env);
    let said = printed.keep("herald store copy --to sled while a daemon leads", &out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("a herald daemon leads on") && said.contains("stop every herald daemon"), "{said}");
    assert!(!back.exists(), "nothing was written");
    let stderr = herald.stop().await;
    printed.0.push(("herald run on PostgreSQL".into(), stderr));
    let pg_log = records(cli_ok(&dir, &url, &mut printed, &["log", "--format", "json"]).as_bytes());
    let pg_status = cli_ok(&dir, &url, &mut printed, &["status"]);
    assert!(pg_log.iter().any(|r| r.raw.get("daemon").is_some()), "the daemon names itself on PostgreSQL");

    // Refused without --state-dir, and into the old state directory's store.
    let out = dir.cli_with(&["store", "copy", "--to", "sled"], &env);
    let said = printed.keep("herald store copy --to sled without --state-dir", &out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("--to sled needs --state-dir DIR"), "{said}");
    let old = dir.state_dir();
    let out = dir.cli_with(&["store", "copy", "--to", "sled", "--state-dir", old.to_str().unwrap()], &env);
    let said = printed.keep("herald store copy --to sled into a store", &out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("holds a herald store already"), "{said}");

    let copied = cli_ok(&dir, &url, &mut printed, &["store", "copy", "--to", "sled", "--state-dir", back_arg]);
    assert!(copied.contains("PostgreSQL (source)") && copied.contains("sled (copy)"), "{copied}");
    assert!(copied.contains("audit chain of the copy: intact"), "{copied}");
    assert!(copied.contains("the copy is verified") && copied.contains("remove [store]"), "{copied}");
    assert!(copied.contains(&format!("state_dir = \"{back_arg}\"")), "{copied}");
    assert!(!copied.contains("DIFFERS"), "{copied}");

    // herald runs on the copied sled store, as the copy told.
    let back_config = sled_config.replace("state_dir = \"state\"", &format!("state_dir = \"{back_arg}\""));
    assert_ne!(back_config, sled_config);
    dir.write_config(&back_config);
    let herald = dir.start().await;
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(status_counts(&status), status_counts(&pg_status), "{status}");
    assert!(status.contains("PAUSED"), "the pause came back:\n{status}");
    assert_log_begins_with(&dir, &pg_log);
    dir.ask_daemon_ok(&["resume", "--post", "held", "--reason", "back on sled"]);
    delivers_on_the_copy(&dir, herald, pg_log.len() + 1, &mut printed).await;
    assert_eq!(hook.accepted().len(), 2);
    assert_eq!(refusing.accepted().len(), 1);
    printed.assert_never(&password);
}
