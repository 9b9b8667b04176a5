//! The algorithm above the backend: GALA's gossip graphs and the training loop.

pub mod async_gossip;
pub mod health;
pub mod topology;
pub mod trainer;

pub use topology::{GossipGraph, Topology};
pub use trainer::{NoProgress, ProgressSink, Trainer};
