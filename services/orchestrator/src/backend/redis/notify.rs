//! Watchers wait for a task's events on one Redis subscription per replica,
//! not on a connection each.
//!
//! The scripts that append events (`cas.lua`, `record.lua`) also `PUBLISH`
//! the sequence they reached on a channel named after the task's event
//! stream. A replica keeps one pub/sub connection ([`Notifier`]); a watcher
//! of a task registers before it reads ([`Notifier::watch`]), so an event
//! appended after that read wakes it, however many watchers the replica
//! serves: each costs a map entry and a subscription, not a connection or a
//! poll.
//!
//! Messages can be lost (the connection drops, Redis restarts). So a
//! watcher never relies on one: after a reconnection every watcher is woken
//! to read again, and a wait is still bounded by its long-poll time, after
//! which the caller reads anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, mpsc, oneshot};

/// A channel stays subscribed this long after its last watcher left, so a
/// watch loop's next wait finds it subscribed.
const LINGER: Duration = Duration::from_secs(2);
/// How often the hub unsubscribes lingering channels.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);
/// Pause before reconnecting after the subscription connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// How long a watcher waits for its subscription to be confirmed before it
/// falls back to a bounded pause.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One replica's subscription to task event channels.
pub(super) struct Notifier {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
}

struct Channel {
    watchers: usize,
    /// Set by the hub once Redis confirmed the subscription on the current
    /// connection.
    subscribed: bool,
    /// When the last watcher left (None while watched).
    idle_since: Option<Instant>,
    notify: Arc<Notify>,
}

enum Command {
    Subscribe(String, oneshot::Sender<bool>),
}

/// A watcher's registration; it wakes on the next message of its channel
/// (or a reconnection) after it was taken.
pub(super) struct Watch {
    shared: Arc<Shared>,
    channel: String,
    notify: Arc<Notify>,
    /// Whether Redis confirmed the subscription, so a message will come.
    pub(super) live: bool,
}

impl Notifier {
    /// Starts the replica's subscription hub on `client`'s server.
    pub(super) fn start(client: redis::Client) -> Self {
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(hub(client, Arc::downgrade(&shared), rx));
        Self { shared, commands }
    }

    /// Registers a watcher of `channel` and waits until its subscription is
    /// confirmed (or known not to be: then `live` is false, and the caller
    /// must not count on a message).
    pub(super) async fn watch(&self, channel: &str) -> Watch {
        let (notify, subscribed) = {
            let mut channels = self.shared.lock();
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    watchers: 0,
                    subscribed: false,
                    idle_since: None,
                    notify: Arc::new(Notify::new()),
                });
            entry.watchers += 1;
            entry.idle_since = None;
            (entry.notify.clone(), entry.subscribed)
        };
        let mut watch = Watch {
            shared: self.shared.clone(),
            channel: channel.to_owned(),
            notify,
            live: subscribed,
        };
        if !subscribed {
            let (tx, rx) = oneshot::channel();
            if self
                .commands
                .send(Command::Subscribe(channel.to_owned(), tx))
                .is_ok()
            {
                watch.live = matches!(
                    tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await,
                    Ok(Ok(true))
                );
            }
        }
        watch
    }

    /// Channels held at the moment (watched or lingering), for tests.
    #[cfg(test)]
    pub(super) fn channels(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Watch {
    /// A future that completes on the next message of the channel. Enable it
    /// (`Notified::enable`) before reading, so nothing published after the
    /// read is missed.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut channels = self.shared.lock();
        if let Some(entry) = channels.get_mut(&self.channel) {
            entry.watchers = entry.watchers.saturating_sub(1);
            if entry.watchers == 0 {
                entry.idle_since = Some(Instant::now());
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every watcher: after a reconnection messages may have been
    /// missed, so each reads again.
    fn wake_all(&self) {
        for entry in self.lock().values() {
            entry.notify.notify_waiters();
        }
    }
}

/// Owns the pub/sub connection: subscribes in the order watchers asked,
/// routes messages to their watchers, unsubscribes channels nobody watches,
/// and reconnects (resubscribing and waking everyone) when the connection
/// fails. Ends when the backend is dropped.
async fn hub(
    client: redis::Client,
    shared: std::sync::Weak<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    loop {
        let Some(state) = shared.upgrade() else {
            return;
        };
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::warn!(%error, "event notifications: cannot connect; watchers poll");
                drop(state);
                // Refuse waiting subscriptions so their watchers fall back
                // to a bounded pause, not a silent wait.
                if !refuse_for(&mut commands, RECONNECT_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // Resubscribe what is watched, then wake everyone: what was
        // published while no connection listened is read now.
        let watched: Vec<String> = {
            let mut channels = state.lock();
            channels.retain(|_, c| c.watchers > 0);
            channels.values_mut().for_each(|c| c.subscribed = false);
            channels.keys().cloned().collect()
        };
        let mut healthy = true;
        for chunk in watched.chunks(512) {
            if !answered(sink.subscribe(chunk)).await {
                healthy = false;
                break;
            }
            let mut channels = state.lock();
            for name in chunk {
                if let Some(c) = channels.get_mut(name) {
                    c.subscribed = true;
                }
            }
        }
        state.wake_all();
        drop(state);
        let mut cleanup = tokio::time::interval(CLEANUP_EVERY);
        while healthy {
            tokio::select! {
                command = commands.recv() => {
                    let Some(Command::Subscribe(channel, reply)) = command else { return };
                    let Some(state) = shared.upgrade() else { return };
                    let wanted = state
                        .lock()
                        .get(&channel)
                        .map(|c| (c.subscribed, c.watchers > 0));
                    let ok = match wanted {
                        Some((true, _)) => true,
                        Some((false, true)) => {
                            if answered(sink.subscribe(&channel)).await {
                                if let Some(c) = state.lock().get_mut(&channel) {
                                    c.subscribed = true;
                                }
                                true
                            } else {
                                tracing::warn!("event notifications: subscribe failed; reconnecting");
                                healthy = false;
                                false
                            }
                        }
                        // Its watcher left already.
                        _ => false,
                    };
                    let _ = reply.send(ok);
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!("event notifications: connection lost; reconnecting");
                        break;
                    };
                    let Some(state) = shared.upgrade() else { return };
                    if let Some(c) = state.lock().get(message.get_channel_name()) {
                        c.notify.notify_waiters();
                    }
                }
                _ = cleanup.tick() => {
                    let Some(state) = shared.upgrade() else { return };
                    let idle: Vec<String> = {
                        let mut channels = state.lock();
                        let idle: Vec<String> = channels
                            .iter()
                            .filter(|(_, c)| c.idle_since.is_some_and(|t| t.elapsed() >= LINGER))
                            .map(|(name, _)| name.clone())
                            .collect();
                        for name in &idle {
                            channels.remove(name);
                        }
                        idle
                    };
                    // A watcher arriving now makes a new entry and its
                    // subscribe is handled after this unsubscribe.
                    for chunk in idle.chunks(512) {
                        if !answered(sink.unsubscribe(chunk)).await {
                            healthy = false;
                            break;
                        }
                    }
                }
            }
        }
        // Nothing is subscribed any more: watchers read again, and new ones
        // ask the next connection.
        if let Some(state) = shared.upgrade() {
            state.lock().values_mut().for_each(|c| c.subscribed = false);
            state.wake_all();
        }
        if !refuse_for(&mut commands, RECONNECT_PAUSE).await {
            return;
        }
    }
}

/// Whether a (un)subscription was confirmed in time.
async fn answered(request: impl std::future::Future<Output = redis::RedisResult<()>>) -> bool {
    amaos_mesh::metrics::redis_sent(1);
    matches!(
        tokio::time::timeout(amaos_mesh::redis_conn::RESPONSE_TIMEOUT, request).await,
        Ok(Ok(()))
    )
}

/// Answers every subscription request for `pause` with a refusal; false
/// when the backend is gone.
async fn refuse_for(commands: &mut mpsc::UnboundedReceiver<Command>, pause: Duration) -> bool {
    let until = tokio::time::Instant::now() + pause;
    loop {
        match tokio::time::timeout_at(until, commands.recv()).await {
            Ok(Some(Command::Subscribe(_, reply))) => {
                let _ = reply.send(false);
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> redis::Client {
        let url = std::env::var("AMAOS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        redis::Client::open(url).unwrap()
    }

    #[tokio::test]
    async fn a_published_message_wakes_its_watchers_and_an_unwatched_channel_is_let_go() {
        let notifier = Notifier::start(client());
        let channel = format!("amaos-test-notify-{}", amaos_mesh::new_id());
        let watch = notifier.watch(&channel).await;
        assert!(watch.live, "Redis did not confirm the subscription");
        let mut conn = client().get_multiplexed_async_connection().await.unwrap();
        {
            let woken = watch.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let receivers: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(1)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(receivers, 1);
            tokio::time::timeout(Duration::from_secs(10), woken)
                .await
                .expect("the message did not wake the watcher");
        }
        drop(watch);
        // Kept for a watch loop's next wait, then let go.
        assert_eq!(notifier.channels(), 1);
        let deadline = Instant::now() + LINGER + CLEANUP_EVERY * 10;
        while notifier.channels() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            notifier.channels(),
            0,
            "an unwatched channel stayed subscribed"
        );
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(2)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(receivers, 0, "Redis still delivers to the replica");
    }
}
