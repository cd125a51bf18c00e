//! Bad input, run through the real `herald` binary:
//!
//! - the corpus of broken configs under `tests/data/bad-configs/` (one folder
//!   per case, with an `expected.txt`), plus huge files made at test time:
//!   `herald check` exits 1 naming the file, line and column and the
//!   expected message, and `herald run` refuses to start without creating
//!   the store;
//! - a running daemon sent broken configs by SIGHUP keeps its config and
//!   still delivers its post;
//! - storage faults: a state directory under a regular file, on a read-only
//!   or full file system, a damaged store and a store from a newer herald:
//!   a clear error, a non-zero exit, never a panic.

#[allow(dead_code)]
#[path = "daemon/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use helpers::{
    Herald, TestDir, daemon_section, in_secs, line_of, names_location, post_at, receiver, text, webhook_account,
};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// The environment variable that case `secret-env-unset` names; never set.
const UNSET_VARIABLE: &str = "HERALD_BAD_CONFIG_TEST_UNSET";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-configs")
}

/// A herald command with a clean environment (no credentials directory, no
/// config from the environment, nothing that would change its output).
fn herald(args: &[&str]) -> Command {
    let mut command = Command::new(HERALD);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HERALD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove(UNSET_VARIABLE)
        .stdin(Stdio::null());
    command
}

/// Run to completion, killing it after `limit`.
fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting herald");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting for herald").is_some() {
            return child.wait_with_output().expect("reading herald's output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reading herald's output");
            panic!("herald did not exit within {limit:?}; stderr:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copy a case folder, keeping symbolic links as links.
fn copy_case(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_case(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What a case must produce: the place (`file:line:column`, or `file` for
/// a finding about a whole file) and fragments of the message.
struct Expected {
    what: String,
    place: String,
    fragments: Vec<String>,
}

fn expected(case: &Path) -> Expected {
    let text = std::fs::read_to_string(case.join("expected.txt"))
        .unwrap_or_else(|e| panic!("{}: no expected.txt: {e}", case.display()));
    let what = text.lines().filter_map(|l| l.strip_prefix('#')).collect::<Vec<_>>().join(" ").trim().to_string();
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let place = lines.next().unwrap_or_else(|| panic!("{}: expected.txt names no place", case.display())).to_string();
    let fragments: Vec<String> = lines.map(str::to_string).collect();
    assert!(!fragments.is_empty(), "{}: expected.txt has no message", case.display());
    Expected { what, place, fragments }
}

/// Check one broken config in `dir` (holding `herald.toml`); returns what
/// went wrong, if anything.
fn check_case(name: &str, dir: &Path, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let config = dir.join("herald.toml");
    let config_arg = config.to_str().unwrap();

    let out = run_bounded(herald(&["check", "--config", config_arg]), Duration::from_secs(30));
    let stderr = text(&out.stderr);
    if out.status.code() != Some(1) {
        problems.push(format!("{name}: `herald check` exited with {} (expected 1); stderr:\n{stderr}", out.status));
    }
    // `<dir>/<file>:<line>:<column>: error: ...` with every fragment on that line.
    let place = format!("{}/{}: error: ", dir.display(), expected.place);
    let found =
        stderr.lines().any(|l| l.starts_with(&place) && expected.fragments.iter().all(|f| l.contains(f.as_str())));
    if !found {
        problems.push(format!(
            "{name} ({}): no line starting `{place}` containing {:?} in `herald check`'s stderr:\n{stderr}",
            expected.what, expected.fragments
        ));
    }
    if stderr.contains("panicked") || text(&out.stdout).contains("panicked") {
        problems.push(format!("{name}: `herald check` panicked:\n{stderr}"));
    }

    let out = run_bounded(herald(&["run", "--config", config_arg]), Duration::from_secs(30));
    let stderr = text(&out.stderr);
    if out.status.success() {
        problems.push(format!("{name}: `herald run` exited 0 on a broken config; stderr:\n{stderr}"));
    }
    if !stderr.contains("did not start") {
        problems.push(format!("{name}: `herald run` did not say it did not start; stderr:\n{stderr}"));
    }
    if stderr.contains("panicked") {
        problems.push(format!("{name}: `herald run` panicked:\n{stderr}"));
    }
    if dir.join("state").exists() {
        problems.push(format!("{name}: `herald run` created the state directory for a refused config"));
    }
    problems
}

/// Run every case folder of `corpus` through [`check_case`]; the problems found.
fn run_corpus(corpus: &Path, at_least: usize) -> Vec<String> {
    let started = Instant::now();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus)
        .expect("reading the corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= at_least, "{} holds {} cases; expected at least {at_least}", corpus.display(), cases.len());
    let mut problems = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = expected(case);
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join(&name);
        copy_case(case, &dir);
        problems.extend(check_case(&name, &dir, &expected));
    }
    println!("{} cases of {} checked (check + run each) in {:.1?}", cases.len(), corpus.display(), started.elapsed());
    problems
}

#[test]
fn every_broken_config_is_refused_with_its_place_and_reason() {
    let problems = run_corpus(&corpus(), 50);
    assert!(problems.is_empty(), "{} problem(s):\n\n{}", problems.len(), problems.join("\n\n"));
}

/// The hostile-input corpus (`tests/data/hostile-input/`): control
/// characters, bidi overrides and script links in content, refused on every
/// platform at the post's place.
#[test]
fn every_hostile_content_is_refused_with_its_place_and_reason() {
    let problems = run_corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile-input"), 18);
    assert!(problems.is_empty(), "{} problem(s):\n\n{}", problems.len(), problems.join("\n\n"));
}

/// `check` prints names from the config and file names escaped: a key or a
/// campaign file named with a terminal escape cannot drive the terminal.
#[test]
fn check_output_escapes_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("posts.d")).unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "\"\\u001b]0;owned\\u0007\" = 1\n[daemon]\nstate_dir = \"state\"\ninclude = [\"posts.d/*.toml\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("posts.d/\u{1b}[2J\u{202e}.toml"), "[[posts]]\nid = \"x\"\n").unwrap();
    let out = run_bounded(herald(&["check", "--config", config.to_str().unwrap()]), Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains(['\u{1b}', '\u{7}', '\u{202e}']), "raw control characters in check's output: {stderr:?}");
    assert!(stderr.contains("unknown section `\\u{1b}]0;owned\\u{7}`"), "{stderr}");
    assert!(stderr.contains("posts.d/\\u{1b}[2J\\u{202e}.toml:1:1: error:"), "{stderr}");
}

/// A config file over the 16 MiB limit, main or included, made here rather
/// than committed.
#[test]
fn huge_config_files_are_refused_without_reading_them() {
    let base = "[daemon]\nstate_dir = \"state\"\ninclude = [\"posts.d/*.toml\"]\n\n[accounts.wuhan-hook]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n";
    let padding = |text: &str| {
        let mut big = String::from(text);
        let line = format!("# {}\n", "x".repeat(1022));
        while big.len() <= 16 * 1024 * 1024 {
            big.push_str(&line);
        }
        big
    };

    // The main file.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("huge-main");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("herald.toml"), padding(base)).unwrap();
    let expected = Expected {
        what: "a main config over 16 MiB".into(),
        place: "herald.toml".into(),
        fragments: vec!["bytes; config files are limited to 16777216 bytes".into()],
    };
    let mut problems = check_case("huge-main", &dir, &expected);

    // An included file: reported at the include pattern that matched it.
    let dir = work.path().join("huge-include");
    std::fs::create_dir_all(dir.join("posts.d")).unwrap();
    std::fs::write(dir.join("herald.toml"), base).unwrap();
    std::fs::write(dir.join("posts.d/campaign.toml"), padding("")).unwrap();
    let expected = Expected {
        what: "an included file over 16 MiB".into(),
        place: "herald.toml:3:12".into(),
        fragments: vec![
            "posts.d/campaign.toml, matched by include pattern `posts.d/*.toml`".into(),
            "config files are limited to 16777216 bytes".into(),
        ],
    };
    problems.extend(check_case("huge-include", &dir, &expected));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A named pipe (FIFO) at `path`, with no writer: opening it for reading
/// the usual way blocks for ever.
fn fifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
}

/// Files herald must not wait on or swallow, made at test time (a FIFO
/// cannot be committed): as the main file, matched by an include, as a
/// secret, as an image; and a secret file over the 64 KiB limit. `check`
/// and `run` must each answer (within the 30 s safety net) with the place.
#[test]
fn fifos_and_oversized_files_are_refused_without_hanging() {
    let hook = "[daemon]\nstate_dir = \"state\"\ninclude = [\"posts.d/*.toml\"]\n\n[accounts.wuhan-hook]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nSECRET\n\n[[posts]]\nid = \"warning\"\nbody = \"Beware.\"\ntargets = [\"wuhan-hook\"]\nat = 2030-12-01T09:00:00+08:00\n";
    let work = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut case = |name: &str, config: &str, make: &dyn Fn(&Path), place: &str, fragments: &[&str]| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("herald.toml"), config).unwrap();
        make(&dir);
        let expected = Expected {
            what: name.replace('-', " "),
            place: place.into(),
            fragments: fragments.iter().map(|f| f.to_string()).collect(),
        };
        problems.extend(check_case(name, &dir, &expected));
    };
    let plain = hook.replace("SECRET", "");
    case(
        "include-fifo",
        &plain,
        &|dir| fifo(&dir.join("posts.d/campaign.toml")),
        "herald.toml:3:12",
        &["campaign.toml, matched by include pattern `posts.d/*.toml`: it is a named pipe (FIFO), not a regular file"],
    );
    case(
        "secret-fifo",
        &hook.replace("SECRET", "secret = { file = \"hook.key\" }"),
        &|dir| fifo(&dir.join("hook.key")),
        "herald.toml:8:10",
        &["hook.key, which cannot be read: it is a named pipe (FIFO), not a regular file"],
    );
    case(
        "secret-too-large",
        &hook.replace("SECRET", "secret = { file = \"hook.key\" }"),
        &|dir| std::fs::write(dir.join("hook.key"), "k".repeat(64 * 1024 + 1)).unwrap(),
        "herald.toml:8:10",
        &["hook.key, which cannot be read: it is 65537 bytes; the limit is 65536 bytes"],
    );
    let weibo = "[daemon]\nstate_dir = \"state\"\n\n[accounts.wuhan-weibo]\nplatform = \"weibo\"\nrip = \"203.0.113.7\"\naccess_token = \"token\"\nsafe_domain = \"example.gov.cn\"\n\n[[posts]]\nid = \"warning\"\nbody = \"Beware. https://www.example.gov.cn/x\"\nimages = [\"cover.jpg\"]\ntargets = [\"wuhan-weibo\"]\nat = 2030-12-01T09:00:00+08:00\n";
    case(
        "image-fifo",
        weibo,
        &|dir| fifo(&dir.join("cover.jpg")),
        "herald.toml:10:1",
        &["would be refused by weibo (wuhan-weibo): images:", "cover.jpg` cannot be read: it is a named pipe (FIFO)"],
    );
    // The main file itself.
    let dir = work.path().join("main-fifo");
    fifo(&dir.join("herald.toml"));
    let expected = Expected {
        what: "the main config a FIFO".into(),
        place: "herald.toml".into(),
        fragments: vec!["cannot read the config file: it is a named pipe (FIFO), not a regular file".into()],
    };
    problems.extend(check_case("main-fifo", &dir, &expected));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));

    // A systemd credential that is a FIFO, for `check` and `run`.
    let dir = work.path().join("credential-fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("herald.toml");
    std::fs::write(&config, hook.replace("SECRET", "secret = { credential = \"hook\" }")).unwrap();
    fifo(&dir.join("credentials/hook"));
    let credentials = dir.join("credentials");
    for args in [&["check"][..], &["run"][..]] {
        let mut command = herald(args);
        command.args(["--config", config.to_str().unwrap()]).env("CREDENTIALS_DIRECTORY", &credentials);
        let out = run_bounded(command, Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "herald {args:?} accepted a FIFO credential:\n{stderr}");
        assert!(
            stderr.contains(
                "herald.toml:8:10: error: account `wuhan-hook`: `secret` comes from systemd credential \
                             `hook`, which cannot be read: it is a named pipe (FIFO), not a regular file"
            ),
            "herald {args:?}:\n{stderr}"
        );
    }
}

/// Group shapes that were exponential, overflowed the stack or printed
/// megabytes: each must be answered (the 30 s limit is a safety net, not a
/// timing claim) with at most one error.
#[test]
fn hostile_group_shapes_are_expanded_in_linear_time() {
    let head = "[daemon]\nstate_dir = \"state\"\n\n[accounts.wuhan-hook]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n\n[[posts]]\nid = \"warning\"\nbody = \"Beware.\"\ntargets = [\"top\"]\ncron = \"0 9 * * 1\"\n\n[groups]\n";
    let work = tempfile::tempdir().unwrap();
    let check = |name: &str, groups: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("herald.toml"), format!("{head}{groups}")).unwrap();
        let config = dir.join("herald.toml");
        run_bounded(herald(&["check", "--config", config.to_str().unwrap()]), Duration::from_secs(30))
    };

    // A 50-level diamond: each level's two groups both include both groups
    // of the level below (2^50 paths). Valid: one account, reached once.
    let mut groups = String::from("top = [\"a0\", \"b0\"]\n");
    for level in 0..50 {
        let below =
            if level == 49 { "\"wuhan-hook\"".to_string() } else { format!("\"a{}\", \"b{}\"", level + 1, level + 1) };
        groups.push_str(&format!("a{level} = [{below}]\nb{level} = [{below}]\n"));
    }
    let out = check("diamond", &groups);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "the diamond was refused:\n{}", text(&out.stderr));
    assert!(stdout.contains("targets:  1 account(s): wuhan-hook"), "{stdout}");

    // A chain of 50,000 groups: refused once, where it passes the depth bound.
    let mut groups = String::from("top = [\"g0\"]\n");
    for i in 0..50_000 {
        let next = if i == 49_999 { "wuhan-hook".to_string() } else { format!("g{}", i + 1) };
        groups.push_str(&format!("g{i} = [\"{next}\"]\n"));
    }
    let out = check("chain", &groups);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("overflow"), "{stderr}");
    assert_eq!(stderr.matches(": error: ").count(), 1, "{stderr}");
    assert!(stderr.contains("nests groups more than 64 levels deep"), "{stderr}");

    // A circle of 2,000 groups: one error, of bounded length.
    let mut groups = String::from("top = [\"c0\"]\n");
    for i in 0..2_000 {
        groups.push_str(&format!("c{i} = [\"c{}\"]\n", (i + 1) % 2_000));
    }
    let out = check("circle", &groups);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches(": error: ").count(), 1, "{stderr}");
    assert!(stderr.contains("groups include each other in a circle: c0 -> c1 -> "), "{stderr}");
    assert!(stderr.len() < 1_000, "{} bytes of errors:\n{stderr}", stderr.len());
}

/// `check --upcoming` with counts that panicked ("capacity overflow") or
/// aborted on a 12 GB allocation: a usage error (exit 2) naming the bound.
#[test]
fn check_upcoming_is_bounded_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "[daemon]\nstate_dir = \"state\"\n\n[accounts.wuhan-hook]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n\n[[posts]]\nid = \"weekly\"\nbody = \"Beware.\"\ntargets = [\"wuhan-hook\"]\ncron = \"* * * * *\"\n").unwrap();
    let config = config.to_str().unwrap();
    for n in ["18446744073709551615", "1000000000", "1001", "99999999999999999999999999"] {
        let out = run_bounded(herald(&["check", "--config", config, "--upcoming", n]), Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--upcoming {n}:\n{stderr}");
        assert!(stderr.contains("at most 1000 occurrences per post can be listed"), "--upcoming {n}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = run_bounded(herald(&["check", "--config", config, "--upcoming", "1000"]), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().filter(|l| l.trim_start().starts_with("at ")).count(), 1000);
}

/// Broken versions of a running daemon's config, sent by SIGHUP: each is
/// refused with its place, and the daemon keeps publishing its post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_broken_config_keeps_the_running_one() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(12);
    let good = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("warning", "Beware.", &["wuhan-hook"], at);
    dir.write_config(&good);
    let mut herald = dir.start().await;

    let tail = |extra: &str| format!("{good}{extra}");
    // (what, the broken text, what must be logged, a text on the line it must name)
    let broken: Vec<(&str, String, &str, &str)> = vec![
        ("a syntax error", tail("\n[[posts]]\nid = \"x\nbody = \"y\"\n"), "TOML syntax error", "id = \"x"),
        ("an unknown key", tail("colour = \"red\"\n"), "unknown key `colour`", "colour"),
        (
            "a bad cron expression",
            tail("\n[[posts]]\nid = \"weekly\"\nbody = \"y\"\ntargets = [\"wuhan-hook\"]\ncron = \"0 9 * * 8\"\n"),
            "day-of-week: 8 is out of range",
            "0 9 * * 8",
        ),
        (
            "an unknown target",
            tail("\n[[posts]]\nid = \"other\"\nbody = \"y\"\ntargets = [\"wuhan-hok\"]\ncron = \"0 9 * * 1\"\n"),
            "target `wuhan-hok` is neither an account nor a group",
            "wuhan-hok",
        ),
        (
            "a missing secret",
            good.replace(
                "platform = \"webhook\"\n",
                &format!("platform = \"webhook\"\nsecret = {{ env = \"{UNSET_VARIABLE}\" }}\n"),
            ),
            "which is not set",
            "secret = {",
        ),
        (
            "zero max attempts",
            good.replace("max_attempts = 5", "max_attempts = 0"),
            "`max_attempts` is 0",
            "max_attempts",
        ),
        (
            "content the platform refuses",
            good.replace("body = \"Beware.\"", "body = \"  \""),
            "body: must not be empty",
            "[[posts]]",
        ),
    ];
    for (n, (what, text, message, needle)) in broken.iter().enumerate() {
        dir.write_config(text);
        herald.signal("HUP");
        herald.wait_for_log_count("keeping the running config", n + 1).await;
        let stderr = herald.stderr();
        assert!(stderr.contains(message), "reload with {what}: `{message}` not logged:\n{stderr}");
        let line = line_of(text, needle);
        assert!(
            names_location(&stderr, "herald.toml", line, None),
            "reload with {what}: no herald.toml:{line} in:\n{stderr}"
        );
        assert!(herald.exited().is_none(), "herald exited after a reload with {what}:\n{stderr}");
    }
    // Invalid UTF-8 as well.
    std::fs::write(dir.config(), [good.as_bytes(), b"\n# caf\xe9\n"].concat()).unwrap();
    herald.signal("HUP");
    herald.wait_for_log_count("keeping the running config", broken.len() + 1).await;
    assert!(herald.stderr().contains("not valid UTF-8"), "{}", herald.stderr());

    delivered_after_refused_reloads(&hook, herald, at).await;
}

/// After refused reloads, the running config's post (due at `at`) still goes
/// out, once, and no refused config was ever applied.
async fn delivered_after_refused_reloads(
    hook: &herald_sandbox::WebhookReceiver,
    herald: Herald,
    at: chrono::DateTime<chrono::Utc>,
) {
    let within = (at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(15);
    assert!(
        hook.wait_until(within, |r| !r.is_empty()).await,
        "the post of the running config was not delivered after refused reloads:\n{}",
        herald.stderr()
    );
    let stderr = herald.stop().await;
    assert!(!stderr.contains("config reloaded"), "a refused config was applied:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(hook.received().len(), 1, "{:?}", hook.received());
}

/// A reload whose campaign file is a FIFO (which hung reload for ever), or
/// defines an account: each is refused at once with its reason, the daemon
/// keeps its config, answers the next reload and still delivers its post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_be_hung_or_given_an_account_by_a_campaign_file() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(12);
    let good = daemon_section()
        .replace("shutdown_deadline = \"5s\"\n", "shutdown_deadline = \"5s\"\ninclude = [\"posts.d/*.toml\"]\n")
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("warning", "Beware.", &["wuhan-hook"], at);
    dir.write_config(&good);
    let mut herald = dir.start().await;

    let campaign = dir.path().join("posts.d/campaign.toml");
    fifo(&campaign);
    herald.signal("HUP");
    herald.wait_for_log_count("keeping the running config", 1).await;
    assert!(herald.stderr().contains("it is a named pipe (FIFO), not a regular file"), "{}", herald.stderr());

    std::fs::remove_file(&campaign).unwrap();
    dir.write(
        "posts.d/campaign.toml",
        "[accounts.evil]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/evil\"\nsecret = { file = \"/proc/self/environ\" }\n",
    );
    herald.signal("HUP");
    herald.wait_for_log_count("keeping the running config", 2).await;
    assert!(herald.stderr().contains("[accounts.*] may not be set in a campaign file"), "{}", herald.stderr());

    delivered_after_refused_reloads(&hook, herald, at).await;
}

// ---------------------------------------------------------------------------
// storage faults
// ---------------------------------------------------------------------------

const STORE_CONFIG: &str = "[daemon]\nstate_dir = \"STATE\"\nshutdown_deadline = \"2s\"\n\n[accounts.wuhan-hook]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n\n[[posts]]\nid = \"warning\"\nbody = \"Beware.\"\ntargets = [\"wuhan-hook\"]\ncron = \"0 9 * * 1\"\n";

/// Write a config whose state directory is `state` (relative to `dir`).
fn store_config(dir: &Path, state: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    std::fs::write(&path, STORE_CONFIG.replace("STATE", state)).unwrap();
    path
}

/// `herald run` must stop at once, non-zero, with `message`, never a panic.
fn assert_refuses_to_run(config: &Path, message: &str) -> String {
    let out = run_bounded(herald(&["run", "--config", config.to_str().unwrap()]), Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "herald run started; stderr:\n{stderr}");
    assert!(stderr.contains(message), "`{message}` not in herald run's stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "herald panicked:\n{stderr}");
    stderr
}

/// Run herald until it is ready, then stop it: a real store with a post.
fn make_store(config: &Path, state: &Path) {
    // Its stderr goes to a file, read until herald says it is ready.
    let log = state.with_extension("stderr");
    let child = herald(&["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting herald");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("herald is ready") {
        assert!(started.elapsed() < Duration::from_secs(20), "herald did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(state.join("store-created").exists());
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.status.success(), "herald did not stop cleanly:\n{stderr}");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_state_directory_under_a_regular_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), "not a directory\n").unwrap();
    let config = store_config(dir.path(), "blocker/state");
    assert_refuses_to_run(&config, "cannot use the state directory");
    let stderr = assert_refuses_to_run(&config, "Not a directory");
    assert_eq!(stderr.matches("Not a directory").count(), 1, "the cause is said once:\n{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("blocker")).unwrap(), "not a directory\n");
}

/// A tmpfs mounted at `at` with `options`, unmounted on drop; `None` when
/// this machine does not allow mounting (not root, or in a container
/// without the capability).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "herald-test", at.to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Mount(at.to_path_buf())),
            _ => {
                println!("NOTE: cannot mount a tmpfs here ({options}); this case is skipped (see RELIABILITY.md)");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Mount::tmpfs(&dir.path().join("ro"), "ro,size=1m") else { return };
    let config = store_config(dir.path(), "ro/state");
    assert_refuses_to_run(&config, "Read-only file system");
}

/// Fill the file system holding `dir` to the last byte.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    while filler.write_all(&[0]).is_ok() {}
    let _ = filler.sync_all();
}

#[test]
fn a_full_file_system_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A new store on a full file system.
    let Some(_mount) = Mount::tmpfs(&dir.path().join("full"), "size=1m") else { return };
    let config = store_config(dir.path(), "full/state");
    fill(&dir.path().join("full"));
    assert_refuses_to_run(&config, "No space left on device");

    // An existing store, the file system filled while herald was stopped.
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Mount::tmpfs(&dir.path().join("full"), "size=1m") else { return };
    std::fs::create_dir_all(dir.path().join("full/state")).unwrap();
    let config = store_config(dir.path(), "full/state");
    make_store(&config, &dir.path().join("full/state"));
    let before = snapshot(&dir.path().join("full/state/db"));
    fill(&dir.path().join("full"));
    assert_refuses_to_run(&config, "No space left on device");
    assert_eq!(before.len(), snapshot(&dir.path().join("full/state/db")).len());
}

#[test]
fn a_damaged_store_is_refused_and_never_taken_for_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(dir.path(), "state");
    make_store(&config, &dir.path().join("state"));
    // Overwrite bytes all through sled's log, as a failing disk would.
    let log = dir.path().join("state/db/db");
    let mut bytes = std::fs::read(&log).unwrap();
    assert!(bytes.len() > 64, "the store is unexpectedly small");
    for i in (64..bytes.len()).step_by(97) {
        bytes[i] ^= 0xFF;
    }
    std::fs::write(&log, &bytes).unwrap();

    let stderr = assert_refuses_to_run(&config, "the store is damaged");
    assert!(stderr.contains("copy it aside (cp -a) before any repair"), "{stderr}");
    assert!(!stderr.contains("move it away"), "no advice that discards the store:\n{stderr}");
    let status = run_bounded(herald(&["run", "--config", config.to_str().unwrap()]), Duration::from_secs(30)).status;
    assert_eq!(status.code(), Some(65), "a damaged store has its own exit code (RestartPreventExitStatus=)");
    // herald wrote nothing into it: a second start refuses the same way
    // (it did not re-initialise the store over the lost data).
    assert_refuses_to_run(&config, "the store is damaged");
    let db = sled::open(dir.path().join("state/db")).unwrap();
    assert!(db.open_tree("meta").unwrap().get("schema_version").unwrap().is_none(), "herald wrote a schema");
}

#[test]
fn a_store_from_a_newer_herald_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(dir.path(), "state");
    make_store(&config, &dir.path().join("state"));
    {
        let db = sled::open(dir.path().join("state/db")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        let current = meta.get("schema_version").unwrap().expect("a schema version");
        let version = u32::from_be_bytes(current.as_ref().try_into().unwrap());
        meta.insert("schema_version", &(version + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    // sled rotates its snapshot file on every open, so compare what the
    // store holds, tree by tree, rather than the files' bytes.
    let before = contents(&dir.path().join("state/db"));
    let stderr = assert_refuses_to_run(&config, "was written by a newer herald");
    assert!(stderr.contains("upgrade herald"), "{stderr}");
    assert_refuses_to_run(&config, "was written by a newer herald");
    assert!(before == contents(&dir.path().join("state/db")), "a refused start changed the store's contents");
}

/// Every key and value of every tree of a sled database.
fn contents(db: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let db = sled::open(db).unwrap();
    let mut out = Vec::new();
    for name in db.tree_names() {
        for entry in db.open_tree(&name).unwrap().iter() {
            let (k, v) = entry.unwrap();
            out.push((name.to_vec(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_filling_up_while_running_stops_herald_with_the_cause() {
    let dir = TestDir::new();
    let Some(_mount) = Mount::tmpfs(&dir.path().join("full"), "size=1m") else { return };
    let config = daemon_section().replace("state_dir = \"state\"", "state_dir = \"full/state\"")
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook")
        + &post_at("warning", "Beware.", &["wuhan-hook"], in_secs(3));
    dir.write_config(&config);
    let mut herald = dir.start().await;
    fill(&dir.path().join("full"));
    let status = herald.wait_exit().await;
    let stderr = herald.stderr();
    assert!(!status.success(), "herald went on with a full disk:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("the scheduler stopped unexpectedly") && last.contains("No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
