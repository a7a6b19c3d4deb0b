//! Webhooks (issue #13 §2, Standard Webhooks v1): events delivered to
//! URLs, signed, retried, from any replica.
//!
//! - [`signing`]: `whsec_` secrets and `webhook-signature` (pure);
//! - [`retry`]: what follows an attempt (pure);
//! - [`matching`]: which webhooks get an event, and the body (pure);
//! - [`send`]: one attempt over HTTP under the address rules;
//! - [`deliverer`]: the loops on every replica that queue deliveries from
//!   the events and send them under leases;
//! - [`config`]: the `--webhook-*` flags.

pub mod config;
pub mod definition;
pub mod deliverer;
pub mod matching;
pub mod retry;
pub mod send;
pub mod signing;

pub use deliverer::{Deliverer, DelivererConfig};
