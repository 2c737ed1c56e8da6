//! Webhook sources: who sent a delivery and whether it is fresh.

pub mod verify;
