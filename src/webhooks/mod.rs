//! Webhooks (issue #13 §2, Standard Webhooks v1): the pure rules so far,
//! signing ([`signing`]) and what follows a delivery attempt ([`retry`]).
//! Storage, the deliverer and the API build on them.

pub mod retry;
pub mod signing;
