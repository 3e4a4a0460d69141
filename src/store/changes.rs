//! Change notices: after every write (and every release of a lease) the writer
//! publishes `NAME VERSION` on the `changes` channel under the key prefix; each broker
//! subscribes on a connection of its own. What a notice means for a credential is
//! decided in `broker::notices`.

use futures_util::{Stream, StreamExt};

use ::redis::AsyncCommands;

use super::redis::{RedisStore, Unanswered};

/// A change notice: the credential's record (or lease) changed; `version` is the
/// record's version after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The credential.
    pub name: String,
    /// Its record's version after the change.
    pub version: u64,
}

impl RedisStore {
    /// Subscribes to change notices on a connection of its own. The stream ends when
    /// that connection drops; the caller subscribes again. A probe published right
    /// after subscribing must come back: Redis refuses a channel the ACL forbids, and
    /// without the probe that refusal would go unnoticed.
    pub async fn subscribe(&self) -> Result<impl Stream<Item = Notice> + use<>, Unanswered> {
        let mut conn = self.connection().await?;
        let mut pubsub = self
            .limit(self.client.get_async_pubsub())
            .await?
            .map_err(|e| self.failed(e))?;
        self.limit(pubsub.subscribe(self.channel()))
            .await?
            .map_err(|e| self.failed(e))?;
        let mut messages = pubsub.into_on_message();
        let probe = format!("~probe {}", crate::secret::hex(&rand::random::<[u8; 8]>()));
        let _: i64 = self
            .limit(conn.publish(self.channel(), &probe))
            .await?
            .map_err(|e| self.failed(e))?;
        let heard = async {
            while let Some(message) = messages.next().await {
                if message.get_payload::<String>().is_ok_and(|p| p == probe) {
                    return true;
                }
            }
            false
        };
        if !self.limit(heard).await.unwrap_or(false) {
            return Err(Unanswered::NoNotices(self.channel()));
        }
        Ok(messages.filter_map(|message| async move {
            let text: String = message.get_payload().ok()?;
            let (name, version) = text.split_once(' ')?;
            Some(Notice {
                name: name.to_owned(),
                version: version.parse().ok()?,
            })
        }))
    }
}
