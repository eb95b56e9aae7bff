//! How a file's columns map to what Tarmo keeps: identifiers, typed traits,
//! and an order's fields. Written by a person as a small TOML or JSON file;
//! without one, the column names the README shows are used.
//!
//! ```toml
//! key = "crm_id"                       # the identifier that names a row's person
//! [identifiers]                        # identifier kind = column
//! email = "Sähköposti"
//! crm_id = "asiakasnro"                # a custom kind (identity.custom_kinds)
//! [traits]                             # trait = column, or {column, type}
//! city = "kaupunki"
//! birthday = { column = "syntymäpäivä", type = "date" }
//! points = { column = "pisteet", type = "number" }
//! [order]                              # orders only
//! id = "kuitti"
//! time = "aika"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The type a trait's values are checked and stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TraitType {
    #[default]
    Text,
    Number,
    /// `YYYY-MM-DD` or an RFC 3339 date-time.
    Date,
    /// true/false, yes/no, 1/0.
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TraitColumn {
    Column(String),
    Typed {
        column: String,
        #[serde(rename = "type", default)]
        ty: TraitType,
    },
}

impl TraitColumn {
    pub fn column(&self) -> &str {
        match self {
            Self::Column(c) | Self::Typed { column: c, .. } => c,
        }
    }

    pub fn ty(&self) -> TraitType {
        match self {
            Self::Column(_) => TraitType::Text,
            Self::Typed { ty, .. } => *ty,
        }
    }
}

/// An order's columns; each defaults to the name in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderColumns {
    /// [order_id]
    pub id: String,
    /// [ordered_at] RFC 3339 or YYYY-MM-DD.
    pub time: String,
    /// [store_id]
    pub store: String,
    /// [total] when absent, the sum of the lines' quantity × price.
    pub total: String,
    /// [currency] ISO 4217.
    pub currency: String,
    /// [items] in JSON Lines: a list of line objects with the three below.
    pub items: String,
    /// [product_id] one line per row, in CSV.
    pub product: String,
    /// [quantity]
    pub quantity: String,
    /// [price] unit price.
    pub price: String,
}

impl Default for OrderColumns {
    fn default() -> Self {
        Self {
            id: "order_id".into(),
            time: "ordered_at".into(),
            store: "store_id".into(),
            total: "total".into(),
            currency: "currency".into(),
            items: "items".into(),
            product: "product_id".into(),
            quantity: "quantity".into(),
            price: "price".into(),
        }
    }
}

/// A mapping file. Empty sections take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The identifier kind that names the row's person (the CRM's own id);
    /// by default the first present of user_id, custom kinds, email, phone.
    #[serde(default)]
    pub key: Option<String>,
    /// Identifier kind → column. Default: columns named as identifier kinds.
    #[serde(default)]
    pub identifiers: BTreeMap<String, String>,
    /// Trait name → column. Default (customers): every other column, as
    /// text, `birthday` as a date.
    #[serde(default)]
    pub traits: BTreeMap<String, TraitColumn>,
    #[serde(default)]
    pub order: OrderColumns,
    /// For products, stores and stock: field → column (see the README).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

impl Mapping {
    /// Read a mapping written as TOML, or as JSON when it starts with `{`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("mapping (JSON): {e}"))
        } else {
            toml::from_str(text).map_err(|e| format!("mapping (TOML): {e}"))
        }
    }

    /// The column for a product/store/stock field, by default its own name.
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        self.columns.get(field).map_or(field, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_read_the_same_mapping() {
        let t = Mapping::parse(
            r#"
key = "crm_id"
[identifiers]
email = "Sähköposti"
crm_id = "asiakasnro"
[traits]
city = "kaupunki"
birthday = { column = "syntynyt", type = "date" }
[order]
id = "kuitti"
"#,
        )
        .unwrap();
        let j = Mapping::parse(
            r#"{"key": "crm_id", "identifiers": {"email": "Sähköposti", "crm_id": "asiakasnro"},
                "traits": {"city": "kaupunki", "birthday": {"column": "syntynyt", "type": "date"}},
                "order": {"id": "kuitti"}}"#,
        )
        .unwrap();
        assert_eq!(t, j);
        assert_eq!(t.traits["birthday"].ty(), TraitType::Date);
        assert_eq!(t.traits["city"].ty(), TraitType::Text);
        assert_eq!(t.order.id, "kuitti");
        assert_eq!(t.order.time, "ordered_at");
    }

    #[test]
    fn unknown_keys_and_types_are_refused() {
        assert!(Mapping::parse("colour = 1").is_err());
        assert!(Mapping::parse("[traits]\nx = { column = \"x\", type = \"money\" }").is_err());
        assert!(Mapping::parse("[order]\nreceipt = \"r\"").is_err());
    }
}
