//! Local emulators of the platforms herald publishes to, for integration
//! tests and `herald demo`. Each emulator is a module that runs a real HTTP
//! server on loopback (or is mounted with the others by [`Sandbox`]),
//! records what it received, checks what the real platform checks, and
//! injects the faults of [`faults`] on demand, in-process or through its
//! `/_sandbox/*` control API.

pub mod discourse;
mod emulator;
pub mod faults;
pub mod mastodon;
mod server;
pub mod suite;
pub mod tieba;
pub mod tokens;
pub mod webhook;
pub mod wechat;
pub mod weibo;

pub use discourse::{DiscourseConfig, DiscourseEmulator, DiscourseTopic};
pub use faults::{Fault, FaultSpec, LatencySpec, StatusFault};
pub use mastodon::{MastodonConfig, MastodonEmulator, MastodonMedia, MastodonStatus};
pub use suite::{Sandbox, SandboxOptions, TIEBA_PREFIX, WECHAT_PREFIX};
pub use tokens::{SANDBOX_TOKEN_PREFIX, Tokens};
pub use webhook::{Outcome, ReceivedPost, Signature, WebhookReceiver};
pub use weibo::{WeiboConfig, WeiboEmulator, WeiboPost};
