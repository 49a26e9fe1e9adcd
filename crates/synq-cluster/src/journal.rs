//! A session's journal in a JetStream stream: one subject per session, each message whole
//! journal records (the local journal's format, `synq_reflector::journal`), appended by
//! the session's owner only.
//!
//! Fencing: every append names the subject's last sequence this node knows
//! (`Nats-Expected-Last-Subject-Sequence`). A claim first appends an empty fence message,
//! so from then on a former owner that still believes in its lease (paused past it, cut
//! off) cannot append: its write fails and its session stops before sending the batch.
//!
//! Compaction (a snapshot's): the image is appended as messages marked `Synq-Image: k/n`,
//! then everything before it is purged. Replay starts at the last complete image, so a
//! crash between the two steps, or in the middle of the image, loses nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures_util::StreamExt;
use synq_reflector::journal::{self, JournalError, Records, Recovered, SessionJournal};

use crate::Stats;

const IMAGE_HEADER: &str = "Synq-Image";
const FENCE_HEADER: &str = "Synq-Fence";

/// How long replaying a session's journal may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Another node appended between this node's replay and its fence.
    #[error("another node appended to the session's journal")]
    Fenced,
    #[error("{0}")]
    Nats(String),
}

pub(crate) struct StreamJournal {
    js: Context,
    stream: Stream,
    subject: String,
    /// The subject's last sequence this node wrote or read.
    last: u64,
    /// The largest payload of one message.
    max_chunk: usize,
    stats: Arc<Stats>,
}

/// One message of a session's subject, as replay needs it.
struct Part {
    /// `Some((k, n))`: part `k` of an `n`-part image.
    image: Option<(usize, usize)>,
    payload: Bytes,
}

impl StreamJournal {
    /// Replays the session's journal and fences it for this node (`fence`: who, in the
    /// fence message, for operators reading the stream).
    pub(crate) async fn open(
        js: Context,
        stream: Stream,
        subject: String,
        max_chunk: usize,
        fence: &str,
        stats: Arc<Stats>,
    ) -> Result<(StreamJournal, Recovered), OpenError> {
        let nats = |e: &dyn std::fmt::Display| OpenError::Nats(e.to_string());
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(nats(&e)),
        };
        let parts = if last == 0 {
            Vec::new()
        } else {
            tokio::time::timeout(REPLAY_TIMEOUT, read(&stream, &subject, last))
                .await
                .map_err(|_| OpenError::Nats("replay timed out".into()))??
        };
        let bytes = assemble(&parts);
        let (recovered, _) = journal::replay(&bytes);
        let mut j = StreamJournal {
            js,
            stream,
            subject,
            last,
            max_chunk,
            stats,
        };
        let fence = PublishMessage::build()
            .payload(Bytes::new())
            .header(FENCE_HEADER, fence);
        match j.publish(fence).await {
            Ok(()) => Ok((j, recovered)),
            Err(JournalError::Lost(why)) if why.contains("wrong last sequence") => {
                Err(OpenError::Fenced)
            }
            Err(e) => Err(nats(&e)),
        }
    }

    /// Appends one message after the last this node knows; fails if anyone else appended.
    async fn publish(&mut self, msg: PublishMessage) -> Result<(), JournalError> {
        let started = Instant::now();
        let lost = |e: &dyn std::fmt::Display| JournalError::Lost(e.to_string());
        let msg = msg.expected_last_subject_sequence(self.last);
        let ack = self
            .js
            .send_publish(self.subject.clone(), msg)
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => {
                    lost(&"a record larger than the cluster's largest message")
                }
                _ => lost(&e),
            })?
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::WrongLastSequence => {
                    lost(&"wrong last sequence: another node appended")
                }
                _ => lost(&e),
            })?;
        self.last = ack.sequence;
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats
            .append_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Reads the subject's messages up to `last`, in order.
async fn read(stream: &Stream, subject: &str, last: u64) -> Result<Vec<Part>, OpenError> {
    let nats = |e: &dyn std::fmt::Display| OpenError::Nats(e.to_string());
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
    let mut parts = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| nats(&e))?;
        let seq = m.info().map_err(|e| nats(&e))?.stream_sequence;
        let image = m
            .headers
            .as_ref()
            .and_then(|h| h.get(IMAGE_HEADER))
            .and_then(|v| parse_part(v.as_str()));
        parts.push(Part {
            image,
            payload: m.payload.clone(),
        });
        if seq >= last {
            break;
        }
    }
    Ok(parts)
}

fn parse_part(v: &str) -> Option<(usize, usize)> {
    let (k, n) = v.split_once('/')?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

/// The journal bytes the parts hold: from the last complete image on, without the parts
/// of images left incomplete (their writer died in the middle).
fn assemble(parts: &[Part]) -> Vec<u8> {
    let complete_at = |i: usize| -> Option<usize> {
        let (1, n) = parts[i].image? else {
            return None;
        };
        let all = (0..n).all(|k| parts.get(i + k).and_then(|p| p.image) == Some((k + 1, n)));
        all.then_some(n)
    };
    let mut start = 0;
    for i in 0..parts.len() {
        if complete_at(i).is_some() {
            start = i;
        }
    }
    let mut out = Vec::new();
    let mut i = start;
    while i < parts.len() {
        match (parts[i].image, complete_at(i)) {
            (None, _) => {
                out.extend_from_slice(&parts[i].payload);
                i += 1;
            }
            (Some(_), Some(n)) => {
                for p in &parts[i..i + n] {
                    out.extend_from_slice(&p.payload);
                }
                i += n;
            }
            (Some(_), None) => i += 1,
        }
    }
    out
}

#[async_trait::async_trait]
impl SessionJournal for StreamJournal {
    async fn append(&mut self, records: &mut Records, _now: Instant) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let chunks: Vec<Bytes> = journal::record_chunks(records.bytes(), self.max_chunk)
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        records.clear();
        for chunk in chunks {
            self.publish(PublishMessage::build().payload(chunk)).await?;
        }
        Ok(())
    }

    async fn replace(&mut self, image: Vec<u8>) -> Result<(), JournalError> {
        let chunks = journal::record_chunks(&image, self.max_chunk);
        let n = chunks.len();
        let mut first = None;
        for (k, chunk) in chunks.into_iter().enumerate() {
            let msg = PublishMessage::build()
                .payload(Bytes::copy_from_slice(chunk))
                .header(IMAGE_HEADER, format!("{}/{n}", k + 1).as_str());
            self.publish(msg).await?;
            first.get_or_insert(self.last);
        }
        // What came before the image is no longer needed; if this fails, replay still
        // starts at the image.
        if let Some(first) = first
            && let Err(e) = self
                .stream
                .purge()
                .filter(&self.subject)
                .sequence(first)
                .await
        {
            tracing::warn!(subject = %self.subject, error = %e, "cannot purge a compacted session journal");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(image: Option<(usize, usize)>, payload: &'static [u8]) -> Part {
        Part {
            image,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn replay_starts_at_the_last_complete_image_and_skips_torn_ones() {
        let parts = vec![
            part(None, b"old"),
            part(Some((1, 2)), b"I1"),
            part(Some((2, 2)), b"I2"),
            part(None, b"a"),
            // An image whose writer died after its first part.
            part(Some((1, 3)), b"T1"),
            part(None, b""),
            part(None, b"b"),
        ];
        assert_eq!(assemble(&parts), b"I1I2ab");
        assert_eq!(assemble(&[part(None, b"x"), part(None, b"y")]), b"xy");
    }
}
