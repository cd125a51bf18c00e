//! Local emulators of the platforms herald publishes to, for integration
//! tests and `herald demo`. Each emulator is a module that runs a real HTTP
//! server on loopback, records what it received, and injects the faults of
//! [`faults`] on demand, in-process or through its `/_sandbox/*` control API.
//! [`Sandbox`] serves them all on one address.

pub mod faults;
mod sandbox;
mod server;
pub mod tieba;
pub mod webhook;
pub mod wechat;

pub use faults::{Fault, FaultSpec, LatencySpec, StatusFault};
pub use sandbox::{Sandbox, SandboxConfig, TIEBA_PREFIX, WECHAT_PREFIX};
pub use webhook::{Outcome, ReceivedPost, Signature, WebhookReceiver};
