//! The seven graphs of a bundle, named once: [`GraphId`] and the per-graph table [`PerGraph`].
//!
//! Everything that holds or reports something per graph (the model's loaded graphs, their
//! precisions, the time spent in each, the manifest's entries) indexes a `PerGraph` by a
//! `GraphId` instead of repeating the graph names.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// A graph of a bundle (docs/bundle.md), in the order the manifest lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GraphId {
    /// Token ids → embeddings.
    TextEmbed,
    /// The transformer over text and image positions, with its KV cache.
    Backbone,
    /// Hidden states → next-token logits.
    LmHead,
    /// Latent patches (and their timestep) → backbone vectors (the U-Net down path).
    PatchIn,
    /// Backbone vectors → the diffusion prediction per patch (the U-Net up path).
    PatchOut,
    /// RGB image → latent (captioning, editing).
    VaeEncoder,
    /// Latent → RGB image.
    VaeDecoder,
}

/// The part of the model a graph belongs to: one precision choice per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPart {
    /// `text_embed` and `lm_head`.
    Text,
    /// `backbone`.
    Backbone,
    /// `patch_in` and `patch_out`.
    Patch,
    /// `vae_encoder` and `vae_decoder`.
    Vae,
}

impl GraphId {
    /// Every graph, in manifest order.
    pub const ALL: [GraphId; 7] = [
        GraphId::TextEmbed,
        GraphId::Backbone,
        GraphId::LmHead,
        GraphId::PatchIn,
        GraphId::PatchOut,
        GraphId::VaeEncoder,
        GraphId::VaeDecoder,
    ];

    /// The graph's name in `manifest.json` and its file names (`backbone`, `vae_decoder`, …).
    pub const fn name(self) -> &'static str {
        match self {
            GraphId::TextEmbed => "text_embed",
            GraphId::Backbone => "backbone",
            GraphId::LmHead => "lm_head",
            GraphId::PatchIn => "patch_in",
            GraphId::PatchOut => "patch_out",
            GraphId::VaeEncoder => "vae_encoder",
            GraphId::VaeDecoder => "vae_decoder",
        }
    }

    /// The part whose precision choice applies to this graph.
    pub const fn part(self) -> ModelPart {
        match self {
            GraphId::TextEmbed | GraphId::LmHead => ModelPart::Text,
            GraphId::Backbone => ModelPart::Backbone,
            GraphId::PatchIn | GraphId::PatchOut => ModelPart::Patch,
            GraphId::VaeEncoder | GraphId::VaeDecoder => ModelPart::Vae,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for GraphId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GraphId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        GraphId::ALL
            .into_iter()
            .find(|g| g.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = GraphId::ALL.iter().map(|g| g.name()).collect();
                format!("unknown graph `{s}` (expected one of {})", names.join(", "))
            })
    }
}

impl Serialize for GraphId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One value per graph, indexed by [`GraphId`]; serialises as a map from graph name to value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerGraph<T>([T; 7]);

impl<T> PerGraph<T> {
    /// The table with `f(id)` for every graph.
    pub fn from_fn(mut f: impl FnMut(GraphId) -> T) -> Self {
        PerGraph(GraphId::ALL.map(&mut f))
    }

    /// Like [`PerGraph::from_fn`] for a fallible `f`: the first error, in manifest order.
    pub fn try_from_fn<E>(mut f: impl FnMut(GraphId) -> Result<T, E>) -> Result<Self, E> {
        PerGraph(GraphId::ALL).try_map_into(|id, _| f(id))
    }

    /// The table of `f(id, value)`, taking the values: the first error, in manifest order.
    pub fn try_map_into<U, E>(
        self,
        mut f: impl FnMut(GraphId, T) -> Result<U, E>,
    ) -> Result<PerGraph<U>, E> {
        let mut values = Vec::with_capacity(7);
        for (id, value) in GraphId::ALL.into_iter().zip(self.0) {
            values.push(f(id, value)?);
        }
        match values.try_into() {
            Ok(array) => Ok(PerGraph(array)),
            // `values` has exactly one entry per graph.
            Err(_) => unreachable!("seven graphs"),
        }
    }

    /// `(id, value)` for every graph, in manifest order.
    pub fn iter(&self) -> impl Iterator<Item = (GraphId, &T)> {
        GraphId::ALL.into_iter().zip(self.0.iter())
    }

    /// The table of `f(value)`.
    pub fn map<U>(&self, mut f: impl FnMut(GraphId, &T) -> U) -> PerGraph<U> {
        PerGraph::from_fn(|id| f(id, &self[id]))
    }
}

impl<T> std::ops::Index<GraphId> for PerGraph<T> {
    type Output = T;
    fn index(&self, id: GraphId) -> &T {
        // A `GraphId` is always in 0..7, the array's length.
        #[allow(clippy::indexing_slicing)]
        &self.0[id.index()]
    }
}

impl<T> std::ops::IndexMut<GraphId> for PerGraph<T> {
    fn index_mut(&mut self, id: GraphId) -> &mut T {
        #[allow(clippy::indexing_slicing)]
        &mut self.0[id.index()]
    }
}

impl<T: Serialize> Serialize for PerGraph<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(7))?;
        for (id, value) in self.iter() {
            map.serialize_entry(id.name(), value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_manifest_order() {
        let names: Vec<&str> = GraphId::ALL.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            [
                "text_embed",
                "backbone",
                "lm_head",
                "patch_in",
                "patch_out",
                "vae_encoder",
                "vae_decoder"
            ]
        );
        for id in GraphId::ALL {
            assert_eq!(id.name().parse::<GraphId>(), Ok(id));
            assert_eq!(
                id.index(),
                GraphId::ALL.iter().position(|g| *g == id).unwrap()
            );
        }
        let err = "vae".parse::<GraphId>().unwrap_err();
        assert!(
            err.contains("unknown graph `vae`") && err.contains("vae_decoder"),
            "{err}"
        );
    }

    #[test]
    fn table_indexes_and_serialises_by_name() {
        let mut t = PerGraph::from_fn(|id| id.name().len());
        t[GraphId::LmHead] = 0;
        assert_eq!(t[GraphId::Backbone], 8);
        assert_eq!(t[GraphId::LmHead], 0);
        let json = serde_json::to_string(&t).unwrap();
        assert!(
            json.starts_with("{\"text_embed\":10,\"backbone\":8,\"lm_head\":0"),
            "{json}"
        );
        let failed: Result<PerGraph<u8>, GraphId> = PerGraph::try_from_fn(|id| {
            if id == GraphId::PatchIn {
                Err(id)
            } else {
                Ok(1)
            }
        });
        assert_eq!(failed, Err(GraphId::PatchIn));
    }
}
