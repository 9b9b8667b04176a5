//! Gossip mixing and the consensus distance on the parameter arena [agents][P].
//!
//! Mixing (GALA's released code, gpu_gossip_buffer.py): every sender writes θ_s/(k+1) as its
//! message; receiver r computes θ_r ← θ_r/(k+1) + Σ_{s ∈ in(r)} θ_s/(k+1). All messages are read
//! from the pre-round snapshot, so no agent sees a half-mixed peer.
//! Consensus distance: max_r ‖θ_r − θ̄‖₂ / ‖θ̄‖₂ with θ̄ the mean over agents (f64 accumulation).

use rayon::prelude::*;

/// One lock-step round: `in_peers[r]` lists whose parameters agent r mixes in (all of equal
/// length k; an empty list leaves r unchanged).
///
/// Runs over blocks of `MIX_BLOCK` parameter indices: each task copies its block of every
/// agent to a snapshot that stays in cache and mixes the block from it, so the arena is read
/// and written once (a whole-arena snapshot would be written and read again on top). Each
/// element's arithmetic is `mix_one`'s, so the result is the same bits.
pub fn mix(params: &mut [f32], agents: usize, in_peers: &[Vec<usize>]) {
    let p = params.len() / agents;
    assert_eq!(params.len(), agents * p, "mix: arena size");
    assert_eq!(in_peers.len(), agents, "mix: one peer list per agent");
    if p == 0 || in_peers.iter().all(|peers| peers.is_empty()) {
        return;
    }
    // blocks[b][r]: agent r's slice of block b.
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..p.div_ceil(MIX_BLOCK)).map(|_| Vec::with_capacity(agents)).collect();
    for theta in params.chunks_mut(p) {
        for (b, piece) in theta.chunks_mut(MIX_BLOCK).enumerate() {
            blocks[b].push(piece);
        }
    }
    blocks.into_par_iter().for_each_init(Vec::new, |snapshot: &mut Vec<f32>, mut pieces| {
        let len = pieces[0].len();
        snapshot.clear();
        for piece in &pieces {
            snapshot.extend_from_slice(piece);
        }
        for (r, theta) in pieces.iter_mut().enumerate() {
            let messages: Vec<&[f32]> = in_peers[r].iter().map(|&s| &snapshot[s * len..(s + 1) * len]).collect();
            mix_one(theta, &messages);
        }
    });
}

/// Parameter indices per `mix` task: 4 agents' blocks (64 KB) fit in L2 with room to spare.
const MIX_BLOCK: usize = 1 << 12;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked `mix` gives the bits of the plain definition (a whole-arena snapshot, then
    /// `mix_one` per agent) for parameter counts that do and do not divide the block, one and
    /// two in-peers, and an agent without peers.
    #[test]
    fn blocked_mix_is_the_whole_snapshot_mix_bit_for_bit() {
        let topologies: [&[&[usize]]; 3] = [&[&[1], &[0]], &[&[1, 2], &[2, 0], &[0, 1]], &[&[2], &[], &[0], &[1]]];
        for p in [1usize, MIX_BLOCK - 1, MIX_BLOCK, 2 * MIX_BLOCK + 37] {
            for peers in topologies {
                let agents = peers.len();
                let in_peers: Vec<Vec<usize>> = peers.iter().map(|l| l.to_vec()).collect();
                let arena: Vec<f32> = (0..agents * p).map(|i| ((i * 2654435761) % 1000) as f32 / 37.0 - 13.0).collect();
                let mut want = arena.clone();
                for (r, theta) in want.chunks_mut(p).enumerate() {
                    let messages: Vec<&[f32]> = in_peers[r].iter().map(|&s| &arena[s * p..(s + 1) * p]).collect();
                    mix_one(theta, &messages);
                }
                let mut got = arena.clone();
                mix(&mut got, agents, &in_peers);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "P={p} peers={peers:?}");
                assert_ne!(got, arena, "P={p} peers={peers:?}: nothing mixed");
            }
        }
    }
}
