//! Local emulators of the platforms herald publishes to, for integration
//! tests and `herald demo`. Each emulator is a module that runs a real HTTP
//! server on loopback, records what it received, and injects the faults of
//! [`faults`] on demand, in-process or through its `/_sandbox/*` control API.

pub mod faults;
mod server;
pub mod tieba;
pub mod webhook;
pub mod wechat;

pub use faults::{Fault, FaultSpec, LatencySpec, StatusFault};
pub use webhook::{Outcome, ReceivedPost, Signature, WebhookReceiver};
