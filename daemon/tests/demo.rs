//! The README's first command, `herald demo`, as a newcomer runs it: it must
//! deliver everything, show the refresh, the pause and the retries in the
//! audit log, and, even at trace log level, never print a secret: the
//! sandbox credentials it configures, the webhook signing key, or the WeChat
//! access tokens the emulator issues (`sandbox-token-…`).

use std::process::Command;

#[test]
fn the_demo_delivers_everything_and_never_prints_a_secret_even_at_trace_level() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("demo")
        .env("RUST_LOG", "trace")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("running herald demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald demo failed:\n{stderr}");
    assert!(stdout.contains("14 delivered, 0 failed"), "{stdout}");
    for event in ["credentials_refreshed", "retry_scheduled", "delivered"] {
        assert!(stdout.contains(event), "the audit log shows no {event}:\n{stdout}");
    }
    assert!(stdout.contains("code 10023"), "the Weibo rate limit is not in the audit log:\n{stdout}");
    let secrets = [
        "sandbox-wuhan-weibo",
        "sandbox-xian-weibo",
        "sandbox-wechat-secret",
        "sandbox-tieba-bduss",
        "sandbox-forum-key",
        "sandbox-mastodon",
        "demo-signing-key-not-for-production",
        "sandbox-token-",
    ];
    // The HTTP client's own trace lines are where a request's secret would show.
    let client_traces = stderr.lines().filter(|l| l.contains("TRACE") && l.contains("hyper_util::client")).count();
    assert!(client_traces > 0, "the HTTP client's trace logging was not on:\n{stderr}");
    for secret in secrets {
        assert!(!stdout.contains(secret), "`{secret}` printed on stdout");
        assert!(!stderr.contains(secret), "`{secret}` in the trace log");
    }
}
