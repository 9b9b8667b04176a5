//! Checkpoints of runs with agents on threads: cuts (every agent's state right after the same
//! round, deposited without waiting for each other), each agent's last state, and what a
//! failure leaves behind (see `train_async_session`).

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::run::RunDir;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Which rounds end with a checkpoint cut: those that cross a multiple of `save_every` frames
/// (frames = rounds × the frames of one round of all agents), after the session's start and
/// before its last round (whose cut every agent deposits anyway).
#[derive(Clone, Copy)]
pub(super) struct SavePlan {
    pub(super) every: u64,
    pub(super) frames_per_round: u64,
    pub(super) after: u64,
    pub(super) before: u64,
}

impl SavePlan {
    pub(super) fn at(&self, rounds_done: u64) -> bool {
        let f = |k: u64| k.saturating_mul(self.frames_per_round) / self.every;
        self.every > 0 && rounds_done > self.after && rounds_done < self.before && f(rounds_done) > f(rounds_done - 1)
    }
}

/// The agents' checkpoint parts (only with a run folder): cuts at `save_every` rounds, and
/// each agent's state when its thread ends. Depositing never waits for other agents.
pub(super) struct Cuts {
    pub(super) agents: usize,
    /// Rounds completed → each agent's state right after that round, until all are in.
    pub(super) open: Mutex<BTreeMap<u64, Vec<Option<Checkpoint>>>>,
    /// The newest complete cut, and the rounds of the newest cut written to disk.
    pub(super) complete: Mutex<(Option<(u64, Arc<Vec<Checkpoint>>)>, Option<u64>)>,
    /// Each agent's state when its thread ended: after its last round, or after a failure the
    /// state it had then, when the failure struck between rounds' steps (not inside an update).
    pub(super) last: Mutex<Vec<Option<Checkpoint>>>,
}

impl Cuts {
    pub(super) fn new(agents: usize) -> Self {
        Cuts { agents, open: Mutex::new(BTreeMap::new()), complete: Mutex::new((None, None)), last: Mutex::new(vec![None; agents]) }
    }

    pub(super) fn deposit(&self, agent: usize, rounds: u64, part: Checkpoint) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let parts = open.entry(rounds).or_insert_with(|| vec![None; self.agents]);
        parts[agent] = Some(part);
        if parts.iter().all(Option::is_some) {
            let parts: Vec<Checkpoint> = open.remove(&rounds).into_iter().flatten().flatten().collect();
            // Agents deposit in round order, so every older cut is complete or abandoned.
            open.retain(|&k, _| k > rounds);
            drop(open);
            let mut complete = self.complete.lock().unwrap_or_else(|e| e.into_inner());
            if complete.0.as_ref().is_none_or(|(k, _)| *k < rounds) {
                complete.0 = Some((rounds, Arc::new(parts)));
            }
        }
    }

    pub(super) fn set_last(&self, agent: usize, part: Checkpoint) {
        self.last.lock().unwrap_or_else(|e| e.into_inner())[agent] = Some(part);
    }

    /// The newest complete cut if it is not written yet.
    pub(super) fn unwritten(&self) -> Option<(u64, Arc<Vec<Checkpoint>>)> {
        let complete = self.complete.lock().unwrap_or_else(|e| e.into_inner());
        complete.0.clone().filter(|(k, _)| complete.1 != Some(*k))
    }

    pub(super) fn mark_written(&self, rounds: u64) {
        self.complete.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(rounds);
    }

    /// Every agent's final state, when all threads deposited one.
    pub(super) fn finals(&self) -> Option<Vec<Checkpoint>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// After a failure: each agent's latest state among its last one, the cuts' parts and the
    /// resumed checkpoint; Err(agent) names an agent with none.
    pub(super) fn salvage(&self, resume: Option<&Checkpoint>) -> std::result::Result<Vec<Checkpoint>, usize> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let complete = self.complete.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
        (0..self.agents)
            .map(|r| {
                let mut candidates: Vec<Checkpoint> = last[r].iter().cloned().collect();
                candidates.extend(open.values().filter_map(|parts| parts[r].clone()));
                candidates.extend(complete.as_ref().map(|(_, parts)| parts[r].clone()));
                candidates.extend(resume.and_then(|ck| ck.agent_part(r).ok()));
                candidates.into_iter().max_by_key(|c| c.updates).ok_or(r)
            })
            .collect()
    }
}

/// What the run's checkpoint on disk holds, for messages.
#[derive(Clone, Debug)]
pub(super) struct OnDisk {
    pub(super) rounds: Vec<u64>,
    pub(super) frames: u64,
    /// A cut: every agent right after completing the same round (not a failure's salvage).
    pub(super) cut: bool,
}

impl OnDisk {
    pub(super) fn of(ck: &Checkpoint) -> Self {
        OnDisk { rounds: ck.agent_rounds(), frames: ck.frames, cut: ck.agent_updates.is_none() }
    }
}

/// Merges agents' parts and writes them as the run's checkpoint.
pub(super) fn write_parts(run: &RunDir, parts: &[Checkpoint], cut: bool) -> Result<OnDisk> {
    let ck = Checkpoint::merge_agents(parts, cut)?;
    ck.save(&run.checkpoint_path())?;
    Ok(OnDisk::of(&ck))
}

/// After a failure: leaves the best checkpoint there is (see `train_async_session`) and says
/// what it holds, where, and how to continue.
pub(super) fn failure_checkpoint(run: &RunDir, cuts: &Cuts, resume: Option<&Checkpoint>, lockstep: bool, on_disk: &mut Option<OnDisk>) -> String {
    let path = run.checkpoint_path();
    let resume_cmd = format!("continue with: gala-gpu train --resume {}", run.path().display());
    // A complete cut not written yet (the failure came before the writer's next look).
    let mut save_note = String::new();
    if let Some((k, parts)) = cuts.unwritten() {
        match write_parts(run, &parts, true) {
            Ok(saved) => *on_disk = Some(saved),
            Err(e) => save_note = format!(" (the cut of round {k} could not be written: {e})"),
        }
        cuts.mark_written(k);
    }
    let describe_cut = |d: &OnDisk| format!("round {}, frame {}", d.rounds.first().copied().unwrap_or(0), d.frames);
    if lockstep {
        if let Some(d) = on_disk.as_ref().filter(|d| d.cut) {
            return format!(
                "the last checkpoint ({}; every agent at the same round, so resuming it is exact) is kept in {}{save_note}; {resume_cmd}",
                describe_cut(d),
                path.display()
            );
        }
    }
    let salvage = cuts.salvage(resume).map_err(|r| format!("agent {r} left no state to save")).and_then(|parts| {
        let newer = on_disk.as_ref().is_none_or(|d| {
            let rounds: Vec<u64> = parts.iter().map(|c| c.updates).collect();
            rounds.iter().zip(&d.rounds).all(|(a, b)| a >= b) && rounds != d.rounds
        });
        if !newer {
            return Err("no agent got further than the checkpoint on disk".into());
        }
        write_parts(run, &parts, false).map_err(|e| e.to_string())
    });
    match (salvage, on_disk.as_ref()) {
        (Ok(saved), _) => {
            let text = format!(
                "each agent's state after its last completed round (rounds {:?}, frame {}) is saved in {}; it is not a cut of the run (agents stopped at different points, the round that failed counts as unmixed, messages in flight are lost), so the resumed run will not match an uninterrupted one; {resume_cmd}",
                saved.rounds,
                saved.frames,
                path.display()
            );
            *on_disk = Some(saved);
            text
        }
        (Err(why), Some(d)) => format!(
            "no newer checkpoint could be saved ({why}){save_note}; the last checkpoint ({}) is kept in {}; {resume_cmd}",
            if d.cut { describe_cut(d) } else { format!("rounds {:?}, frame {}", d.rounds, d.frames) },
            path.display()
        ),
        (Err(why), None) => format!("no checkpoint could be saved ({why}){save_note} and none had been saved yet (use --save-every to keep some)"),
    }
}
