//! Approval (four eyes) against the real daemon: a due post that needs
//! approval is held (nothing reaches the receiver) until a member of the
//! approvers' group approves it; a non-member is refused; an edit after the
//! approval holds it again; the author of the last change may not approve.
//! The other user is `nobody` in group `nogroup`, run through setpriv (the
//! tests run as root, as in audit.rs).

use super::audit::{cli_as_other, other_user};
use super::helpers::*;
use super::operations::{alert_command, command_alerts};

/// A config whose control socket `nobody` (group `nogroup`) may use, whose
/// approvers are `approvers`, with `extra` in `[daemon]`.
fn config(hook: &str, approvers: &str, extra: &str, posts: &str) -> String {
    let daemon = format!(
        "control_socket = \"run/herald.sock\"\nsocket_group = \"nogroup\"\napprovers_group = \"{approvers}\"\n{extra}"
    );
    daemon_section().replace("[retry]", &format!("{daemon}\n[retry]")) + &webhook_account("a-hook", hook) + posts
}

fn needs_approval(id: &str, body: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    post_at(id, body, &["a-hook"], at) + "approval = \"required\"\n"
}

/// The records of `event` in the daemon's log, once there are `count`.
async fn wait_for_records(dir: &TestDir, event: &str, count: usize) -> Vec<Record> {
    let mut found = Vec::new();
    eventually(&format!("{count} `{event}` record(s)"), DEADLINE, || {
        found = dir.log_from_daemon(&["--event", event]);
        found.len() >= count
    })
    .await;
    found
}

/// Only as root can the test act as another user (setpriv).
fn as_root() -> bool {
    let root = other_user().0.is_some();
    if !root {
        eprintln!("skipped: needs root and /usr/bin/setpriv to act as `nobody`");
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_due_post_is_held_until_a_member_of_the_approvers_group_approves_it() {
    use std::os::unix::fs::PermissionsExt;
    if !as_root() {
        return;
    }
    let hook = receiver(None).await;
    let dir = TestDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let alerts = dir.path().join("alerts");
    let with_alerts = config(&hook.url(), "root", "", &needs_approval("hotline", "Call 110.", in_secs(3)))
        .replace("[retry]", &format!("[alerts]\ncommand = {}\n\n[retry]", alert_command(&alerts)));
    dir.write_config(&with_alerts);
    let herald = dir.start().await;
    let check = dir.cli(&["check"]);
    assert!(text(&check.stdout).contains("approval: required (content "), "{}", text(&check.stdout));

    let held = wait_for_records(&dir, "held", 1).await;
    assert!(held[0].reason.as_deref().unwrap().contains("awaits approval"), "{:?}", held[0].raw);
    assert!(hook.received().is_empty(), "an unapproved post went out: {:?}", hook.received());
    eventually("an awaiting_approval alert", DEADLINE, || {
        command_alerts(&alerts).iter().any(|a| a["kind"] == "awaiting_approval" && a["post"] == "hotline")
    })
    .await;
    let upcoming = dir.ask_daemon_ok(&["upcoming"]);
    assert!(upcoming.contains("approval: awaiting approval"), "{upcoming}");

    // `nobody` may use the socket (group nogroup) but is not in group root.
    let out = cli_as_other(&dir, &["approve", "--post", "hotline"]);
    assert!(!out.status.success(), "a non-member approved: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("is not a member of the approvers' group `root`"), "{}", text(&out.stderr));
    assert!(dir.log_from_daemon(&["--event", "approved"]).is_empty());
    assert!(hook.received().is_empty());

    let out = dir.ask_daemon_ok(&["approve", "--post", "hotline", "--reason", "checked the number"]);
    assert!(out.contains("approved: post hotline"), "{out}");
    assert!(hook.wait_until(DEADLINE, |r| distinct_accepted(r) == 1).await, "the approved post did not go out");
    let approved = dir.log_from_daemon(&["--event", "approved"]);
    assert_eq!(approved.len(), 1, "{approved:#?}");
    assert_eq!(approved[0].post, "hotline");
    assert_eq!(approved[0].raw["actor"]["uid"], 0, "{}", approved[0].raw);
    assert!(approved[0].reason.as_deref().unwrap().contains("checked the number"));
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_after_approval_holds_the_post_again_and_its_author_may_not_approve_it() {
    use std::os::unix::fs::PermissionsExt;
    if !as_root() {
        return;
    }
    let hook = receiver(None).await;
    let dir = TestDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let due = in_secs(12);
    dir.write_config(&config(&hook.url(), "nogroup", "", &needs_approval("hotline", "Call 111.", due)));
    let herald = dir.start().await;

    let out = cli_as_other(&dir, &["approve", "--post", "hotline"]);
    assert!(out.status.success(), "a member could not approve: {}", text(&out.stderr));

    // nobody corrects the text and reloads: the approval ends, and nobody,
    // the author of the change, may not approve it again.
    let edited = config(&hook.url(), "nogroup", "", &needs_approval("hotline", "Call 110.", due));
    dir.write_config(&edited);
    let out = cli_as_other(&dir, &["reload", "--reason", "number corrected"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let invalidated = wait_for_records(&dir, "approval_invalidated", 1).await;
    assert_eq!(invalidated[0].post, "hotline");
    assert_eq!(invalidated[0].raw["actor"]["name"], "nobody", "{}", invalidated[0].raw);
    let out = cli_as_other(&dir, &["approve", "--post", "hotline"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("made the last change to post `hotline`"), "{}", text(&out.stderr));

    let held = wait_for_records(&dir, "held", 1).await;
    assert_eq!(held[0].post, "hotline");
    assert!(hook.received().is_empty(), "a post edited after its approval went out: {:?}", hook.received());

    // With authors allowed to approve (a change of [daemon], not of the post), it goes out, as edited.
    dir.write_config(&config(
        &hook.url(),
        "nogroup",
        "author_may_approve = true\n",
        &needs_approval("hotline", "Call 110.", due),
    ));
    dir.ask_daemon_ok(&["reload"]);
    let out = cli_as_other(&dir, &["approve", "--post", "hotline"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(hook.wait_until(DEADLINE, |r| distinct_accepted(r) == 1).await, "the approved post did not go out");
    let body = hook.accepted()[0].body.clone().unwrap();
    assert!(body.to_string().contains("Call 110."), "{body}");
    herald.stop().await;
}

#[test]
fn a_post_that_needs_approval_without_an_approvers_group_is_refused_where_it_says_so() {
    let dir = TestDir::new();
    let text = daemon_section()
        + &webhook_account("a-hook", "http://127.0.0.1:9/hook")
        + &needs_approval("hotline", "Call 110.", in_secs(600));
    dir.write_config(&text);
    let out = dir.cli(&["check"]);
    assert!(!out.status.success());
    let stderr = text_of(&out);
    assert!(stderr.contains("needs approval, but no one may approve it"), "{stderr}");
    assert!(names_location(&stderr, "herald.toml", line_of(&text, "approval = "), Some(12)), "{stderr}");
}

fn text_of(out: &std::process::Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}
