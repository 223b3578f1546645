//! The cleaner checkpoint file (`cleaner-offset-checkpoint`): where the dirty part of the log
//! starts, and when the next kept tombstone's delete horizon passes.
//!
//! Decimal text, one value a line: the first dirty offset, then the earliest delete horizon
//! (ms) of the cleaned part still ahead of the last pass, or -1 for none. A file with only the
//! first line (written before the horizon was kept) reads as a horizon already passed, so the
//! cleaner looks at the log once more; a missing or unreadable file reads as everything dirty.

/// What the cleaner keeps between passes and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CleanerCheckpoint {
    /// Records below it were cleaned.
    pub first_dirty_offset: i64,
    /// The earliest delete horizon of a tombstone kept in the cleaned part, if any: once it
    /// passes, a pass is due even with nothing dirty.
    pub tombstone_horizon_ms: Option<i64>,
}

impl CleanerCheckpoint {
    /// A log never cleaned.
    pub(crate) const NONE: CleanerCheckpoint = CleanerCheckpoint {
        first_dirty_offset: 0,
        tombstone_horizon_ms: None,
    };

    pub(crate) fn encode(&self) -> String {
        format!(
            "{}\n{}\n",
            self.first_dirty_offset,
            self.tombstone_horizon_ms.unwrap_or(-1)
        )
    }

    /// The checkpoint in `text`, or `None` when it does not parse.
    pub(crate) fn decode(text: &str) -> Option<CleanerCheckpoint> {
        let mut lines = text.split_whitespace();
        let first_dirty_offset = lines.next()?.parse::<i64>().ok()?;
        let tombstone_horizon_ms = match lines.next() {
            None => Some(i64::MIN),
            Some(horizon) => match horizon.parse::<i64>().ok()? {
                -1 => None,
                horizon => Some(horizon),
            },
        };
        if lines.next().is_some() || first_dirty_offset < 0 {
            return None;
        }
        Some(CleanerCheckpoint {
            first_dirty_offset,
            tombstone_horizon_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_the_one_line_form_as_due() {
        for checkpoint in [
            CleanerCheckpoint::NONE,
            CleanerCheckpoint {
                first_dirty_offset: 42,
                tombstone_horizon_ms: Some(1_700_000_000_000),
            },
        ] {
            assert_eq!(
                CleanerCheckpoint::decode(&checkpoint.encode()),
                Some(checkpoint)
            );
        }
        assert_eq!(
            CleanerCheckpoint::decode("17\n"),
            Some(CleanerCheckpoint {
                first_dirty_offset: 17,
                tombstone_horizon_ms: Some(i64::MIN)
            })
        );
        for bad in ["", "x", "1\ny", "1\n2\n3", "-5\n-1"] {
            assert_eq!(CleanerCheckpoint::decode(bad), None, "{bad:?}");
        }
    }
}
