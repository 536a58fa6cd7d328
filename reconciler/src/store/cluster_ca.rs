//! The cluster CA row (one per database): read it, and insert it only if absent so that
//! replicas starting at once all end up with the CA of the first insert.

use super::{Store, StoreError};

/// The CA as stored: certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterCaRow {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCaRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCaRow").finish_non_exhaustive() // never the key
    }
}

impl Store {
    /// The cluster CA, if a replica stored one.
    pub async fn cluster_ca(&self) -> Result<Option<ClusterCaRow>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT cert_pem, key_pem FROM cluster_ca WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(cert_pem, key_pem)| ClusterCaRow { cert_pem, key_pem }))
    }

    /// Stores `ca` unless a CA is stored already, and returns the stored one: `ca` when
    /// this call inserted it, the earlier one otherwise.
    pub async fn insert_cluster_ca_if_absent(
        &self,
        ca: &ClusterCaRow,
    ) -> Result<ClusterCaRow, StoreError> {
        sqlx::query(
            "INSERT INTO cluster_ca (id, cert_pem, key_pem, created_at_ms) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(&ca.key_pem)
        .bind(self.now_ms())
        .execute(&self.pool)
        .await?;
        self.cluster_ca().await?.ok_or_else(|| StoreError::Corrupt {
            table: "cluster_ca",
            id: "1".into(),
            detail: "no row right after the insert".into(),
        })
    }
}
