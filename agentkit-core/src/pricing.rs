//! Prices per model, for cost accounting and cost budgets.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::message::Usage;
use crate::{Error, Result};

/// What a model charges, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per million uncached input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
    /// Per million cached input tokens (defaults to the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl Price {
    /// A price with no cache discount.
    pub const fn per_million(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cached_input: None,
        }
    }

    /// Sets the cached-input price.
    #[must_use]
    pub const fn with_cached_input(mut self, cached: f64) -> Self {
        self.cached_input = Some(cached);
        self
    }

    /// The cost of `usage` in US dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        let cached_price = self.cached_input.unwrap_or(self.input);
        (uncached as f64 * self.input
            + cached as f64 * cached_price
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// Prices by model id, with longest-prefix lookup so dated ids (`gpt-4o-mini-2024-07-18`) find
/// their family's price.
///
/// ```
/// use agentkit_core::{Price, PriceTable, Usage};
///
/// let table = PriceTable::with_defaults().with("my-model", Price::per_million(1.0, 2.0));
/// let usage = Usage { input_tokens: 1_000_000, output_tokens: 500_000, cached_input_tokens: 0 };
/// assert_eq!(table.cost("my-model", &usage), 2.0);
/// assert!(table.get("gpt-4o-mini-2024-07-18").is_some());
/// assert_eq!(table.cost("unknown", &usage), 0.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

/// List prices (USD per million tokens) of common models as published in 2025. They change:
/// override them from your contract with [`PriceTable::with`] or [`PriceTable::load`].
const DEFAULTS: &[(&str, f64, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("gpt-4.1", 2.00, 8.00, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("gpt-5", 1.25, 10.00, 0.125),
    ("gpt-5-mini", 0.25, 2.00, 0.025),
    ("gpt-5-nano", 0.05, 0.40, 0.005),
    ("o3", 2.00, 8.00, 0.50),
    ("o4-mini", 1.10, 4.40, 0.275),
    ("claude-opus-4", 15.00, 75.00, 1.50),
    ("claude-sonnet-4", 3.00, 15.00, 0.30),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10),
];

impl PriceTable {
    /// An empty table: every model costs nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table with the built-in list prices of common models.
    pub fn with_defaults() -> Self {
        let prices = DEFAULTS
            .iter()
            .map(|&(model, input, output, cached)| {
                (
                    model.to_owned(),
                    Price::per_million(input, output).with_cached_input(cached),
                )
            })
            .collect();
        Self { prices }
    }

    /// Sets the price of `model` (and of ids that start with it).
    #[must_use]
    pub fn with(mut self, model: impl Into<String>, price: Price) -> Self {
        self.set(model, price);
        self
    }

    /// Sets the price of `model` in place.
    pub fn set(&mut self, model: impl Into<String>, price: Price) {
        self.prices.insert(model.into(), price);
    }

    /// Adds the prices of a JSON object `{"model": {"input": .., "output": .., "cached_input": ..}}`,
    /// replacing those of the same models.
    pub fn merge_json(&mut self, json: &str) -> Result<()> {
        let prices: HashMap<String, Price> = serde_json::from_str(json)
            .map_err(|e| Error::invalid_input(format!("invalid price table: {e}")))?;
        self.prices.extend(prices);
        Ok(())
    }

    /// The built-in defaults overridden by the JSON file at `path` (see [`merge_json`](Self::merge_json)).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_input(format!("cannot read price table {}: {e}", path.display()))
        })?;
        let mut table = Self::with_defaults();
        table.merge_json(&text)?;
        Ok(table)
    }

    /// The price of `model`: an exact entry, else the longest entry that prefixes it.
    pub fn get(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        self.prices
            .iter()
            .filter(|(key, _)| model.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, price)| *price)
    }

    /// The cost of `usage` on `model`; zero for a model without a price.
    pub fn cost(&self, model: &str, usage: &Usage) -> f64 {
        self.get(model).map_or(0.0, |p| p.cost(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_are_priced_apart() {
        let price = Price::per_million(2.0, 8.0).with_cached_input(0.5);
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cached_input_tokens: 500_000,
        };
        assert!((price.cost(&usage) - (1.0 + 0.25 + 8.0)).abs() < 1e-9);
    }

    #[test]
    fn longest_prefix_wins_and_json_overrides() {
        let mut table = PriceTable::with_defaults();
        assert_eq!(table.get("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(table.get("gpt-4o-2024-08-06").unwrap().input, 2.50);
        table
            .merge_json(r#"{"gpt-4o-mini": {"input": 1.0, "output": 2.0}}"#)
            .unwrap();
        assert_eq!(table.get("gpt-4o-mini").unwrap().input, 1.0);
        assert!(table.merge_json("{").is_err());
    }
}
