//! The state directory is private: created 0700 with files 0600 whatever
//! the umask herald was started with (run outside the systemd unit, which
//! sets `UMask=0077` itself), and a symbolic link planted in it is refused
//! rather than followed.

#[allow(dead_code)]
#[path = "daemon/helpers.rs"]
mod helpers;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use helpers::*;

/// `herald <args>` started by a shell with umask 000.
fn with_umask_000(dir: &TestDir, args: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("umask 000 && exec \"$0\" {args} --config \"$1\""))
        .arg(herald_binary())
        .arg(dir.config())
        .current_dir(dir.path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .stdin(Stdio::null());
    command
}

/// Every file and directory under `root` with its permission bits.
fn modes(root: &Path) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let name = entry.path().strip_prefix(root).unwrap().display().to_string();
            out.push((name, meta.is_dir(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_whatever_the_umask_and_links_in_it_are_refused() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("warning", "Never share a verification code.", &["wuhan-hook"], in_secs(1));
    dir.write_config(&config);

    // `herald run` under umask 000 creates the store and delivers.
    let mut child = with_umask_000(&dir, "run").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    eventually("the post is delivered", DEADLINE, || hook.accepted().len() == 1).await;
    eventually("its delivery is recorded", DEADLINE, || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered") == Some(&1)
    })
    .await;
    blocking(|| {
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(child.wait().unwrap().success());
    });
    // An offline command under umask 000 opens the store (and sled writes a
    // new snapshot file): still private.
    let out = blocking(|| with_umask_000(&dir, "status").output().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let state = dir.state_dir();
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700, "the state directory");
    let all = modes(&state);
    assert!(all.iter().any(|(name, _, _)| name.starts_with("db/snap.")), "sled's files are checked too: {all:?}");
    for (name, is_dir, mode) in &all {
        let wanted = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{name} has mode {mode:o}; all: {all:?}");
    }

    // A link planted in the state directory, or in sled's, is refused.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "not herald's\n").unwrap();
    for planted in ["store-created", "db/conf"] {
        let path = state.join(planted);
        let kept = dir.path().join("kept");
        std::fs::rename(&path, &kept).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let out = dir.cli(&["status"]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "herald opened a store with {planted} a link:\n{stderr}");
        assert!(stderr.contains("is a symbolic link") && stderr.contains(planted), "{planted}:\n{stderr}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not herald's\n", "the link's target was changed");
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&kept, &path).unwrap();
    }
    // Put back, the store opens with its delivery.
    assert_eq!(status_counts(&dir.status()).get("delivered"), Some(&1));
}
