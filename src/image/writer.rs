//! A writer thread for finished images: [`Writer::save`] hands an image over and returns at once
//! (unless [`Writer::QUEUE`] images are already waiting), so the thread that made it goes on with
//! the next one while this one is PNG-encoded and written. Each save's outcome goes to the callback
//! given to [`Writer::spawn`], in the order given; one failed write does not stop the others.

use super::png::{save_png, PngError, SavedImage};
use crate::job::RgbImage;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// One image to save, with what its PNG chunks hold; `tag` comes back with the outcome.
#[derive(Debug, Clone)]
pub struct Save {
    pub tag: u64,
    pub dir: PathBuf,
    pub image: RgbImage,
    pub seed: u64,
    pub parameters: String,
    pub stipple_json: String,
}

/// The outcome of one [`Save`].
pub type Saved = (u64, Result<SavedImage, PngError>);

/// The writer thread; dropping it waits for every queued image to be written.
pub struct Writer {
    queue: Option<SyncSender<Save>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Images waiting to be written at most: enough to cover a slow disk for a moment, bounded so
    /// that a disk slower than sampling holds memory for a few images, not a whole batch.
    pub const QUEUE: usize = 8;

    /// Starts the thread; `on_saved` sees each outcome, on the writer thread.
    pub fn spawn(on_saved: impl Fn(Saved) + Send + 'static) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel::<Save>(Self::QUEUE);
        let thread = std::thread::Builder::new()
            .name("stipple-writer".into())
            .spawn(move || {
                for s in rx {
                    let r = save_png(&s.dir, &s.image, s.seed, &s.parameters, &s.stipple_json);
                    on_saved((s.tag, r));
                }
            })?;
        Ok(Writer {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `save`; blocks only while the queue is full. Gives it back when the thread is gone.
    pub fn save(&self, save: Save) -> Result<(), Save> {
        match &self.queue {
            Some(q) => q.send(save).map_err(|e| e.0),
            None => Err(save),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(v: u8) -> RgbImage {
        RgbImage {
            width: 4,
            height: 2,
            pixels: (0..24).map(|i| v.wrapping_add(i)).collect(),
        }
    }

    fn save(tag: u64, dir: PathBuf) -> Save {
        Save {
            tag,
            dir,
            image: image(tag as u8 * 40),
            seed: tag,
            parameters: format!("a fox\nSteps: 20, Seed: {tag}"),
            stipple_json: format!("{{\"seed\":{tag}}}"),
        }
    }

    #[test]
    fn files_equal_those_saved_directly_and_a_failed_write_stops_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let direct = tmp.path().join("direct");
        let threaded = tmp.path().join("threaded");
        // A folder that cannot be made: a file stands where it should be.
        let blocked = tmp.path().join("blocked");
        std::fs::write(&blocked, b"not a folder").unwrap();
        let (tx, results) = std::sync::mpsc::channel();
        let writer = Writer::spawn(move |r| tx.send(r).unwrap()).unwrap();
        for tag in 0..5 {
            let dir = if tag == 2 {
                blocked.clone()
            } else {
                threaded.clone()
            };
            assert!(writer.save(save(tag, dir)).is_ok());
        }
        drop(writer);
        let got: Vec<Saved> = results.iter().collect();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        for (tag, r) in got {
            if tag == 2 {
                let e = r.expect_err("the blocked folder fails");
                assert!(e.to_string().contains("blocked"), "{e}");
                continue;
            }
            let s = save(tag, direct.clone());
            let want = save_png(&s.dir, &s.image, s.seed, &s.parameters, &s.stipple_json).unwrap();
            let saved = r.unwrap();
            assert_eq!(
                std::fs::read(&saved.path).unwrap(),
                std::fs::read(&want.path).unwrap(),
                "image {tag}"
            );
        }
    }
}
