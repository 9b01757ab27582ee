//! Which batch jobs may share UNet calls: [`ShareKey`] holds what the weights and the timesteps
//! depend on (sampler, schedule type, steps, size, the prompt's `<lora:...>` tags with their
//! strengths) and the number of `AND` parts (UNet rows per image); jobs with
//! equal keys on one model are run together, up to the engine's UNet batch of images.
//!
//! Prompts, negative prompts, seeds, CFG scale and batch size may differ within a group: each
//! image keeps its own text conditioning and noise. The generator still splits a group whose
//! prompts need different context lengths (a long prompt's extra 75-token chunks) into separate
//! UNet calls, so grouping never changes an image.

use crate::job::{Job, Sampler, Schedule, SigmaStyle};
use crate::prompt::LoraTag;

/// What jobs must agree on to share UNet calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareKey {
    sampler: Sampler,
    schedule: Schedule,
    zero_snr: bool,
    sigmas: SigmaStyle,
    steps: u32,
    width: u32,
    height: u32,
    /// The prompt's adapters with their strengths, schedules and block weights, in order.
    loras: Vec<LoraTag>,
    /// The prompt's `AND` parts: each is a UNet row per image, so the batch layout follows it.
    parts: usize,
}

impl ShareKey {
    /// The key of `job`; `None` when its prompt does not parse (it runs alone and fails there).
    pub fn of(job: &Job) -> Option<ShareKey> {
        // An image-to-image job starts from its own picture at its own step: it runs alone.
        if job.init.is_some() {
            return None;
        }
        let parsed = crate::prompt::parse(&job.prompt).ok()?;
        Some(ShareKey {
            sampler: job.sampler,
            schedule: job.schedule,
            zero_snr: job.zero_snr,
            sigmas: job.sigmas,
            steps: job.steps,
            width: job.width,
            height: job.height,
            parts: parsed.editing.as_ref().map_or(1, |e| e.parts.len()),
            loras: parsed.loras,
        })
    }
}

/// From `candidates` (in queue order, with their keys and image counts), the positions of the jobs
/// to run with the first one: those sharing its key, in order, while the images fit in `limit`. The
/// first is always taken; a job that would overflow the group is left for a later one.
pub fn pick(candidates: &[(Option<&ShareKey>, u32)], limit: usize) -> Vec<usize> {
    let Some(&(first, images)) = candidates.first() else {
        return Vec::new();
    };
    let mut taken = vec![0];
    let mut total = images as usize;
    let Some(key) = first else {
        return taken;
    };
    for (i, &(k, images)) in candidates.iter().enumerate().skip(1) {
        if total >= limit {
            break;
        }
        if k == Some(key) && total + images as usize <= limit {
            taken.push(i);
            total += images as usize;
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompt: &str, batch: u32) -> Job {
        Job {
            prompt: prompt.into(),
            negative: String::new(),
            sampler: Sampler::Euler,
            steps: 20,
            cfg: 7.0,
            width: 512,
            height: 512,
            seed: 1,
            batch,
            schedule: Schedule::default(),
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            init: None,
            hires: None,
        }
    }

    fn picked(jobs: &[Job], limit: usize) -> Vec<usize> {
        let keys: Vec<Option<ShareKey>> = jobs.iter().map(ShareKey::of).collect();
        let c: Vec<(Option<&ShareKey>, u32)> = keys
            .iter()
            .zip(jobs)
            .map(|(k, j)| (k.as_ref(), j.batch))
            .collect();
        pick(&c, limit)
    }

    #[test]
    fn prompts_seeds_negatives_and_cfg_may_differ_within_a_group() {
        let mut b = job("a cat, (detailed:1.2)", 1);
        b.seed = 99;
        b.negative = "blurry".into();
        b.cfg = 4.0;
        assert_eq!(picked(&[job("a fox", 1), b, job("a dog", 1)], 4), [0, 1, 2]);
    }

    #[test]
    fn what_the_weights_or_timesteps_depend_on_splits_groups() {
        let base = job("a fox <lora:ink:0.8>", 1);
        let mut steps = base.clone();
        steps.steps = 30;
        let mut size = base.clone();
        size.width = 768;
        let mut sampler = base.clone();
        sampler.sampler = Sampler::EulerA;
        let mut schedule = base.clone();
        schedule.schedule = Schedule::Karras;
        let others = [
            steps,
            size,
            sampler,
            schedule,
            job("a fox <lora:ink:0.7>", 1),
            job("a fox <lora:ink:0.8:unet=0.5>", 1),
            job("a fox <lora:ink:te=0.8@0,0@1>", 1),
            job("a fox <lora:paper:0.8>", 1),
            job("a fox", 1),
            job("a fox AND snow <lora:ink:0.8>", 1),
        ];
        for o in others {
            assert_eq!(picked(&[base.clone(), o.clone()], 8), [0], "{o:?}");
        }
        // The same tag in another prompt shares the group, edits and alternations too.
        let edited = job("a [dog|cat] <lora:ink:0.8>", 1);
        assert_eq!(picked(&[base.clone(), edited], 8), [0, 1]);
        assert_eq!(picked(&[base, job("a dog <lora:ink:0.8>", 1)], 8), [0, 1]);
        // As many AND parts: one UNet row per part for every image of the group.
        let and = |p: &str| job(p, 1);
        let pair = [
            and("a AND b <lora:ink:0.8>"),
            and("c :2 AND [d|e] <lora:ink:0.8>"),
        ];
        assert_eq!(picked(&pair, 8), [0, 1]);
    }

    #[test]
    fn a_group_holds_at_most_the_limit_of_images_and_keeps_queue_order() {
        let jobs = [
            job("a", 2),
            job("b <lora:x>", 1),
            job("c", 3),
            job("d", 1),
            job("e", 1),
            job("f", 1),
        ];
        // a (2) + d (1) + e (1) = 4; c (3) would overflow, b is incompatible.
        assert_eq!(picked(&jobs, 4), [0, 3, 4]);
        // A job as large as the limit, or larger, goes alone.
        assert_eq!(picked(&[job("a", 4), job("b", 1)], 4), [0]);
        assert_eq!(picked(&[job("a", 9), job("b", 1)], 4), [0]);
        // Limit 1: one job at a time, as without grouping.
        assert_eq!(picked(&jobs, 1), [0]);
        // A prompt that does not parse runs alone.
        assert_eq!(picked(&[job("a <lora:", 1), job("a <lora:", 1)], 4), [0]);
    }
}
