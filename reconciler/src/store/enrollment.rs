//! Node enrollment records: one-time join tokens (stored as the SHA-256 of their secret,
//! consumed by one conditional UPDATE so two concurrent uses cannot both win) and the
//! client certificates issued to nodes (fingerprint, node, issued, revoked).

use uuid::Uuid;

use super::{Store, StoreError};

/// Why a join token could or could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinTokenUse {
    /// This call consumed it; the certificate is for `node`.
    Consumed {
        node: String,
    },
    Unknown,
    Used {
        node: String,
    },
    Expired {
        node: String,
        expires_at_ms: i64,
    },
}

/// A recorded node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertRecord {
    pub fingerprint: String,
    pub node: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl Store {
    /// Stores a new join token for `node`.
    pub async fn create_join_token(
        &self,
        node: &str,
        secret_sha256: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_sha256, node, created_at_ms, expires_at_ms, used) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(secret_sha256)
        .bind(node)
        .bind(self.now_ms())
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Consumes the token with this secret hash if it is unused and not expired at
    /// `now_ms`. The consuming UPDATE is conditional on `used = 0`, so of two concurrent
    /// calls at most one sees [`JoinTokenUse::Consumed`]; otherwise says why not.
    pub async fn consume_join_token(
        &self,
        secret_sha256: &str,
        now_ms: i64,
    ) -> Result<JoinTokenUse, StoreError> {
        let won: Option<(String,)> = sqlx::query_as(
            "UPDATE join_tokens SET used = 1, used_at_ms = $2 \
             WHERE secret_sha256 = $1 AND used = 0 AND expires_at_ms > $2 RETURNING node",
        )
        .bind(secret_sha256)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((node,)) = won {
            return Ok(JoinTokenUse::Consumed { node });
        }
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT node, used, expires_at_ms FROM join_tokens WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => JoinTokenUse::Unknown,
            Some((node, used, _)) if used != 0 => JoinTokenUse::Used { node },
            Some((node, _, expires_at_ms)) => JoinTokenUse::Expired {
                node,
                expires_at_ms,
            },
        })
    }

    /// Records a certificate issued to `node`.
    pub async fn record_node_cert(
        &self,
        fingerprint: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_certs (fingerprint, node, issued_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(fingerprint)
        .bind(node)
        .bind(self.now_ms())
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The certificate with this fingerprint, if this cluster issued it.
    pub async fn node_cert(&self, fingerprint: &str) -> Result<Option<NodeCertRecord>, StoreError> {
        let row: Option<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT fingerprint, node, issued_at_ms, expires_at_ms, revoked_at_ms \
             FROM node_certs WHERE fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(fingerprint, node, issued_at_ms, expires_at_ms, revoked_at_ms)| NodeCertRecord {
                fingerprint,
                node,
                issued_at_ms,
                expires_at_ms,
                revoked_at_ms,
            },
        ))
    }

    /// Revokes every certificate of `node` and burns its unused join tokens, in one
    /// transaction. Returns how many certificates were newly revoked.
    pub async fn revoke_node_credentials(&self, node: &str) -> Result<u64, StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let certs = sqlx::query(
            "UPDATE node_certs SET revoked_at_ms = $2 WHERE node = $1 AND revoked_at_ms IS NULL",
        )
        .bind(node)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE join_tokens SET used = 1, used_at_ms = $2 WHERE node = $1 AND used = 0",
        )
        .bind(node)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::default_database_url;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&default_database_url(dir.path()))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn consume_join_token_table() {
        let (_d, s) = store().await;
        let now = s.now_ms();
        s.create_join_token("node-1", "h-valid", now + 60_000)
            .await
            .unwrap();
        s.create_join_token("node-2", "h-expired", now - 1)
            .await
            .unwrap();
        let later = now + 10;
        assert_eq!(
            s.consume_join_token("h-valid", later).await.unwrap(),
            JoinTokenUse::Consumed {
                node: "node-1".into()
            }
        );
        assert_eq!(
            s.consume_join_token("h-valid", later).await.unwrap(),
            JoinTokenUse::Used {
                node: "node-1".into()
            }
        );
        assert_eq!(
            s.consume_join_token("h-expired", later).await.unwrap(),
            JoinTokenUse::Expired {
                node: "node-2".into(),
                expires_at_ms: now - 1
            }
        );
        assert_eq!(
            s.consume_join_token("nope", later).await.unwrap(),
            JoinTokenUse::Unknown
        );
    }

    #[tokio::test]
    async fn consume_join_token_concurrent_uses_only_one_wins() {
        let (_d, s) = store().await;
        let now = s.now_ms();
        s.create_join_token("node-1", "h", now + 60_000)
            .await
            .unwrap();
        let calls = (0..8).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.consume_join_token("h", now).await.unwrap() })
        });
        let mut wins = 0;
        for c in calls {
            if matches!(c.await.unwrap(), JoinTokenUse::Consumed { .. }) {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn revoke_node_credentials_revokes_certs_and_burns_tokens() {
        let (_d, s) = store().await;
        let now = s.now_ms();
        s.record_node_cert("fp1", "node-1", now + 1000)
            .await
            .unwrap();
        s.record_node_cert("fp2", "node-1", now + 1000)
            .await
            .unwrap();
        s.record_node_cert("fp3", "node-2", now + 1000)
            .await
            .unwrap();
        s.create_join_token("node-1", "h", now + 60_000)
            .await
            .unwrap();
        assert_eq!(s.revoke_node_credentials("node-1").await.unwrap(), 2);
        assert!(s
            .node_cert("fp1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_some());
        assert!(s
            .node_cert("fp3")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_none());
        assert!(s.node_cert("fp9").await.unwrap().is_none());
        assert!(matches!(
            s.consume_join_token("h", now).await.unwrap(),
            JoinTokenUse::Used { .. }
        ));
        assert_eq!(s.revoke_node_credentials("node-1").await.unwrap(), 0);
    }
}
