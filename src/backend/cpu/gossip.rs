//! Gossip mixing and the consensus distance on the parameter arena [agents][P].
//!
//! Mixing (GALA's released code, gpu_gossip_buffer.py): every sender writes θ_s/(k+1) as its
//! message; receiver r computes θ_r ← θ_r/(k+1) + Σ_{s ∈ in(r)} θ_s/(k+1). All messages are read
//! from the pre-round snapshot, so no agent sees a half-mixed peer.
//! Consensus distance: max_r ‖θ_r − θ̄‖₂ / ‖θ̄‖₂ with θ̄ the mean over agents (f64 accumulation).

use rayon::prelude::*;

/// One lock-step round: `in_peers[r]` lists whose parameters agent r mixes in (all of equal
/// length k; an empty list leaves r unchanged).
pub fn mix(params: &mut [f32], agents: usize, in_peers: &[Vec<usize>]) {
    let p = params.len() / agents;
    assert_eq!(params.len(), agents * p, "mix: arena size");
    assert_eq!(in_peers.len(), agents, "mix: one peer list per agent");
    let snapshot = params.to_vec();
    params.par_chunks_mut(p).enumerate().for_each(|(r, theta)| {
        let messages: Vec<&[f32]> = in_peers[r].iter().map(|&s| &snapshot[s * p..(s + 1) * p]).collect();
        mix_one(theta, &messages);
    });
}

/// θ ← θ·w + Σ_m msg_m·w with w = 1/(len+1), accumulated in message order. The single
/// definition of the mixing arithmetic, shared by lock-step and asynchronous gossip so the two
/// agree bit for bit.
pub fn mix_one(theta: &mut [f32], messages: &[&[f32]]) {
    if messages.is_empty() {
        return;
    }
    let w = 1.0 / (messages.len() as f32 + 1.0);
    for (i, t) in theta.iter_mut().enumerate() {
        let mut acc = *t * w;
        for m in messages {
            acc += m[i] * w;
        }
        *t = acc;
    }
}

/// max_r ‖θ_r − θ̄‖ / ‖θ̄‖ (0 for a single agent or identical agents).
pub fn consensus_distance(params: &[f32], agents: usize) -> f64 {
    let p = params.len() / agents;
    assert_eq!(params.len(), agents * p, "consensus_distance: arena size");
    if agents < 2 {
        return 0.0;
    }
    const CHUNK: usize = 1 << 14;
    // Per chunk: (‖θ̄‖² part, per-agent ‖θ_r − θ̄‖² parts), summed in chunk order.
    let parts: Vec<(f64, Vec<f64>)> = (0..p.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let range = c * CHUNK..((c + 1) * CHUNK).min(p);
            let mut mean_sq = 0f64;
            let mut dev = vec![0f64; agents];
            for i in range {
                let mean = (0..agents).map(|r| params[r * p + i] as f64).sum::<f64>() / agents as f64;
                mean_sq += mean * mean;
                for (r, d) in dev.iter_mut().enumerate() {
                    let x = params[r * p + i] as f64 - mean;
                    *d += x * x;
                }
            }
            (mean_sq, dev)
        })
        .collect();
    let mean_norm = parts.iter().map(|p| p.0).sum::<f64>().sqrt();
    let max_dev = (0..agents).map(|r| parts.iter().map(|p| p.1[r]).sum::<f64>().sqrt()).fold(0.0, f64::max);
    if mean_norm == 0.0 {
        return if max_dev == 0.0 { 0.0 } else { f64::INFINITY };
    }
    max_dev / mean_norm
}
