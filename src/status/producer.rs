//! The producer part of `status`: what its state file says, read with the decoder of the
//! configured capture mode (each mode writes its own first lines, see [`crate::source::Source`]).

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Capture, Config};
use crate::error::Result;
use crate::producer::state::{self, State};
use crate::source::logical::{self, LogicalSource, LogicalStatus};
use crate::source::poll::{self, PollSource, PollStatus};

/// The producer, from its state file.
#[derive(Debug, Serialize)]
pub struct ProducerStatus {
    /// The state file.
    pub state_file: String,
    /// Messages published so far (the last sequence number).
    pub published: u64,
    /// Whether a producer of this configuration runs (`None`: PostgreSQL, where its writer
    /// lock is seen, did not answer).
    pub running: Option<bool>,
    /// What the state file says, per capture mode.
    #[serde(flatten)]
    pub capture: CaptureStatus,
}

/// Where capture stands, per mode; `capture` names the mode in the JSON form.
#[derive(Debug, Serialize)]
#[serde(tag = "capture", rename_all = "lowercase")]
pub enum CaptureStatus {
    /// `postgres.capture: poll`.
    Poll(PollStatus),
    /// `postgres.capture: logical`.
    Logical(LogicalStatus),
}

/// Reads the state file with the decoder of `postgres.capture`; in poll mode `client` (when
/// PostgreSQL answered) gives the orders not yet published.
pub async fn read(cfg: &Config, client: Option<&Client>) -> Result<ProducerStatus> {
    let path = state::path(&cfg.streaming.last_processed_timestamp_location);
    let state_file = path.display().to_string();
    match cfg.postgres.capture {
        Capture::Logical => {
            let saved =
                state::load::<LogicalSource>(&path)?.unwrap_or_else(State::beginning::<LogicalSource>);
            Ok(ProducerStatus {
                state_file,
                published: saved.seq,
                running: None,
                capture: CaptureStatus::Logical(logical::status(&saved.position)),
            })
        }
        Capture::Poll => {
            let saved = state::load::<PollSource>(&path)?.unwrap_or_else(State::beginning::<PollSource>);
            let poll = poll::status(&cfg.postgres.table, client, &saved.position).await?;
            Ok(ProducerStatus {
                state_file,
                published: saved.seq,
                running: None,
                capture: CaptureStatus::Poll(poll),
            })
        }
    }
}

impl fmt::Display for ProducerStatus {
    /// The producer part of `status`: two lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.capture {
            CaptureStatus::Poll(_) => "poll",
            CaptureStatus::Logical(_) => "logical",
        };
        writeln!(f, "{:<11} state {} (capture {mode})", "Producer", self.state_file)?;
        match &self.capture {
            CaptureStatus::Poll(p) => write!(f, "{:<11} published {}   {p}", "", self.published),
            CaptureStatus::Logical(l) => write!(f, "{:<11} published {} messages   {l}", "", self.published),
        }
    }
}
