//! The shared store's leases and holds: who may refresh a credential now (`lease:NAME`,
//! a random token with a TTL, renewed while its refresh runs and released by
//! compare-and-delete), and when nobody may mark a refresh token as sent (`hold:NAME`,
//! set for a while after Redis lost writes). Which broker takes or waits for what is
//! decided in `broker::fleet`.

use std::time::{Duration, SystemTime};

use ::redis::AsyncCommands;

use super::redis::{RedisStore, Unanswered, millis};

/// Extends the lease only while it is still ours.
pub(super) const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Sets a hold until `ARGV[1]` (milliseconds since the epoch, expiring with it) unless
/// one until later is set.
pub(super) const HOLD: &str = r"
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
";

/// Compare-and-delete, then a notice so waiting brokers try the lease at once.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local version = redis.call('HGET', KEYS[2], 'version') or '0'
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. version)
return 1
";

impl RedisStore {
    /// Takes the lease if nobody holds it.
    pub async fn acquire(&self, name: &str, token: &str) -> Result<bool, Unanswered> {
        let mut conn = self.connection().await?;
        let options = ::redis::SetOptions::default()
            .conditional_set(::redis::ExistenceCheck::NX)
            .with_expiration(::redis::SetExpiry::PX(millis(self.lease_duration)));
        let set: Option<String> = self
            .limit(conn.set_options(self.lease_key(name), token, options))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(set.is_some())
    }

    /// Whether any broker holds the lease.
    pub async fn lease_held(&self, name: &str) -> Result<bool, Unanswered> {
        let mut conn = self.connection().await?;
        let holder: Option<String> = self
            .limit(conn.get(self.lease_key(name)))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(holder.is_some())
    }

    /// Extends the lease; `false` when it is no longer ours. Gives up after `within`
    /// (or the usual limit, if sooner).
    pub async fn renew(
        &self,
        name: &str,
        token: &str,
        within: Duration,
    ) -> Result<bool, Unanswered> {
        let renew = async {
            let mut conn = self.connection().await?;
            let mut call = self.renew_script.prepare_invoke();
            call.key(self.lease_key(name))
                .arg(token)
                .arg(millis(self.lease_duration));
            let renewed: i64 = call
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(renewed == 1)
        };
        let within = within.min(self.timeout * 2);
        tokio::time::timeout(within, renew)
            .await
            .map_err(|_| Unanswered::TimedOut(within))?
    }

    /// Gives the lease up if it is still ours, and tells the waiting brokers.
    pub async fn release(&self, name: &str, token: &str) -> Result<(), Unanswered> {
        let mut conn = self.connection().await?;
        let mut call = self.release_script.prepare_invoke();
        call.key(self.lease_key(name))
            .key(self.record_key(name))
            .arg(token)
            .arg(self.channel())
            .arg(name);
        let _: i64 = self
            .limit(call.invoke_async(&mut conn))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Holds the credential's refreshes back for `window` after Redis lost writes (no
    /// refresh token may be marked as sent meanwhile); a hold that lasts longer is kept.
    pub async fn hold(&self, name: &str, window: Duration) -> Result<(), Unanswered> {
        let mut conn = self.connection().await?;
        let until = SystemTime::now() + window;
        let mut call = self.hold_script.prepare_invoke();
        call.key(self.hold_key(name))
            .arg(super::record::millis(until))
            .arg(millis(window));
        let _: i64 = self
            .limit(call.invoke_async(&mut conn))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Until when the credential's refreshes are held back, if they are.
    pub async fn held_until(&self, name: &str) -> Result<Option<SystemTime>, Unanswered> {
        let mut conn = self.connection().await?;
        let until: Option<String> = self
            .limit(conn.get(self.hold_key(name)))
            .await?
            .map_err(|e| self.failed(e))?;
        // A value that is not a time still holds, for the key's remaining life; a
        // lease's worth is as good a guess as any.
        Ok(until.map(|ms| match ms.parse::<u64>() {
            Ok(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            Err(_) => SystemTime::now() + self.lease_duration,
        }))
    }
}
