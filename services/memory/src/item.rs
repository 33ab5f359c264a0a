//! What a memory is, what selects memories, and keyword scoring — shared by
//! every tier and backend.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What kind of thing a memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A fact.
    Fact,
    /// A conversation turn.
    Turn,
    /// A task result.
    Result,
    /// Anything else.
    Note,
}

impl Kind {
    /// Its name in payloads and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fact => "fact",
            Kind::Turn => "turn",
            Kind::Result => "result",
            Kind::Note => "note",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "fact" => Kind::Fact,
            "turn" => Kind::Turn,
            "result" => Kind::Result,
            "note" => Kind::Note,
            _ => return None,
        })
    }
}

/// A stored memory. Times are milliseconds since the Unix epoch, so every
/// backend (process, Redis, Qdrant payloads) stores them the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Its id (a UUID, also the vector store's point id).
    pub id: String,
    /// The team that stored it.
    pub team: String,
    /// The agent that stored it.
    pub agent: String,
    /// Its session; empty for none.
    pub session_id: String,
    /// Its kind.
    pub kind: Kind,
    /// The text.
    pub text: String,
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    /// When it was stored (ms).
    pub created_ms: u64,
    /// When it stops being served (ms), if it does.
    pub expires_ms: Option<u64>,
}

impl Item {
    /// When it was stored.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    /// When it expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Whether it is past its own expiry at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// A memory with its embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The memory.
    pub item: Item,
    /// Its embedding (unit length).
    pub vector: Vec<f32>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which memories a query considers; empty fields match all. The tenant is
/// never part of a filter: every tier call takes it separately, from the
/// caller's token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Team.
    pub team: String,
    /// Agent.
    pub agent: String,
    /// Session.
    pub session_id: String,
    /// Kinds; empty for all.
    pub kinds: Vec<Kind>,
    /// Stored at or after (ms).
    pub after_ms: Option<u64>,
    /// Stored before (ms).
    pub before_ms: Option<u64>,
}

impl Filter {
    /// Whether `item` is selected.
    pub fn matches(&self, item: &Item) -> bool {
        (self.team.is_empty() || item.team == self.team)
            && (self.agent.is_empty() || item.agent == self.agent)
            && (self.session_id.is_empty() || item.session_id == self.session_id)
            && (self.kinds.is_empty() || self.kinds.contains(&item.kind))
            && self.after_ms.is_none_or(|a| item.created_ms >= a)
            && self.before_ms.is_none_or(|b| item.created_ms < b)
    }

    /// Whether it selects everything (a scope that would forget the whole tenant).
    pub fn is_everything(&self) -> bool {
        *self == Filter::default()
    }
}

/// Lower-case words of two or more letters or digits, without common stop words.
pub fn words(text: &str) -> HashSet<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "with", "that", "this", "are", "was", "from", "into", "about", "of",
        "to", "in", "on", "is", "it", "an", "as", "by", "at", "or", "be",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// The share of `query`'s words found in `text`, 0 to 1.
pub fn keyword_score(query: &HashSet<String>, text: &str) -> f64 {
    if query.is_empty() {
        return 0.0;
    }
    let found = words(text);
    query.intersection(&found).count() as f64 / query.len() as f64
}

/// Dot product: the cosine similarity of two unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
