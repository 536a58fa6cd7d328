//! Cluster reads: nodes (with what is committed to them) and pools (with their instances).

use otherix_api::manifest::AllocationRatio;
use otherix_api::{ApiError, ListResponse, Node, Pool};

use super::ServiceError;
use crate::store::Store;

pub struct ClusterService {
    store: Store,
}

impl ClusterService {
    pub fn new(store: Store) -> Self {
        ClusterService { store }
    }

    /// The cluster's (cpu, memory) allocation ratios, for the nodes' schedulable figures.
    async fn ratios(&self) -> Result<(AllocationRatio, AllocationRatio), ServiceError> {
        let r = self.store.cluster_settings().await?.ratios();
        Ok((r.cpu, r.memory))
    }

    pub async fn nodes(&self) -> Result<ListResponse<Node>, ServiceError> {
        let nodes = self.store.list_nodes().await?;
        let ratios = self.ratios().await?;
        Ok(ListResponse {
            items: nodes.iter().map(|n| n.to_api(ratios)).collect(),
            next_cursor: None,
        })
    }

    /// A node by name or uuid.
    pub async fn node(&self, name: &str) -> Result<Node, ServiceError> {
        let nodes = self.store.list_nodes().await?;
        let ratios = self.ratios().await?;
        nodes
            .iter()
            .find(|n| n.name == name || n.id.to_string() == name)
            .map(|n| n.to_api(ratios))
            .ok_or_else(|| ApiError::not_found(format!("node {name} not found")).into())
    }

    pub async fn pools(&self) -> Result<ListResponse<Pool>, ServiceError> {
        Ok(ListResponse {
            items: self.store.list_pools().await?,
            next_cursor: None,
        })
    }

    /// A pool by name or uuid.
    pub async fn pool(&self, name: &str) -> Result<Pool, ServiceError> {
        self.store
            .list_pools()
            .await?
            .into_iter()
            .find(|p| p.name == name || p.id.to_string() == name)
            .ok_or_else(|| ApiError::not_found(format!("pool {name} not found")).into())
    }
}
