//! Progress of long commands on standard error: a bar redrawn in place on a terminal, plain
//! lines (fewer of them) when standard error is a file or a pipe, so logs stay readable.

use std::io::{IsTerminal, Write};

/// One step of a long job: what is happening and, when it is counted, how far along it is.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub what: &'a str,
    /// `(done, total)` for counted work, e.g. timed repetitions.
    pub count: Option<(usize, usize)>,
}

impl<'a> Step<'a> {
    /// A step without a count.
    pub fn phase(what: &'a str) -> Self {
        Step { what, count: None }
    }
}

/// Writes steps to standard error under a `[tag]` prefix.
pub struct Reporter {
    tag: &'static str,
    tty: bool,
    /// A bar is drawn on the current line (to be cleared before the next plain line).
    drawn: bool,
}

const BAR_WIDTH: usize = 24;

impl Reporter {
    pub fn new(tag: &'static str) -> Self {
        Reporter {
            tag,
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    /// Reports one step.
    pub fn step(&mut self, s: Step) {
        let mut err = std::io::stderr().lock();
        match (s.count, self.tty) {
            (Some((done, total)), true) => {
                let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(0);
                let bar: String = (0..BAR_WIDTH)
                    .map(|i| if i < filled { '#' } else { '-' })
                    .collect();
                let _ = write!(
                    err,
                    "\r\x1b[2K[{}] {} [{bar}] {done}/{total}",
                    self.tag, s.what
                );
                let _ = err.flush();
                self.drawn = done < total;
                if !self.drawn {
                    let _ = writeln!(err);
                }
            }
            // Without a terminal: the first and last of a count, and every phase.
            (Some((done, total)), false) => {
                if done == 0 || done == total {
                    let _ = writeln!(err, "[{}] {} {done}/{total}", self.tag, s.what);
                }
            }
            (None, _) => {
                if self.drawn {
                    let _ = write!(err, "\r\x1b[2K");
                    self.drawn = false;
                }
                let _ = writeln!(err, "[{}] {}", self.tag, s.what);
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}
